"""The safety rails through Airflow (dag.test): dry runs, the approval above a volume ceiling (answered,
refused, or unanswered in time), and failure alerts; and the night an application bug empties
`last_login_at`: the run stops at the approval and erases nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import text

from airflow_harness import answering_approvals, run_dag, task_states, xcoms
from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
from lifecycle.store import ensure_lifecycle_tables, make_engine
from tests.lifecycle_helpers import CANARY, POLICY, add, fingerprint, run_rules, scalar

AS_OF = datetime(2026, 11, 25, tzinfo=UTC)
ALERT_ADDRESS = "dpo-alerts@smice.example"


@pytest.fixture
def application(tmp_path, monkeypatch, airflow_home):
    engine = make_engine(f"sqlite:///{tmp_path / 'app.db'}")
    create_app_schema(engine)
    seed_demo(engine, AS_OF, size=200, seed=11, documents_dir=tmp_path / "documents")
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", str(engine.url))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    yield engine
    engine.dispose()


def report_of(tmp_path: Path, dag_run) -> dict:
    folder = tmp_path / "data" / "reports" / dag_run.dag_id
    return json.loads(next(folder.glob("*/report.json")).read_text())


def outcome_of(report: dict, rule_id: str) -> dict:
    return next(o for o in report["rules"] if o["rule"] == rule_id)


def test_a_dry_run_changes_nothing_and_its_report_says_what_the_run_would_do(application, tmp_path):
    before = fingerprint(application)

    state, dag_run = run_dag("retention_test_applications", AS_OF, {"dry_run": True}, retries=0)

    assert state == "success"
    assert fingerprint(application) == before
    assert not (tmp_path / "data" / "archive").exists()
    report = report_of(tmp_path, dag_run)
    assert report["dry_run"] is True
    would = {o["rule"]: (o["due"], o["archived"], o["erased"]) for o in report["rules"]}
    assert all(archived > 0 and erased > 0 for _, archived, erased in would.values())
    assert (tmp_path / "data" / "reports" / "retention_test_applications").glob("*/report.html")

    did = run_rules(application, AS_OF, tmp_path, list(would), run_id="real")["rules"]
    assert {rule: (d["due"], d["archived"], d["erased"]) for rule, d in did.items()} == would


def old_newsletter_subscriptions(engine, count: int) -> None:
    for i in range(count):
        add(engine, "newsletter_subscriptions", id=100_000 + i, consented_at=datetime(2020, 1, 1), last_contact_at=None)


@pytest.mark.parametrize("answer", ["Approve", "Reject"])
def test_above_its_ceiling_a_rule_waits_for_the_operators_answer(application, tmp_path, monkeypatch, answer):
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ALERT_EMAIL", ALERT_ADDRESS)
    old_newsletter_subscriptions(application, 80)
    subscriptions = scalar(application, "SELECT COUNT(*) FROM newsletter_subscriptions")

    with answering_approvals(answer) as asked:
        state, dag_run = run_dag("retention_newsletters", AS_OF, retries=0)

    assert state == "success" and asked == ["newsletter.approve"]
    alerts = [path.read_text() for path in (tmp_path / "data" / "outbox" / "alerts").glob("*.eml")]
    assert len(alerts) == 1 and "retention_newsletters: newsletter.approve waits for your approval" in alerts[0]
    states = task_states(dag_run)
    outcome = outcome_of(report_of(tmp_path, dag_run), "newsletter")
    left = scalar(application, "SELECT COUNT(*) FROM newsletter_subscriptions")
    if answer == "Approve":
        assert states["newsletter.erase[0]"] == "success" and outcome["approval"] == "approved by dpo"
        assert left == subscriptions - outcome["erased"] and outcome["erased"] > 80
    else:
        assert states["newsletter.erase"] == "skipped" and outcome["approval"] == "rejected by dpo"
        assert left == subscriptions and outcome["erased"] == 0


def test_a_dry_run_above_the_ceiling_asks_no_one_and_says_it_would(application, tmp_path):
    old_newsletter_subscriptions(application, 80)
    subscriptions = scalar(application, "SELECT COUNT(*) FROM newsletter_subscriptions")

    with answering_approvals("Approve") as asked:
        state, dag_run = run_dag("retention_newsletters", AS_OF, {"dry_run": True}, retries=0)

    assert state == "success" and asked == []
    outcome = outcome_of(report_of(tmp_path, dag_run), "newsletter")
    assert outcome["approval"] == "would be asked (above the ceiling)" and outcome["erased"] > 80
    assert scalar(application, "SELECT COUNT(*) FROM newsletter_subscriptions") == subscriptions


def test_the_approval_shows_counts_and_keys_and_no_personal_data(application, tmp_path):
    old_newsletter_subscriptions(application, 80)
    with application.begin() as connection:
        connection.execute(text("UPDATE newsletter_subscriptions SET email = :e"), {"e": "zebulon@canary-pii.example"})

    with answering_approvals("Reject"):
        _, dag_run = run_dag("retention_newsletters", AS_OF, retries=0)

    body = approval_body(dag_run, "newsletter.approve")
    assert "| candidates (records to act on, notices to send) |" in body
    assert "First primary keys of `newsletter_subscriptions`: " in body
    assert "zebulon" not in body.lower()


def approval_body(dag_run, task_id: str) -> str:
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(HITLDetail.body).join(TI, TI.id == HITLDetail.ti_id)
        return session.scalar(query.where(TI.run_id == dag_run.run_id, TI.task_id == task_id))


def test_with_last_login_at_emptied_the_nightly_run_stops_at_the_approval_and_erases_nothing(application, tmp_path):
    """A database in steady state (an earlier run did the day's work); then a bug nulls last_login_at
    for nine smicers in ten, and the night's run comes."""
    purpose = next(p for p in POLICY.purposes if p.dag_id == "retention_account_services")
    ensure_lifecycle_tables(application)
    run_rules(application, AS_OF, tmp_path / "earlier", [rule.id for rule in purpose.rules], run_id="earlier")
    with application.begin() as connection:
        connection.execute(text("UPDATE smicers SET last_login_at = NULL WHERE id % 10 <> 0"))
    before = fingerprint(application)

    with answering_approvals(None) as asked:  # nobody answers: the approval times out
        state, dag_run = run_dag("retention_account_services", AS_OF, retries=0)

    assert state == "success" and asked == ["account-inactive.approve"]
    inactive = outcome_of(report_of(tmp_path, dag_run), "account-inactive")
    assert inactive["approval"] == "rejected: no answer in time"
    assert inactive["notices_due"] > 50 and inactive["emailed"] == 0 and inactive["erased"] == 0
    states = task_states(dag_run)
    assert states["account-inactive.erase"] == states["account-inactive.notify"] == "skipped"
    changed = {table for table, digest in fingerprint(application).items() if before.get(table) != digest}
    assert changed <= {"lifecycle_runs", "lifecycle_selections", "lifecycle_candidates"}
    assert not (tmp_path / "data" / "outbox").exists()


def test_a_failed_task_alerts_the_configured_address_without_personal_data(
    application, tmp_path, monkeypatch, smtp_server
):
    add(application, "smicers", id=100_000, email="zebulon@canary-pii.example", **CANARY)
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_server.connection_uri)
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ALERT_EMAIL", ALERT_ADDRESS)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("the archive cannot be written here")
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI", blocked.as_uri())

    state, dag_run = run_dag("retention_test_applications", AS_OF, retries=0)

    assert state == "failed"
    alerts = [r for r in smtp_server.handler.received if r.recipients == [ALERT_ADDRESS]]
    assert [a.message["Subject"] for a in alerts] == [
        "[lifecycle] retention_test_applications: task applications-rejected.archive failed",
        "[lifecycle] retention_test_applications: task applications-accepted.archive failed",
    ]
    body = alerts[0].message.get_body(("html",)).get_content()
    assert "rule: applications-rejected" in body
    assert f"/dags/retention_test_applications/runs/{quote(dag_run.run_id)}/tasks/applications-rejected.archive" in body
    everything = "\n".join(a.message.as_string() for a in alerts) + json.dumps(xcoms(dag_run), default=str)
    assert not [value for value in CANARY.values() if value in everything] and "zebulon" not in everything


def test_without_an_smtp_connection_the_alert_waits_in_the_outbox(application, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ALERT_EMAIL", ALERT_ADDRESS)
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", f"sqlite:///{tmp_path / 'missing' / 'app.db'}")

    state, _ = run_dag("retention_newsletters", AS_OF, retries=0)

    assert state == "failed"
    alerts = list((tmp_path / "data" / "outbox" / "alerts").glob("*.eml"))
    assert alerts and all(ALERT_ADDRESS in alert.read_text() for alert in alerts)
