"""End to end in the real UI: `airflow standalone` on a free port with the project's DAGs and plugin, on a
seeded demo application database; driven through its REST API, then in headless Chromium (Debian's
chromium and chromedriver, through Selenium), which takes the README's screenshots.

Screenshots go to $LIFECYCLE_SCREENSHOTS_DIR when set (scripts/screenshots: docs/screenshots), else to
the test's temporary folder.
"""

from __future__ import annotations

import os
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

from airflow_harness import dag_bag
from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
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
DAG_ID = "retention_newsletters"
RULE_ID = "newsletter"
RUN_TIMEOUT = 240
SUBJECT_DAG_ID = "subject_request"
ERASURE_LABEL = "erasure: archive the smicer bundle as evidence, erase the rest"
# Above the newsletter rule's volume ceiling (more than 50 and more than 20 % of the table): the
# demo seeds 100 subscriptions, a few of them due.
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
def app_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A demo application database seeded as of now: a manual run's as-of is its trigger time."""
    data = tmp_path_factory.mktemp("e2e-data")
    url = f"sqlite:///{data / 'smice_app.db'}"
    engine = make_engine(url)
    create_app_schema(engine)
    seed_demo(engine, datetime.now(UTC), documents_dir=data / "documents")
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def standalone(browser_binaries, app_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    home = tmp_path_factory.mktemp("airflow-standalone")
    env = {
        "LIFECYCLE_DATA_DIR": str(home / "data"),
        "AIRFLOW_CONN_SMICE_APP": app_database,
        # The newsletter rule archives nothing: a neutral location, shown in the README's screenshot.
        "AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI": "file:///srv/smice/evidence-archive",
    }
    with running_standalone(home, env) as server:
        yield server


@pytest.fixture(scope="module")
def client(standalone: Standalone) -> Iterator[httpx.Client]:
    with standalone.client() as api:
        yield api


@pytest.fixture(scope="module")
def dry_run(client: httpx.Client) -> str:
    """A dry run of the newsletters DAG, finished: its run id."""
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
    assert httpx.get(standalone.url + report_path(dry_run)).status_code == 401


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

    browser.get(f"{standalone.url}/dags/{DAG_ID}/runs/{quote(dry_run, safe='')}")
    wait.until(expected_conditions.element_to_be_clickable((By.LINK_TEXT, "Run report"))).click()
    frame = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "iframe[title='Run report']")))
    browser.switch_to.frame(frame)
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"), DAG_ID))
    assert "dry run" in browser.find_element(By.TAG_NAME, "body").text.lower()
    browser.switch_to.default_content()
    browser.save_screenshot(str(screenshots / "run-report.png"))


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
