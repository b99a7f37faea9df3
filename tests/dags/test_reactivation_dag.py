"""The reactivation cycle through Airflow (dag.test): `retention_account_services` sends its notices
through the SMTP provider's hook (connection `smtp_default`, from the environment) to a real server
on loopback, a second run the same day sends nothing twice, the grace period ends in erasure, and no
address or other personal data reaches task logs, XCom or reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from airflow_harness import run_dag, run_log, task_states, xcoms
from lifecycle.appschema import create_app_schema
from lifecycle.store import make_engine
from tests.lifecycle_helpers import CANARY, add

# Notices go out only for a current as-of (lifecycle_airflow.mail_config.NOTICE_LATENESS): today's.
AS_OF = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
LOGIN_URL = "https://smice.example/login"
CANARY_EMAIL = "zebulon.quintessenza@canary-pii.example"
REFUSED_EMAIL = "refused.quintessenza@canary-pii.example"
PERSONAL_DATA = (*CANARY.values(), CANARY_EMAIL, REFUSED_EMAIL, "plain@example.org")


@pytest.fixture
def application(tmp_path, monkeypatch, airflow_home, smtp_server):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    create_app_schema(engine)
    inactive_since = (AS_OF - timedelta(days=800)).replace(tzinfo=None)
    for email, values in ((CANARY_EMAIL, CANARY | {"locale": "en"}), (REFUSED_EMAIL, {}), ("plain@example.org", {})):
        smicer = add(
            engine, "smicers", email=email, created_at=datetime(2020, 1, 1), last_login_at=inactive_since, **values
        )
        add(
            engine,
            "connection_logs",
            smicer_id=smicer,
            connected_at=inactive_since,
            user_agent=f"{CANARY['first_name']} {CANARY['last_name']}'s browser",
        )
    smtp_server.refuse(REFUSED_EMAIL, 550)
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", url)
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_server.connection_uri)
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_LOGIN_URL", LOGIN_URL)
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    yield engine
    engine.dispose()


def test_notices_go_through_smtp_default_once_and_the_grace_ends_in_erasure(application, smtp_server, tmp_path):
    notices = run_dag("retention_account_services", AS_OF, retries=0)
    after_notices = list(smtp_server.recipients)
    same_day = run_dag("retention_account_services", AS_OF, retries=0)
    erasures = run_dag("retention_account_services", AS_OF + timedelta(days=30), retries=0)

    for state, dag_run in (notices, same_day, erasures):
        assert state == "success", task_states(dag_run)
    assert sorted(after_notices) == ["plain@example.org", CANARY_EMAIL]
    assert smtp_server.recipients == after_notices, "neither the same day's second run nor the later one emails"
    [message] = [r.message for r in smtp_server.handler.received if r.recipients == [CANARY_EMAIL]]
    assert LOGIN_URL in message.get_body(("plain",)).get_content(), "the login link from the Airflow variable"
    with application.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM smicers").scalar() == 0
    reports = [json.loads(path.read_text()) for path in (tmp_path / "data" / "reports").rglob("report.json")]
    inactive = [next(o for o in r["rules"] if o["rule"] == "account-inactive") for r in reports]
    outcomes = sorted((o["emailed"], o["undeliverable"], o["erased"]) for o in inactive)
    assert outcomes == [(0, 0, 0), (0, 0, 3), (2, 1, 0)], "notices; the same day again; erasures"
    assert not (tmp_path / "data" / "outbox").exists(), "with smtp_default, no outbox"

    leaks = []
    for _, dag_run in (notices, same_day, erasures):
        texts = {"log": run_log(dag_run), "xcom": json.dumps(xcoms(dag_run), default=str)}
        leaks += [(where, value) for where, text in texts.items() for value in PERSONAL_DATA if value in text]
    for path in (tmp_path / "data" / "reports").rglob("*"):
        if path.is_file():
            leaks += [(str(path), value) for value in PERSONAL_DATA if value in path.read_text()]
    assert leaks == []


def test_an_unreachable_mail_server_fails_the_run_defers_every_notice_and_names_no_one(
    application, monkeypatch, smtp_server, tmp_path
):
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", "smtp://127.0.0.1:9?disable_ssl=true&disable_tls=true")

    state, dag_run = run_dag("retention_account_services", AS_OF, retries=0)

    assert state == "failed"
    states = task_states(dag_run)
    assert (states["account-inactive.notify"], states["connection-logs.verify_erase"], states["report"]) == (
        "failed",
        "success",
        "success",
    )
    [report] = [json.loads(p.read_text()) for p in (tmp_path / "data" / "reports").rglob("report.json")]
    outcome = next(o for o in report["rules"] if o["rule"] == "account-inactive")
    assert (outcome["emailed"], outcome["deferred"]) == (0, 3)
    log = run_log(dag_run)
    assert "mail server unavailable (ConnectionRefusedError)" in log
    assert not [value for value in PERSONAL_DATA if value in log]
