"""End to end in the real UI, as a user following the README: `scripts/demo` run twice, then `airflow
standalone` (on a free port) with the project's DAGs and plugin on the second demo's application database;
driven through its REST API, then in headless Chromium (Debian's chromium and chromedriver, through
Selenium), which takes the README's screenshots.

Screenshots go to $LIFECYCLE_SCREENSHOTS_DIR when set (scripts/screenshots: docs/screenshots), else to
the test's temporary folder.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import DateTime, column, func, insert, select, table

from airflow_harness import PROJECT, airflow_home_env, dag_bag
from lifecycle.policy import load_policy
from lifecycle.store import make_engine
from tests.e2e.standalone import Standalone, running_standalone, task_states, trigger, wait_for, wait_for_run_end

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)
TABLE_VIEW_BUTTON = (By.CSS_SELECTOR, "button[aria-label='Show table view']")
PLUGINS_MENU = (By.XPATH, "//button[normalize-space()='Plugins']")
DAG_ID = "retention_newsletters"
DEMO_DAG_ID = "retention_account_services"
HOLDS_DAG_ID = "legal_holds"
RULE_ID = "newsletter"
RUN_TIMEOUT = 240
DEMO_TIMEOUT = 600
TODAY = datetime.now(UTC).date()
# A week ago's demo, then one over the last month: as of 31 days ago, and again today. The first demo's
# runs stay in Airflow (other logical dates), its database does not: the second demo starts afresh.
FIRST_DEMO = ("--as-of", f"{TODAY - timedelta(days=7)}")
SECOND_DEMO = ("--as-of", f"{TODAY - timedelta(days=31)}", "--follow-up-days", "31")
DEMO_AS_OFS = [f"{TODAY - timedelta(days=days)}" for days in (31, 7, 0)]
SUBJECT_DAG_ID = "subject_request"
ERASURE_LABEL = "erasure: archive the smicer bundle as evidence, erase the rest"
# Withdrawn since the demo's last run, which erased those due of its 100 subscriptions: work for the dry run.
NEWLY_WITHDRAWN = 12
# With those, above the newsletter rule's volume ceiling (more than 50 and more than 20 % of the table).
EXTRA_WITHDRAWN = 60
# Airflow 3.3.2 fails the approval task (a "state changed externally" retry) when the answer lands before
# the scheduler has handled the exit of the worker that parked it: by then the resumed try is queued again.
# An operator answers minutes later; the test waits for the scheduler to log that exit.
PARKED_WORKER_EXITED = (
    "Received executor event with state success for task instance "
    "TaskInstanceKey(dag_id={dag_id!r}, task_id={task_id!r}, run_id={run_id!r}"
)
SUBSCRIPTIONS = table(
    "newsletter_subscriptions",
    column("id"),
    column("email"),
    column("audience"),
    column("consented_at", DateTime()),
    column("withdrawn_at", DateTime()),
)


@pytest.fixture(scope="module")
def browser_binaries() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        message = f"needs Debian's chromium and chromium-driver (apt-get install): {' and '.join(missing)} not found"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def demo_home(browser_binaries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home (metadata DB, data folder) where `scripts/demo` ran twice."""
    home = tmp_path_factory.mktemp("airflow-standalone")
    run_demo(home, *FIRST_DEMO)
    run_demo(home, *SECOND_DEMO)
    return home


@pytest.fixture(scope="module")
def app_database(demo_home: Path) -> str:
    """The second demo's application database, its DAGs run as of today: a manual run acts as of its trigger time."""
    return f"sqlite:///{demo_home / 'data' / 'smice_demo.db'}"


@pytest.fixture(scope="module")
def standalone(browser_binaries, demo_home: Path, app_database: str) -> Iterator[Standalone]:
    env = {
        "LIFECYCLE_DATA_DIR": str(demo_home / "data"),
        "AIRFLOW_CONN_SMICE_APP": app_database,
        # The newsletter rule archives nothing: a neutral location, shown in the README's screenshot.
        "AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI": "file:///srv/smice/evidence-archive",
    }
    with running_standalone(demo_home, env) as server:
        yield server


@pytest.fixture(scope="module")
def client(standalone: Standalone) -> Iterator[httpx.Client]:
    with standalone.client() as api:
        yield api


@pytest.fixture(scope="module")
def dry_run(client: httpx.Client, app_database: str) -> str:
    """A dry run of the newsletters DAG, finished: its run id."""
    add_withdrawn_subscriptions(app_database, NEWLY_WITHDRAWN)
    run_id = trigger(client, DAG_ID, {"dry_run": True})
    wait_for_run_end(client, DAG_ID, run_id, timeout=RUN_TIMEOUT)
    return run_id


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1600, 950)
    yield driver
    driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LIFECYCLE_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_every_dag_is_listed_without_import_errors(client: httpx.Client):
    project_dags = set(dag_bag().dag_ids)

    def listed() -> set[str]:
        return {dag["dag_id"] for dag in client.get("/api/v2/dags", params={"limit": 100}).json()["dags"]}

    wait_for(lambda: project_dags <= listed(), timeout=60, what="every DAG listed")
    assert client.get("/api/v2/importErrors").json()["import_errors"] == []


def test_dry_run_succeeds_and_its_report_is_served(client: httpx.Client, standalone: Standalone, dry_run: str):
    run = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{dry_run}").json()
    assert run["state"] == "success", task_states(client, DAG_ID, dry_run)

    report = client.get(report_path(dry_run))
    assert report.status_code == 200, report.text
    assert report.headers["content-type"].startswith("text/html")
    assert DAG_ID in report.text and "dry run" in report.text.lower()
    assert f'<td class="num">{NEWLY_WITHDRAWN}</td>' in report.text


def test_the_lifecycle_pages_are_html_for_signed_in_users_only(client: httpx.Client, standalone: Standalone):
    pages = ("/lifecycle/trends", "/lifecycle/policy", f"/lifecycle/reports/{DAG_ID}/a-run")
    for path in pages:
        anonymous = httpx.get(standalone.url + path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["content-type"].startswith("text/html") and "<h1>Unauthorized</h1>" in anonymous.text

    assert "<h1>Retention over time</h1>" in html_page(client, "/lifecycle/trends", 200)
    assert "account-closed" in html_page(client, "/lifecycle/policy", 200)
    unknown = html_page(client, f"/lifecycle/reports/{DAG_ID}/a-run", 404)
    assert f"Airflow has no run <code>a-run</code> of DAG <code>{DAG_ID}</code>" in unknown


def test_the_demo_runs_last_seconds_in_airflow_and_each_keeps_its_report(client: httpx.Client):
    """Two demos: the three runs of each DAG (a week ago's, and the month's two passes) are in Airflow,
    dated as run (not from their as-of's midnight on), each with its own report."""
    runs = demo_runs(client)

    assert [run["logical_date"][:10] for run in runs] == DEMO_AS_OFS
    for run in runs:
        duration = datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])
        assert timedelta(0) < duration < timedelta(minutes=5), run
        report = html_page(client, f"/lifecycle/reports/{DEMO_DAG_ID}/{quote(run['dag_run_id'], safe='')}", 200)
        assert f"<dt>as-of</dt><dd>{run['logical_date'][:10]}" in report


def test_a_rejected_approval_keeps_the_rows(
    standalone: Standalone, client: httpx.Client, app_database: str, dry_run: str
):
    # After the dry run (its fixture), which must see the demo's volume only.
    keys = add_withdrawn_subscriptions(app_database, EXTRA_WITHDRAWN)
    run_id = trigger(client, DAG_ID, {})
    approve = f"{RULE_ID}.approve"
    wait_for(
        lambda: task_states(client, DAG_ID, run_id).get(approve) == "awaiting_input",
        timeout=RUN_TIMEOUT,
        what=f"{approve} awaiting input",
    )
    waiting = client.get(report_path(run_id))
    assert waiting.status_code == 404 and waiting.headers["refresh"], waiting.text
    assert "Its report task <code>report</code> has not run yet" in waiting.text
    assert "<dt>run state</dt><dd><code>running</code></dd>" in waiting.text
    parked = PARKED_WORKER_EXITED.format(dag_id=DAG_ID, task_id=approve, run_id=run_id)
    wait_for(lambda: parked in standalone.log.read_text(errors="replace"), timeout=60, what="the parked worker's exit")
    answer = client.patch(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{approve}/-1/hitlDetails",
        json={"chosen_options": ["Reject"]},
    )
    assert answer.status_code == 200, answer.text
    wait_for_run_end(client, DAG_ID, run_id, timeout=RUN_TIMEOUT)

    assert task_states(client, DAG_ID, run_id)[f"{RULE_ID}.erase"] == "skipped"
    assert count_subscriptions(app_database, keys) == len(keys)


def test_ui_shows_the_dags_and_the_run_report(standalone: Standalone, dry_run: str, browser, screenshots: Path):
    wait = WebDriverWait(browser, 60)
    log_in(browser, wait, standalone)

    browser.get(f"{standalone.url}/dags")
    wait.until(expected_conditions.element_to_be_clickable(TABLE_VIEW_BUTTON)).click()
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f"table a[href$='/dags/{DAG_ID}']")))
    browser.save_screenshot(str(screenshots / "dag-list.png"))

    report = run_report_tab(browser, wait, standalone, DAG_ID, dry_run, showing=DAG_ID)
    assert "dry run" in report.lower()
    browser.save_screenshot(str(screenshots / "run-report.png"))


def test_the_run_report_tab_is_a_page_on_every_run(standalone: Standalone, client: httpx.Client, browser):
    """The oldest demo run's report, kept through the second demo, and a legal_holds run's page saying
    that its DAG writes none."""
    holds_run = trigger(client, HOLDS_DAG_ID, {"action": "list"})
    assert wait_for_run_end(client, HOLDS_DAG_ID, holds_run, timeout=RUN_TIMEOUT) == "success"
    oldest = demo_runs(client)[0]["dag_run_id"]
    wait = WebDriverWait(browser, 60)
    log_in(browser, wait, standalone)

    report = run_report_tab(browser, wait, standalone, DEMO_DAG_ID, oldest, showing="account-closed")
    assert f"Retention run {DEMO_DAG_ID}" in report and '{"detail"' not in report
    no_report = run_report_tab(browser, wait, standalone, HOLDS_DAG_ID, holds_run, showing="No run report")
    assert f"{HOLDS_DAG_ID} writes no run report" in no_report and "run state\nsuccess" in no_report


def test_the_trends_and_the_policy_are_in_the_menu(standalone: Standalone, browser, screenshots: Path):
    """Retention trends: the runs recorded in the second demo's database (its two passes, then the tests'),
    charted for every retention DAG; the policy's documentation."""
    wait = WebDriverWait(browser, 60)
    log_in(browser, wait, standalone)

    trends = plugin_page_from_menu(browser, wait, "Retention trends", showing="Retention over time")
    for purpose in load_policy().purposes:
        assert browser.find_element(By.CSS_SELECTOR, f"svg.chart[data-dag='{purpose.dag_id}']").is_displayed()
    assert f"{DEMO_DAG_ID}\n2 run(s), as-of {DEMO_AS_OFS[0]} to {DEMO_AS_OFS[-1]}" in trends
    browser.switch_to.default_content()
    browser.save_screenshot(str(screenshots / "trends.png"))

    policy = plugin_page_from_menu(browser, wait, "Retention policy", showing="account-closed")
    assert all(purpose.dag_id in policy for purpose in load_policy().purposes)
    browser.switch_to.default_content()


def test_a_prepared_demo_seeds_runs_nothing_and_keeps_the_reports(tmp_path: Path):
    earlier_report = tmp_path / "data" / "reports" / DAG_ID / "manual__earlier" / "report.html"
    earlier_report.parent.mkdir(parents=True)
    earlier_report.write_text("an earlier run's report")

    printed = run_demo(tmp_path, "--prepare-only", "--size", "20")

    assert all(dag_id in printed for dag_id in dag_bag().dag_ids)
    assert earlier_report.read_text() == "an earlier run's report"
    assert count_rows(f"sqlite:///{tmp_path / 'data' / 'smice_demo.db'}", "smicers") == 20
    assert count_rows(f"sqlite:///{tmp_path / 'airflow.db'}", "dag_run") == 0


def run_demo(home: Path, *arguments: str) -> str:
    """`scripts/demo` for the Airflow home `home`, its data in home/data: what it printed (also in home/demo.log)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "LIFECYCLE_"))}
    environment |= {
        **airflow_home_env(home),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "LIFECYCLE_DATA_DIR": str(home / "data"),
        "NO_COLOR": "1",
    }
    demo = subprocess.run(
        [str(PROJECT / "scripts" / "demo"), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    with (home / "demo.log").open("a") as log:
        log.write(demo.stdout + demo.stderr)
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-4000:]
    return demo.stdout


def count_rows(url: str, table_name: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(table(table_name))).scalar()
    engine.dispose()
    return count


def demo_runs(client: httpx.Client) -> list[dict]:
    """The demos' runs of DEMO_DAG_ID, by logical date."""
    runs = client.get(f"/api/v2/dags/{DEMO_DAG_ID}/dagRuns").json()["dag_runs"]
    return sorted(runs, key=lambda run: run["logical_date"])


def html_page(client: httpx.Client, path: str, status: int) -> str:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def run_report_tab(
    browser: webdriver.Chrome, wait: WebDriverWait, standalone: Standalone, dag_id: str, run_id: str, *, showing: str
) -> str:
    """The text of the run's Run report tab, once it shows `showing`."""
    browser.get(f"{standalone.url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")
    wait.until(expected_conditions.element_to_be_clickable((By.LINK_TEXT, "Run report"))).click()
    frame = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Run report']")))
    browser.switch_to.frame(frame)
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"), showing))
    text = browser.find_element(By.TAG_NAME, "body").text
    browser.switch_to.default_content()
    return text


def plugin_page_from_menu(browser: webdriver.Chrome, wait: WebDriverWait, name: str, *, showing: str) -> str:
    """Opens the page `name` from the Plugins menu and stays in its frame: its text, once it shows `showing`."""
    wait.until(expected_conditions.element_to_be_clickable(PLUGINS_MENU)).click()
    item = (By.XPATH, f"//*[@role='menuitem'][normalize-space()='{name}']")
    wait.until(expected_conditions.element_to_be_clickable(item)).click()
    frame = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f"iframe[title='{name}']")))
    browser.switch_to.frame(frame)
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"), showing))
    return browser.find_element(By.TAG_NAME, "body").text


def log_in(browser: webdriver.Chrome, wait: WebDriverWait, standalone: Standalone) -> None:
    """Through the UI's login form, as admin."""
    browser.get(f"{standalone.url}/")
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(standalone.admin_password())
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda driver: "/auth/login" not in driver.current_url)


def report_path(run_id: str) -> str:
    return f"/lifecycle/reports/{DAG_ID}/{quote(run_id, safe='')}"


def add_withdrawn_subscriptions(url: str, count: int) -> list[int]:
    """`count` subscriptions withdrawn 40 days ago, due for erasure: their keys."""
    withdrawn = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=40)
    engine = make_engine(url)
    with engine.begin() as connection:
        first = connection.execute(select(func.max(SUBSCRIPTIONS.c.id))).scalar() + 1
        keys = list(range(first, first + count))
        rows = [
            {
                "id": key,
                "email": f"withdrawn-{key}@example.org",
                "audience": "prospect",
                "consented_at": withdrawn - timedelta(days=400),
                "withdrawn_at": withdrawn,
            }
            for key in keys
        ]
        connection.execute(insert(SUBSCRIPTIONS), rows)
    engine.dispose()
    return keys


def count_subscriptions(url: str, keys: list[int]) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        count = connection.execute(
            select(func.count()).select_from(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id.in_(keys))
        ).scalar()
    engine.dispose()
    return count


def test_a_subject_request_from_the_trigger_form_is_a_dry_run_erasure_by_default(
    standalone: Standalone, client: httpx.Client, app_database: str, browser, screenshots: Path
):
    """The operator types a smicer's address (in other case, with a space) and picks the kind from the
    list; an erasure left at the form's defaults only reports what it would do."""
    address = a_smicer_address(app_database)
    client.patch(f"/api/v2/dags/{SUBJECT_DAG_ID}", json={"is_paused": False}).raise_for_status()
    wait = WebDriverWait(browser, 60)
    log_in(browser, wait, standalone)
    browser.get(f"{standalone.url}/dags/{SUBJECT_DAG_ID}")
    wait.until(expected_conditions.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Trigger']"))).click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "element_email"))).send_keys(
        f" {address.upper()}"
    )
    browser.find_element(By.ID, "element_kind").click()
    wait.until(expected_conditions.element_to_be_clickable((By.XPATH, f'//*[text()="{ERASURE_LABEL}"]'))).click()
    browser.save_screenshot(str(screenshots / "subject-request-form.png"))
    browser.find_elements(By.XPATH, "//button[normalize-space()='Trigger']")[-1].click()

    runs = lambda: client.get(f"/api/v2/dags/{SUBJECT_DAG_ID}/dagRuns").json()["dag_runs"]  # noqa: E731
    wait_for(lambda: runs(), timeout=60, what="the subject request's run")
    run_id = runs()[0]["dag_run_id"]
    assert wait_for_run_end(client, SUBJECT_DAG_ID, run_id, timeout=RUN_TIMEOUT) == "success"
    report = client.get(f"/lifecycle/reports/{SUBJECT_DAG_ID}/{quote(run_id, safe='')}").text
    assert "Dry run" in report and "Deletion certificate" in report
    assert address.split("@")[0] not in report.lower()


def a_smicer_address(url: str) -> str:
    engine = make_engine(url)
    smicers = table("smicers", column("email"), column("closed_at"))
    query = select(smicers.c.email).where(smicers.c.closed_at.is_(None), smicers.c.email.like("%@%.%"))
    with engine.connect() as connection:
        address = connection.execute(query.limit(1)).scalar_one()
    engine.dispose()
    return address.strip().lower()
