"""The nightly retention DAG of account services on a Celery cluster (scripts/cluster): PostgreSQL
metadata, Redis broker, two Celery workers in folders of their own, the archive and the reports on S3
(moto's server), a seeded PostgreSQL application database.

The rule `connection-logs` has more due records than `lifecycle_rows_per_task`, so its erase is mapped
over several key ranges. The test holds a row lock in each of the last two ranges: their erase tasks
block, one on each worker (a worker runs one task at a time). It kills the worker erasing the last
range with SIGKILL, as a machine's crash would, and releases the locks: that erase is retried on the
other worker and the run completes, every due record erased once, nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
from dateutil.relativedelta import relativedelta
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import URL, Engine, and_, column, exists, func, insert, select, table, text

from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
from lifecycle.policy import load_policy
from lifecycle.report_paths import safe_run_id
from lifecycle.select import KeyRange
from lifecycle.store import lifecycle_tables, make_engine
from s3_fixtures import CREDENTIALS, REGION, new_bucket, plain_client
from tests.cluster.cluster import Cluster, running_cluster
from tests.e2e import test_airflow_ui as ui
from tests.e2e.standalone import trigger, wait_for, wait_for_run_end
from tests.e2e.test_airflow_ui import log_in

# Headless Chromium as the UI test drives it.
browser, browser_binaries = ui.browser, ui.browser_binaries

# Redis first: without it, nothing else is set up.
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("redis_server")]

REDIS_URL = "redis://127.0.0.1:6379/0"
DAG_ID = "retention_account_services"
RULE_ID = "connection-logs"
ERASE = f"{RULE_ID}.erase"
ROWS_PER_TASK = 100
# Connection logs of one active smicer, above the demo's keys: 4 in 5 due (older than a year), the others not.
BLOCK = 300
DUE_AGE, NOT_DUE_AGE = timedelta(days=400), timedelta(days=300)
RUN_TIMEOUT = 300
WORKERS = (1, 2)
EXPAND_ALL_GROUPS = (By.CSS_SELECTOR, "button[aria-label='Expand all task groups']")
CONNECTION_LOGS = table(
    "connection_logs", column("id"), column("smicer_id"), column("connected_at"), column("succeeded")
)
SMICERS = table("smicers", column("id"), column("email"), column("created_at"), column("last_login_at"))


@dataclass(frozen=True)
class Application:
    url: str
    engine: Engine
    due: list[int]  # the block's keys due for erasure, in order
    not_due: list[int]

    @property
    def locked(self) -> list[int]:
        """A due key in each of the last two ranges of ROWS_PER_TASK due records (the block's are the highest)."""
        return [self.due[-1 - ROWS_PER_TASK], self.due[-1]]


@dataclass(frozen=True)
class Night:
    """The run, and what happened to it."""

    run_id: str
    state: str
    as_of: datetime
    key_ranges: list[list[int | None]]
    killed_worker: int
    killed_map_index: int
    before: dict[int, datetime]  # every connection log before the run: its key and connected_at


@pytest.fixture(scope="module")
def redis_server() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
    except redis.RedisError as error:
        needs(f"Redis not reachable at {REDIS_URL}: {error}")


def needs(message: str) -> None:
    """Skip the test for want of a service it needs; fail it under CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def application(postgresql_session_database, tmp_path_factory) -> Iterator[Application]:
    """The demo's records as of now, and the block of connection logs."""
    postgresql_session_database.reset()
    url = postgresql_session_database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    engine = make_engine(url)
    create_app_schema(engine)
    seed_demo(engine, datetime.now(UTC), documents_dir=tmp_path_factory.mktemp("documents"))
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        smicer = connection.execute(select(func.max(SMICERS.c.id))).scalar_one() + 1
        first = connection.execute(select(func.max(CONNECTION_LOGS.c.id))).scalar_one() + 1
        connection.execute(
            insert(SMICERS).values(
                id=smicer, email="block@example.org", created_at=now - 2 * DUE_AGE, last_login_at=now - timedelta(1)
            )
        )
        keys = range(first, first + BLOCK)
        due = [key for key in keys if (key - first) % 5 != 4]
        rows = [
            {
                "id": key,
                "smicer_id": smicer,
                "succeeded": True,
                "connected_at": now - (DUE_AGE if key in due else NOT_DUE_AGE),
            }
            for key in keys
        ]
        connection.execute(insert(CONNECTION_LOGS), rows)
    yield Application(url, engine, due, [key for key in keys if key not in due])
    engine.dispose()


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str) -> str:
    return new_bucket(plain_client(moto_endpoint))


@pytest.fixture(scope="module")
def cluster(
    application: Application,
    postgresql_session_database,
    moto_endpoint: str,
    bucket: str,
    tmp_path_factory,
) -> Iterator[Cluster]:
    aws = {
        "conn_type": "aws",
        "login": CREDENTIALS["aws_access_key_id"],
        "password": CREDENTIALS["aws_secret_access_key"],
        "extra": {"endpoint_url": moto_endpoint, "region_name": REGION},
    }
    env = {
        "AIRFLOW_CONN_SMICE_APP": application.url,
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI": f"s3://{bucket}/archive",
        "AIRFLOW_VAR_LIFECYCLE_REPORTS_URI": f"s3://{bucket}/reports",
        "AIRFLOW_VAR_LIFECYCLE_EXPORT_URI": f"s3://{bucket}/exports",
        "AIRFLOW_VAR_LIFECYCLE_ROWS_PER_TASK": str(ROWS_PER_TASK),
        # A task whose worker died is found within seconds, and retried at once.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
    }
    admin = postgresql_session_database.admin_engine.url
    postgres_server = URL.create(admin.drivername, admin.username, admin.password, admin.host, admin.port)
    with running_cluster(
        tmp_path_factory.mktemp("cluster"),
        env,
        postgres_url=postgres_server.render_as_string(hide_password=False),
        database=f"lifecycle_cluster_{secrets.token_hex(4)}",
        redis_url=REDIS_URL,
        workers=len(WORKERS),
        concurrency=1,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[httpx.Client]:
    with cluster.client() as api:
        yield api


@pytest.fixture(scope="module")
def night(cluster: Cluster, client: httpx.Client, application: Application) -> Night:
    """The run, one worker killed while it erases the last key range."""
    before = connection_logs(application.engine)
    with row_locks(application.engine, application.locked) as release:
        run_id = trigger(client, DAG_ID, {"volume_approved": True})
        wait_for(
            lambda: waiting_on_locks(application.engine) == len(application.locked),
            timeout=RUN_TIMEOUT,
            what="both locked key ranges' erase tasks waiting",
        )
        key_ranges = xcom(client, run_id, f"{RULE_ID}.key_ranges")
        killed_map_index = map_index_of(application.locked[-1], key_ranges)
        [killed_worker] = [w for w in WORKERS if (killed_map_index, 1) in cluster.attempts(w, DAG_ID, run_id, ERASE)]
        cluster.kill_worker(killed_worker)
        release()
    state = wait_for_run_end(client, DAG_ID, run_id, timeout=RUN_TIMEOUT)
    run_after = client.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["run_after"]
    as_of = datetime.fromisoformat(run_after)
    return Night(run_id, state, as_of, key_ranges, killed_worker, killed_map_index, before)


def test_the_run_succeeds_its_killed_erase_retried_on_the_other_worker(cluster: Cluster, client, night: Night):
    assert night.state == "success", task_instances(client, night.run_id)
    killed = client.get(task_instance_path(night.run_id, ERASE, night.killed_map_index)).json()
    assert (killed["state"], killed["try_number"]) == ("success", 2)
    [survivor] = set(WORKERS) - {night.killed_worker}
    assert (night.killed_map_index, 2) in cluster.attempts(survivor, DAG_ID, night.run_id, ERASE)


def test_the_erase_is_mapped_over_key_ranges_and_both_workers_ran_part_of_it(cluster: Cluster, night: Night):
    assert len(night.key_ranges) >= 3
    first_tries = {
        w: {m for m, attempt in cluster.attempts(w, DAG_ID, night.run_id, ERASE) if attempt == 1} for w in WORKERS
    }
    assert all(first_tries.values()), first_tries
    assert first_tries[1].isdisjoint(first_tries[2])
    assert first_tries[1] | first_tries[2] == set(range(len(night.key_ranges)))


def test_every_due_record_is_erased_once_and_nothing_else(application: Application, night: Night):
    after = connection_logs(application.engine)
    erased = set(night.before) - set(after)
    audited = audit_events(application.engine, night.run_id, "connection_logs")

    assert set(application.due) <= erased
    assert set(application.not_due) <= set(after)
    assert sorted(key for key, _ in audited) == sorted(erased), (
        "erased rows and the audit trail's erased records differ"
    )
    year_before = night.as_of - relativedelta(years=1)
    assert all(night.before[key] <= year_before for key, rule in audited if rule == RULE_ID)


def test_no_audit_event_is_duplicated(application: Application, night: Night):
    trail = lifecycle_tables(application.engine).audit_trail
    events = (trail.c.table_name, trail.c.record_key, trail.c.action)
    duplicated = select(*events).where(trail.c.run_id == night.run_id).group_by(*events).having(func.count() > 1)
    with application.engine.connect() as connection:
        assert connection.execute(duplicated).all() == []


def test_nothing_is_erased_without_a_verified_copy(application: Application, night: Night):
    """For each rule that archives: every record erased that had to be kept as evidence (retain_until
    set) is in a verified archive batch."""
    policy = load_policy()
    archiving = [
        rule for purpose in policy.purposes if purpose.dag_id == DAG_ID for rule in purpose.rules if rule.archives
    ]
    erased_with_retain_until = {
        rule.id: erased_needing_copy(application.engine, night, rule, policy) for rule in archiving
    }
    assert sum(len(keys) for keys in erased_with_retain_until.values()) > 0
    for rule in archiving:
        assert erased_with_retain_until[rule.id] <= verified_copies(application.engine, rule), rule.id


def test_the_report_written_by_a_worker_to_s3_is_served_by_the_api_server(
    cluster: Cluster, client: httpx.Client, night: Night, bucket: str, moto_endpoint: str
):
    served = client.get(f"/lifecycle/reports/{DAG_ID}/{quote(night.run_id, safe='')}")
    assert served.status_code == 200, served.text
    assert served.headers["content-type"].startswith("text/html") and night.run_id in served.text

    key = f"reports/{DAG_ID}/{safe_run_id(night.run_id)}/report.json"
    report = json.loads(plain_client(moto_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read())
    [rule] = [rule for rule in report["rules"] if rule["rule"] == RULE_ID]
    assert rule["erased"] == rule["due"] > 2 * ROWS_PER_TASK
    assert not list(cluster.folder.rglob("report.json")), "a report on a local disk"


@pytest.mark.usefixtures("browser_binaries")
def test_the_ui_lists_the_erase_tasks_by_key_range(cluster: Cluster, night: Night, browser, tmp_path):
    """The run's grid with every task group open, and the mapped erase's task instances named by their
    key ranges: the README's picture, in $LIFECYCLE_SCREENSHOTS_DIR when set (scripts/screenshots)."""
    wait = WebDriverWait(browser, 60)
    log_in(browser, wait, cluster)
    browser.get(f"{cluster.url}/dags/{DAG_ID}/runs/{quote(night.run_id, safe='')}/tasks/{ERASE}/mapped")
    wait.until(expected_conditions.element_to_be_clickable(EXPAND_ALL_GROUPS)).click()
    labels = [KeyRange.of(bounds).label for bounds in night.key_ranges]
    wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "tbody"), labels[-1]))
    shown = browser.find_element(By.TAG_NAME, "tbody").text
    assert all(label in shown for label in labels), shown
    screenshots = Path(os.environ.get("LIFECYCLE_SCREENSHOTS_DIR") or tmp_path)
    browser.save_screenshot(str(screenshots / "mapped-erase.png"))


@contextmanager
def row_locks(engine: Engine, keys: list[int]) -> Iterator[Callable[[], None]]:
    """Lock the connection logs of `keys` in a transaction of this test; yields what releases them."""
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(select(CONNECTION_LOGS.c.id).where(CONNECTION_LOGS.c.id.in_(keys)).with_for_update())
        yield transaction.rollback


def waiting_on_locks(engine: Engine) -> int:
    """How many sessions of the application database wait for a lock."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    with engine.connect() as connection:
        return connection.execute(text(query)).scalar_one()


def map_index_of(key: int, key_ranges: list[list[int | None]]) -> int:
    return next(
        i for i, (low, high) in enumerate(key_ranges) if (low is None or low <= key) and (high is None or key < high)
    )


def connection_logs(engine: Engine) -> dict[int, datetime]:
    with engine.connect() as connection:
        return dict(connection.execute(select(CONNECTION_LOGS.c.id, CONNECTION_LOGS.c.connected_at)).all())


def audit_events(engine: Engine, run_id: str, table_name: str) -> list[tuple[int, str]]:
    """(key, rule) of the run's erasures of the table, one per audit event."""
    trail = lifecycle_tables(engine).audit_trail
    query = select(trail.c.record_key, trail.c.rule).where(
        trail.c.run_id == run_id, trail.c.table_name == table_name, trail.c.action == "erased"
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def erased_needing_copy(engine: Engine, night: Night, rule, policy) -> set[int]:
    """The rule's due records of the run that had to be archived (retain_until set) and are gone."""
    t = lifecycle_tables(engine)
    candidates, selections = t.candidates, t.selections
    key = policy.tables[rule.table].key
    records = table(rule.table, column(key))
    still_there = exists().where(records.c[key] == candidates.c.record_key)
    query = (
        select(candidates.c.record_key)
        .join(selections, selections.c.id == candidates.c.selection_id)
        .where(
            selections.c.run_id == night.run_id,
            selections.c.rule == rule.id,
            candidates.c.decision == "due",
            candidates.c.retain_until.is_not(None),
            ~still_there,
        )
    )
    with engine.connect() as connection:
        return set(connection.execute(query).scalars())


def verified_copies(engine: Engine, rule) -> set[int]:
    """Keys of the rule's table in a verified archive batch."""
    t = lifecycle_tables(engine)
    records, batches = t.archived_records, t.archive_batches
    query = (
        select(records.c.record_key)
        .join(batches, and_(batches.c.batch_key == records.c.batch_key, batches.c.verified_at.is_not(None)))
        .where(records.c.table_name == rule.table)
    )
    with engine.connect() as connection:
        return set(connection.execute(query).scalars())


def xcom(client: httpx.Client, run_id: str, task_id: str):
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/return_value"
    response = client.get(path, params={"deserialize": True})
    response.raise_for_status()
    return response.json()["value"]


def task_instance_path(run_id: str, task_id: str, map_index: int) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/{map_index}"


def task_instances(client: httpx.Client, run_id: str) -> list[tuple]:
    """What each task instance of the run came to, for a failure's message."""
    response = client.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances", params={"limit": 200}
    )
    return [(ti["task_id"], ti["map_index"], ti["state"], ti["try_number"]) for ti in response.json()["task_instances"]]
