"""`subject_request` through Airflow (dag.test), on SQLite and PostgreSQL: the trigger form's
parameters; an access request writing the subject's package; an erasure that is a dry run unless told
otherwise, then carried out with its certificate in the run's report and its rights_requests row
closed; a restriction refusing an erasure and holding the nightly rules until its lift; an objection
and a withdrawal of consent; a malformed request failing at `check` with nothing changed. No address
reaches XCom, the log or the report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airflow_harness import dag_bag, run_dag, run_log, task_logs, task_states, xcoms
from lifecycle.appschema import create_app_schema
from lifecycle.report_paths import run_report_dir
from lifecycle.store import make_engine
from tests.lifecycle_helpers import exists, fingerprint, run_rules, scalar, utc
from tests.test_subject_request import CANARY_MARKS, TYPED, seed

pytestmark = pytest.mark.airflow

LOGICAL_DATE = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def application(request, tmp_path, monkeypatch, airflow_home):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        database = request.getfixturevalue("postgresql_session_database")
        database.reset()
        url = database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", url)
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY", "s" * 40)
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    create_app_schema(engine)
    yield engine
    engine.dispose()


def test_the_trigger_form_lists_the_kinds_and_names_every_parameter(airflow_home):
    bag = dag_bag()
    dag = bag.get_dag("subject_request")
    assert dag.schedule is None and dag.doc_md.startswith("# Rights of the data subject")
    kind = dag.params.get_param("kind").schema
    assert kind["enum"] == [
        "access",
        "portability",
        "erasure",
        "objection",
        "withdraw_consent",
        "restriction",
        "lift_restriction",
    ]
    assert set(kind["values_display"]) == set(kind["enum"])
    for name in ("email", "kind", "dry_run", "request_id"):
        param = dag.params.get_param(name)
        assert param.schema["title"] and param.description, name
    assert dag.params.get_param("dry_run").value is True  # the form: a dry run until switched off
    assert sorted(task.task_id for task in dag.tasks) == ["carry_out", "check", "report"]
    assert dag.get_task("report").is_teardown


def test_an_access_request_writes_the_package_and_the_report_says_where(application, tmp_path):
    mine = seed(application)

    state, dag_run = run_dag("subject_request", LOGICAL_DATE, conf={"email": TYPED, "kind": "access"}, retries=0)

    assert state == "success", task_states(dag_run)
    answer = xcoms(dag_run)["carry_out"]["return_value"]
    package = Path(answer["package"].removeprefix("file://"))
    assert package.parent == tmp_path / "data" / "exports"
    exported = json.loads((package / "smicers.json").read_text(encoding="utf-8"))
    assert [row["id"] for row in exported] == mine["smicers"]
    assert answer["tables"]["connection_logs"] == {"exported": 2}
    report = _report(tmp_path, dag_run)
    assert answer["package"] in report
    _no_address(dag_run, report)


def test_an_erasure_is_a_dry_run_first_then_carried_out_with_its_certificate(application, tmp_path):
    mine = seed(application)
    request_id = mine["rights_requests"][0]
    conf = {"email": TYPED, "kind": "erasure", "request_id": request_id}
    before = fingerprint(application)

    dry, dry_run = run_dag("subject_request", LOGICAL_DATE, conf=conf, retries=0)
    unchanged = fingerprint(application) == before
    real, real_run = run_dag(
        "subject_request", LOGICAL_DATE.replace(hour=10), conf=conf | {"dry_run": False}, retries=0
    )

    assert (dry, real) == ("success", "success"), (task_states(dry_run), task_states(real_run))
    assert unchanged
    assert "Dry run" in _report(tmp_path, dry_run)
    certificate = _report(tmp_path, real_run)
    assert "Deletion certificate" in certificate and "connection_logs" in certificate
    assert scalar(application, "SELECT COUNT(*) FROM smicers") == 1  # the neighbour
    assert scalar(application, "SELECT status FROM rights_requests WHERE id = :k", k=request_id) == "done"
    for dag_run in (dry_run, real_run):
        _no_address(dag_run, _report(tmp_path, dag_run))


def test_a_restriction_refuses_erasure_and_holds_nightly_rules_until_lifted_then_objection(application, tmp_path):
    mine = seed(application)
    logs = mine["connection_logs"]

    def ask(kind: str, hour: int, **conf) -> dict:
        conf = {"email": TYPED, "kind": kind} | conf
        state, dag_run = run_dag("subject_request", LOGICAL_DATE.replace(hour=hour), conf=conf)
        assert state == "success", task_states(dag_run)
        _no_address(dag_run, _report(tmp_path, dag_run))
        return xcoms(dag_run)["carry_out"]["return_value"]

    restricted = ask("restriction", 10)
    refused = ask("erasure", 11, dry_run=False, request_id=mine["rights_requests"][0])
    run_rules(application, utc(2027, 6, 1), tmp_path, ["connection-logs"], run_id="nightly_1")
    kept = [key for key in logs if exists(application, "connection_logs", key)]
    lifted = ask("lift_restriction", 12)
    run_rules(application, utc(2027, 6, 1), tmp_path, ["connection-logs"], run_id="nightly_2")
    objected = ask("objection", 13)
    withdrawn = ask("withdraw_consent", 14)

    assert restricted["tables"]["rights_requests"]["restriction opened"] == 1
    assert (refused["outcome"], refused["tables"]["smicers"]["why_kept"]) == ("refused", {"held": 1})
    assert "restriction request" in refused["reason"]
    assert (
        scalar(application, "SELECT status FROM rights_requests WHERE id = :k", k=mine["rights_requests"][0]) == "open"
    )
    assert kept == logs, "the restriction holds the nightly rules"
    assert lifted["tables"]["rights_requests"]["restrictions lifted"] == 1
    assert not any(exists(application, "connection_logs", key) for key in logs), "released by the lift"
    assert objected["tables"]["prospects"]["erased"] == 1
    assert objected["tables"]["prospecting_objections"]["objection recorded"] == 1
    assert withdrawn["outcome"] == "nothing found"  # the objection erased the subscriptions already
    assert scalar(application, "SELECT COUNT(*) FROM newsletter_subscriptions") == 2  # the neighbour's


def test_a_malformed_request_fails_at_check_and_changes_nothing(application, tmp_path):
    seed(application)
    before = fingerprint(application)

    conf = {"email": "zebulon.quintessenza@nowhere", "kind": "erasure", "dry_run": False}
    state, dag_run = run_dag("subject_request", LOGICAL_DATE, conf=conf, retries=0)

    assert state == "failed"
    assert task_states(dag_run) == {"check": "failed", "carry_out": "upstream_failed", "report": "success"}
    assert "parameter email: not an email address" in task_logs(dag_run)["check"]
    assert fingerprint(application) == before
    _no_address(dag_run, _report(tmp_path, dag_run))


def _report(tmp_path: Path, dag_run) -> str:
    folder = run_report_dir(tmp_path / "data" / "reports", dag_run.dag_id, dag_run.run_id)
    return (folder / "report.html").read_text(encoding="utf-8")


def _no_address(dag_run, report: str) -> None:
    seen = (json.dumps(xcoms(dag_run)) + run_log(dag_run) + report).lower()
    for mark in CANARY_MARKS:
        assert mark.lower() not in seen
