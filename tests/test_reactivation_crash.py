"""Exactly once, proven by killing the sending process (SIGKILL) at each point of a send: before the
message leaves, after it was handed over, after it was delivered but before the ledger knew. The
retried step settles what the dead one left, and no smicer ever gets a second email."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from lifecycle.appschema import create_app_schema
from lifecycle.mail import OutboxMailer, SmtpMailer
from lifecycle.pipeline import NOTIFY, SELECT, run_step
from lifecycle.store import ensure_lifecycle_tables, make_engine
from smtp_fixtures import smtp_client
from tests.lifecycle_helpers import POLICY, add, make_run, run_rules, utc

NOTICE_DAY = utc(2026, 11, 25)
RULE = "account-inactive"

KILLED_WHILE_SENDING = """
import os, signal, smtplib, sys
from contextlib import closing, contextmanager
from pathlib import Path
from lifecycle.mail import OutboxMailer, SmtpMailer
from lifecycle.pipeline import NOTIFY, run_step
from lifecycle.store import make_engine
from tests.lifecycle_helpers import POLICY, make_run, utc

db_url, folder, channel, port, kill_at = sys.argv[1:]


def die_if(point):
    if point == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


class KilledSession:
    def __init__(self, session):
        self.session = session

    def send(self, message, recipient, handing_over):
        def handing_over_then_maybe_die():
            handing_over()
            die_if("after handing over")

        die_if("before sending")
        self.session.send(message, recipient, handing_over_then_maybe_die)
        die_if("after sending")


class KilledMailer:
    def __init__(self, mailer):
        self.mailer, self.channel = mailer, mailer.channel

    @contextmanager
    def session(self):
        with self.mailer.session() as session:
            yield KilledSession(session)

    def delivered(self, message_id):
        return self.mailer.delivered(message_id)


if channel == "smtp":
    mailer = SmtpMailer(lambda: closing(smtplib.SMTP("127.0.0.1", int(port), timeout=5)))
else:
    mailer = OutboxMailer(Path(folder) / "outbox")
run = make_run(make_engine(db_url), utc(2026, 11, 25), Path(folder), run_id="nightly", mailer=KilledMailer(mailer))
run_step(run, POLICY.rule("account-inactive"), NOTIFY)
"""

# What the retry makes of the killed send: the emails delivered in all, and the notice's outcome.
SETTLED = {
    ("smtp", "before sending"): (1, "sent"),
    # A mail server cannot be asked: a message handed over counts as sent, never sent twice
    # (docs/reactivation.md), whether or not the server got it all.
    ("smtp", "after handing over"): (0, "interrupted after handing over: counted as sent"),
    ("smtp", "after sending"): (1, "interrupted after handing over: counted as sent"),
    ("outbox", "before sending"): (1, "sent"),
    ("outbox", "after handing over"): (1, "sent"),
    ("outbox", "after sending"): (1, "interrupted after delivery"),
}


def _engine(url: str):
    engine = make_engine(url)
    create_app_schema(engine)
    ensure_lifecycle_tables(engine)
    return engine


def _delivered(channel: str, smtp_server, tmp_path: Path) -> list[str]:
    if channel == "smtp":
        return smtp_server.recipients
    return [
        message_from_bytes(eml.read_bytes(), policy=policy.default)["To"] for eml in (tmp_path / "outbox").glob("*.eml")
    ]


def _mailer(channel: str, smtp_server, tmp_path: Path):
    if channel == "smtp":
        return SmtpMailer(lambda: smtp_client(smtp_server.port))
    return OutboxMailer(tmp_path / "outbox")


def _kill_while_sending(db_url: str, tmp_path: Path, channel: str, port: int, kill_at: str) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SENDING, db_url, str(tmp_path), channel, str(port), kill_at],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


def _notice(engine) -> dict:
    table = ("lifecycle." if engine.dialect.name == "postgresql" else "lifecycle_") + "reactivation_notices"
    with engine.connect() as connection:
        return dict(connection.exec_driver_sql(f"SELECT * FROM {table}").mappings().one())


@pytest.mark.parametrize("channel", ["smtp", "outbox"])
@pytest.mark.parametrize("kill_at", ["before sending", "after handing over", "after sending"])
def test_a_send_killed_at_any_point_is_settled_by_the_retry_without_a_second_email(
    sqlite_url, tmp_path, smtp_server, channel, kill_at
):
    _killed_then_retried(sqlite_url, tmp_path, smtp_server, channel, kill_at)


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_on_a_database_server_the_dead_senders_lock_is_released(db_url, tmp_path, smtp_server):
    _killed_then_retried(db_url, tmp_path, smtp_server, "smtp", "after sending")


def _killed_then_retried(db_url, tmp_path, smtp_server, channel, kill_at):
    engine = _engine(db_url)
    add(
        engine,
        "smicers",
        email="alice@example.org",
        created_at=datetime(2020, 1, 1),
        last_login_at=datetime(2024, 1, 1),
    )
    mailer = _mailer(channel, smtp_server, tmp_path)
    run = make_run(engine, NOTICE_DAY, tmp_path, run_id="nightly", mailer=mailer)
    run_step(run, POLICY.rule(RULE), SELECT)

    _kill_while_sending(db_url, tmp_path, channel, smtp_server.port, kill_at)
    assert _notice(engine)["state"] == "pending", "the intent is recorded before sending"
    run_step(run, POLICY.rule(RULE), NOTIFY)  # Airflow's retry of the killed task
    run_rules(engine, NOTICE_DAY + timedelta(days=1), tmp_path, [RULE], run_id="next night", mailer=mailer)

    emails, outcome = SETTLED[(channel, kill_at)]
    assert _delivered(channel, smtp_server, tmp_path) == ["alice@example.org"] * emails
    assert not list(tmp_path.glob("outbox/*.partial")), "no draft of a dead try is left behind"
    notice = _notice(engine)
    assert (notice["state"], notice["outcome"], str(notice["notice_as_of"])[:10]) == ("sent", outcome, "2026-11-25")
    engine.dispose()
