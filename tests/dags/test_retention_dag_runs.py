"""Every retention DAG run end to end through Airflow (dag.test) on a seeded application database,
and no personal data in task logs, XCom, exceptions or reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from airflow_harness import run_dag, run_log, task_states, xcoms
from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
from lifecycle.store import make_engine
from tests.lifecycle_helpers import POLICY, add

AS_OF = datetime(2026, 11, 25, tzinfo=UTC)
DAG_IDS = [purpose.dag_id for purpose in POLICY.purposes]
# Recognisable personal data, seeded where every kind of decision meets it.
CANARIES = (
    "Zebulon",
    "Quintessenza",
    "zebulon.quintessenza@canary-pii.example",
    "+33 6 12 34 56 78",
    "FR7630006000011234567890189",
    "17 rue des Canaris",
)


@pytest.fixture
def application(tmp_path, monkeypatch, airflow_home):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    create_app_schema(engine)
    seed_demo(engine, AS_OF, size=200, seed=11, documents_dir=tmp_path / "documents")
    _seed_canaries(engine)
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    yield engine
    engine.dispose()


def _seed_canaries(engine) -> None:
    name, surname, email, phone, iban, street = CANARIES
    person = {"first_name": name, "last_name": surname, "phone": phone}
    closed = add(
        engine,
        "smicers",
        id=900001,
        email=email,
        iban=iban,
        postal_address=street,
        created_at=datetime(2021, 1, 1),
        last_login_at=datetime(2025, 1, 1),
        closed_at=datetime(2025, 2, 1),
        **person,
    )
    add(
        engine,
        "connection_logs",
        id=900002,
        smicer_id=closed,
        connected_at=datetime(2025, 1, 1),
        user_agent=f"{name} {surname}'s browser",
    )
    add(engine, "prospects", id=900003, email=f" {email.upper()} ", created_at=datetime(2020, 1, 1), **person)
    add(
        engine,
        "prospects",
        id=900004,
        email=email,
        created_at=datetime(2020, 1, 1),
        last_contact_at=datetime(2027, 1, 1),
        **person,
    )
    add(
        engine,
        "contact_requests",
        id=900005,
        email=email,
        full_name=f"{name} {surname}",
        message=f"Call me on {phone}",
        received_at=datetime(2021, 1, 1),
    )
    add(
        engine,
        "newsletter_subscriptions",
        id=900006,
        email=email,
        consented_at=datetime(2020, 1, 1),
        withdrawn_at=datetime(2026, 1, 1),
    )


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_every_retention_dag_runs_end_to_end_without_leaking_personal_data(application, tmp_path, dry_run):
    runs = {dag_id: run_dag(dag_id, AS_OF, {"dry_run": dry_run}, retries=0) for dag_id in DAG_IDS}

    for dag_id, (state, dag_run) in runs.items():
        assert state == "success", (dag_id, task_states(dag_run))
    reports = {
        path.parent.parent.name: json.loads(path.read_text())
        for path in (tmp_path / "data" / "reports").glob("*/*/report.json")
    }
    assert set(reports) == set(DAG_IDS)
    outcomes = {o["rule"]: o for report in reports.values() for o in report["rules"]}
    assert outcomes["account-closed"]["erased"] >= 1 and outcomes["account-closed"]["archived"] >= 1
    assert outcomes["prospects"]["erased"] >= 1 and outcomes["prospects"]["invalid"] >= 1
    assert _exists(application, "smicers", 900001) == dry_run
    assert all(report["dry_run"] == dry_run for report in reports.values())
    assert _exists(application, "prospects", 900004), "activity after as-of: invalid, kept"
    assert len({report["policy_version"] for report in reports.values()}) == 1

    leaks = []
    for dag_id, (_, dag_run) in runs.items():
        texts = {"log": run_log(dag_run), "xcom": json.dumps(xcoms(dag_run), default=str)}
        leaks += [(dag_id, where, c) for where, text in texts.items() for c in CANARIES if c.lower() in text.lower()]
    for path in (tmp_path / "data" / "reports").rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            leaks += [(str(path), "report", c) for c in CANARIES if c.lower() in text.lower()]
    assert leaks == []


def test_a_failing_step_fails_the_run_and_erases_nothing_of_that_rule(application, tmp_path, monkeypatch):
    unwritable = tmp_path / "not-a-folder"
    unwritable.write_text("the archive cannot be written here")
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI", unwritable.as_uri())
    smicers = application.connect().exec_driver_sql("SELECT COUNT(*) FROM smicers").scalar()

    state, dag_run = run_dag("retention_account_services", AS_OF, retries=0)

    assert state == "failed"
    states = task_states(dag_run)
    assert states["account-closed.archive[0]"] == "failed"
    assert states["account-closed.erase"] == "upstream_failed"
    assert states["report"] == "success"
    assert states["connection-logs.select"] == "success", "a rule after the failed one still runs"
    # ... and fails in its turn: what it erased cannot be written to the erasure ledger, in the archive.
    assert states["connection-logs.erase[0]"] == "failed"
    assert states["outcome"] == "upstream_failed"
    with application.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM smicers").scalar() == smicers
    report = json.loads(next((tmp_path / "data" / "reports").rglob("report.json")).read_text())
    assert next(o for o in report["rules"] if o["rule"] == "account-closed")["failed_step"] == "archive"


def _exists(engine, table: str, key: int) -> bool:
    with engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT COUNT(*) FROM {table} WHERE id = {int(key)}").scalar() == 1


def test_an_unreachable_database_fails_the_run_with_a_clear_message_and_no_password(
    airflow_home, monkeypatch, tmp_path
):
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", "postgresql://lifecycle:s3cret-pass@127.0.0.1:9/smice")
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))

    state, dag_run = run_dag("retention_newsletters", AS_OF, retries=0)

    assert state == "failed"
    assert task_states(dag_run)["prepare"] == "failed"
    log = run_log(dag_run)
    assert "application database postgresql+psycopg2://lifecycle:***@127.0.0.1:9/smice unreachable" in log
    assert "s3cret-pass" not in log


def test_a_rule_above_rows_per_task_archives_and_erases_in_mapped_tasks_one_key_range_each(
    application, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ROWS_PER_TASK", "25")

    state, dag_run = run_dag("retention_account_services", AS_OF, retries=0)

    assert state == "success", task_states(dag_run)
    states = task_states(dag_run)
    due_logs = xcoms(dag_run)["connection-logs.select"]["return_value"]["due"]
    erase_tasks = [task for task in states if task.startswith("connection-logs.erase[")]
    assert len(erase_tasks) == -(-due_logs // 25) > 1
    assert {states[task] for task in erase_tasks} == {"success"}
    labels = _rendered_map_indexes(dag_run, "connection-logs.erase")
    assert labels[0].startswith("first key to key ") and labels[-1].endswith("to last key")
    report = json.loads(next((tmp_path / "data" / "reports").rglob("report.json")).read_text())
    outcome = next(o for o in report["rules"] if o["rule"] == "connection-logs")
    assert outcome["erased"] == due_logs, "one rule in one run, whatever the number of its tasks"
    with application.connect() as connection:
        audited = connection.exec_driver_sql(
            "SELECT COUNT(*), COUNT(DISTINCT record_key) FROM lifecycle_audit_trail "
            "WHERE rule = 'connection-logs' AND action = 'erased'"
        ).one()
    assert tuple(audited) == (due_logs, due_logs)


def _rendered_map_indexes(dag_run, task_id: str) -> list[str]:
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = (
        select(TI._rendered_map_index)
        .where(TI.dag_id == dag_run.dag_id, TI.run_id == dag_run.run_id, TI.task_id == task_id)
        .order_by(TI.map_index)
    )
    with create_session() as session:
        return list(session.scalars(query))
