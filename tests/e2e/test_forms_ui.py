"""End to end in the real UI: the legal holds' trigger form, in `airflow standalone` and headless Chromium
(the fixtures of test_airflow_ui.py). A hold placed by table and key, the holds listed, the hold lifted,
each through the form's Trigger button with the fields its action does not need left empty; a refused
request fails its run, the first lines of its task's log saying why. Takes the README's picture of the
form, legal-holds-form.png ($LIFECYCLE_SCREENSHOTS_DIR, else the test's temporary folder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import column, func, select, table

from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
from lifecycle.holds import list_holds
from lifecycle.store import make_engine
from tests.e2e import test_airflow_ui as ui
from tests.e2e.standalone import Standalone, running_standalone, wait_for_run_end
from tests.e2e.test_airflow_ui import RUN_TIMEOUT, log_in

# Fixtures of test_airflow_ui.py, by name.
browser, browser_binaries, client, screenshots = ui.browser, ui.browser_binaries, ui.client, ui.screenshots

pytestmark = pytest.mark.e2e

DAG_ID = "legal_holds"
TABLE = "prospects"
TRIGGER_BUTTON = "//button[normalize-space()='Trigger']"
# The first lines of a task's log: Airflow's own few (its log's sources), then the task's.
FIRST_LINES = 12
# Tall enough for the whole form in the picture.
PICTURE_SIZE = (1600, 1400)


@pytest.fixture(scope="module")
def app_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A demo application database, seeded as of now."""
    data = tmp_path_factory.mktemp("forms-data")
    url = f"sqlite:///{data / 'smice_app.db'}"
    engine = make_engine(url)
    create_app_schema(engine)
    seed_demo(engine, datetime.now(UTC), documents_dir=data / "documents")
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def standalone(browser_binaries, app_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    home = tmp_path_factory.mktemp("forms-standalone")
    env = {"LIFECYCLE_DATA_DIR": str(home / "data"), "AIRFLOW_CONN_SMICE_APP": app_database}
    with running_standalone(home, env) as server:
        yield server


def test_a_hold_by_table_and_key_is_placed_listed_and_lifted_through_the_form(
    standalone: Standalone, client: httpx.Client, app_database: str, browser, screenshots: Path
):
    key = a_record_key(app_database, TABLE)
    wait = WebDriverWait(browser, 60)
    log_in(browser, wait, standalone)

    def place() -> None:
        choose(browser, wait, "action", "Place a hold")
        type_into(browser, "reason", "audit 2026-9")
        open_section(browser, wait, "Place a hold")
        choose(browser, wait, "table", TABLE)
        type_into(browser, "key", str(key))
        browser.set_window_size(*PICTURE_SIZE)
        browser.save_screenshot(str(screenshots / "legal-holds-form.png"))

    placing = trigger_from_form(browser, wait, standalone, place)
    assert wait_for_run_end(client, DAG_ID, placing, timeout=RUN_TIMEOUT) == "success"
    [hold] = holds(app_database)
    assert (hold["kind"], hold["table"], hold["key"], hold["placed_by"]) == ("record", TABLE, key, "admin")

    listing = trigger_from_form(browser, wait, standalone, lambda: choose(browser, wait, "action", "List the holds"))
    assert wait_for_run_end(client, DAG_ID, listing, timeout=RUN_TIMEOUT) == "success"
    listed = returned(client, listing)
    assert (listed["count"], [row["id"] for row in listed["holds"]]) == (1, [hold["id"]])

    def lift() -> None:
        choose(browser, wait, "action", "Lift a hold")
        open_section(browser, wait, "Lift a hold")
        type_into(browser, "hold_id", str(hold["id"]))

    lifting = trigger_from_form(browser, wait, standalone, lift)
    assert wait_for_run_end(client, DAG_ID, lifting, timeout=RUN_TIMEOUT) == "success"
    assert holds(app_database) == []
    [lifted] = holds(app_database, include_lifted=True)
    assert (lifted["id"], lifted["state"], lifted["lifted_by"]) == (hold["id"], "lifted", "admin")


def test_a_refused_request_fails_and_the_first_lines_of_its_log_say_why(
    standalone: Standalone, client: httpx.Client, browser
):
    wait = WebDriverWait(browser, 60)
    log_in(browser, wait, standalone)

    # A lift without the hold's id: the form lets it through (the field is optional for the other actions).
    refused = trigger_from_form(browser, wait, standalone, lambda: choose(browser, wait, "action", "Lift a hold"))

    assert wait_for_run_end(client, DAG_ID, refused, timeout=RUN_TIMEOUT) == "failed"
    first_lines = log_lines(client, refused, "hold")[:FIRST_LINES]
    assert any("request refused: parameter hold_id: required to lift a hold" in line for line in first_lines), (
        first_lines
    )


def trigger_from_form(browser: webdriver.Chrome, wait: WebDriverWait, standalone: Standalone, fill: Callable) -> str:
    """Open the DAG's trigger form, `fill` it in, press its Trigger button: the new run's id."""
    browser.get(f"{standalone.url}/dags/{DAG_ID}")
    wait.until(expected_conditions.element_to_be_clickable((By.XPATH, TRIGGER_BUTTON))).click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "element_action")))
    fill()
    submit = browser.find_elements(By.XPATH, TRIGGER_BUTTON)[-1]
    assert submit.is_enabled(), "the form's Trigger button is disabled"
    submit.click()
    # The UI goes to the new run's page.
    wait.until(lambda driver: "/runs/" in driver.current_url)
    return unquote(browser.current_url.split("/runs/")[1].split("/")[0].split("?")[0])


def choose(browser: webdriver.Chrome, wait: WebDriverWait, field: str, label: str) -> None:
    """Pick `label` in the field's menu, opening the menu again until it shows the option: a click
    while its section still opens may leave it closed."""
    option = (By.XPATH, f"//div[@role='option' and normalize-space()='{label}']")

    def chosen(driver: webdriver.Chrome) -> bool:
        shown = driver.find_elements(*option)
        try:
            (shown[0] if shown else driver.find_element(By.ID, f"element_{field}")).click()
        except (NoSuchElementException, ElementNotInteractableException, ElementClickInterceptedException):
            return False
        return bool(shown)

    wait.until(chosen, f"{label} chosen in {field}")


def type_into(browser: webdriver.Chrome, field: str, text: str) -> None:
    browser.find_element(By.NAME, f"element_{field}").send_keys(text)


def open_section(browser: webdriver.Chrome, wait: WebDriverWait, title: str) -> None:
    """Each action's fields are in a section of their own, closed until opened."""
    click(wait, (By.XPATH, f"//button[normalize-space()='{title}']"))


def click(wait: WebDriverWait, locator: tuple[str, str]) -> None:
    """Click the element once it takes the click: sections and menus open with an animation."""

    def clicked(driver: webdriver.Chrome) -> bool:
        try:
            driver.find_element(*locator).click()
        except (NoSuchElementException, ElementNotInteractableException, ElementClickInterceptedException):
            return False
        return True

    wait.until(clicked, f"{locator[1]} clickable")


def returned(client: httpx.Client, run_id: str) -> dict:
    """The `hold` task's XCom."""
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/hold/xcomEntries/return_value"
    response = client.get(path)
    response.raise_for_status()
    return response.json()["value"]


def log_lines(client: httpx.Client, run_id: str, task_id: str) -> list[str]:
    """The lines of the task's first try's log, as the UI shows them."""
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/logs/1"
    response = client.get(path, headers={"Accept": "application/json"})
    response.raise_for_status()
    return [str(line.get("event", "")) for line in response.json()["content"]]


def holds(url: str, *, include_lifted: bool = False) -> list[dict]:
    engine = make_engine(url)
    rows = list_holds(engine, include_lifted=include_lifted)
    engine.dispose()
    return rows


def a_record_key(url: str, table_name: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        key = connection.execute(select(func.min(column("id"))).select_from(table(table_name))).scalar_one()
    engine.dispose()
    return key
