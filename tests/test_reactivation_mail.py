"""The reactivation email: its three languages and what it may carry, and every way a send can end
(refused for good, refused for now, no server, a silent server, sender or message refused, an
invalid address), none of which may stop the other notices or leak an address."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from lifecycle.mail import MailServerUnavailable, OutboxMailer, SmtpMailer, valid_address
from lifecycle.notifying import Throttle
from lifecycle.pipeline import run_rule
from lifecycle.reporting import finish_run, start_run
from smtp_fixtures import free_port, silent_server, smtp_client
from tests.lifecycle_helpers import CANARY, POLICY, add, exists, make_run, utc

NOTICE_DAY = utc(2026, 11, 25)
RULE = "account-inactive"
NOT_IN_THE_EMAIL = [value for name, value in CANARY.items() if name != "first_name"]


@pytest.fixture
def engine(sqlite_engine):
    return sqlite_engine


def inactive(engine, email: str | None, **values) -> int:
    return add(
        engine, "smicers", email=email, created_at=datetime(2020, 1, 1), last_login_at=datetime(2024, 1, 1), **values
    )


def run_once(engine, tmp_path, mailer, as_of=NOTICE_DAY, run_id="nightly") -> tuple[dict, Exception | None]:
    """One run of the rule, its report written whatever happened, and the exception it ended with."""
    run = make_run(engine, as_of, tmp_path, run_id=run_id, mailer=mailer)
    rule = POLICY.rule(RULE)
    start_run(run)
    error = None
    try:
        run_rule(run, rule)
    except MailServerUnavailable as failure:
        error = failure
    summary = finish_run(run, [rule])
    report = json.loads(Path(summary["report"]).with_suffix(".json").read_text())
    return next(o for o in report["rules"] if o["rule"] == RULE), error


def ledger_rows(engine) -> list[dict]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM lifecycle_reactivation_notices ORDER BY record_key")
        return [dict(row) for row in rows.mappings()]


def smtp(port: int, timeout: float = 5) -> SmtpMailer:
    return SmtpMailer(lambda: smtp_client(port, timeout))


@pytest.mark.parametrize(
    ("locale", "subject", "erasure_date"),
    [
        ("fr", "Votre compte SMICE est inactif depuis 2 ans", "25 décembre 2026"),
        ("nl-BE", "Je SMICE-account is al 2 jaar inactief", "25 december 2026"),
        ("EN", "Your SMICE account has been inactive for 2 years", "25 December 2026"),
        ("de", "Votre compte SMICE est inactif depuis 2 ans", "25 décembre 2026"),
    ],
)
def test_the_email_speaks_the_smicers_language_and_carries_only_the_first_name(
    engine, tmp_path, locale, subject, erasure_date
):
    address = "zebulon.quintessenza@canary-pii.example"
    inactive(
        engine,
        address,
        locale=locale,
        last_name=CANARY["last_name"],
        **{k: v for k, v in CANARY.items() if k != "last_name"},
    )
    run_once(engine, tmp_path, OutboxMailer(tmp_path / "outbox"))

    [eml] = (tmp_path / "outbox").glob("*.eml")
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert (message["Subject"], message["To"], message["From"]) == (subject, address, "SMICE <contact@smice.com>")
    assert message["Content-Language"] == (locale[:2].lower() if locale != "de" else "fr")
    for part in (text, html):
        assert CANARY["first_name"] in part and erasure_date in part
        assert "https://smice.com/login" in part and "contact@smice.com" in part
        assert not [value for value in (*NOT_IN_THE_EMAIL, address) if value in part]
    assert not [value for value in (*NOT_IN_THE_EMAIL, address, CANARY["first_name"]) if value in message["Subject"]]
    assert eml.name == message["Message-ID"].strip("<>") + ".eml"
    assert ledger_rows(engine)[0]["message_id"] == message["Message-ID"]


def test_an_html_first_name_is_escaped_and_a_missing_one_leaves_a_plain_greeting(engine, tmp_path):
    inactive(engine, "a@example.org", first_name="<b>Al</b>", locale="en")
    inactive(engine, "b@example.org", first_name=None, locale="en")
    run_once(engine, tmp_path, OutboxMailer(tmp_path / "outbox"))

    bodies = {}
    for eml in (tmp_path / "outbox").glob("*.eml"):
        message = message_from_bytes(eml.read_bytes(), policy=policy.default)
        bodies[message["To"]] = (message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content())
    assert "&lt;b&gt;Al&lt;/b&gt;" in bodies["a@example.org"][1]
    assert bodies["b@example.org"][0].splitlines()[0] == "Hello,"


def test_a_permanent_refusal_makes_the_notice_undeliverable_and_the_others_still_go(engine, tmp_path, smtp_server):
    refused = inactive(engine, "gone@example.org")
    missing = inactive(engine, None)
    unsendable = inactive(engine, "josé@example.org")
    kept = [inactive(engine, f"smicer{n}@example.org") for n in range(2)]
    smtp_server.refuse("gone@example.org", 550)

    outcome, error = run_once(engine, tmp_path, smtp(smtp_server.port))

    assert error is None
    assert sorted(smtp_server.recipients) == ["smicer0@example.org", "smicer1@example.org"]
    assert (outcome["emailed"], outcome["undeliverable"], outcome["deferred"]) == (2, 3, 0)
    rows = {row["record_key"]: row for row in ledger_rows(engine)}
    assert (rows[refused]["state"], rows[refused]["outcome"]) == ("undeliverable", "recipient refused (SMTP 550)")
    assert (rows[missing]["state"], rows[missing]["outcome"]) == ("undeliverable", "invalid address")
    assert (rows[unsendable]["state"], rows[unsendable]["outcome"]) == ("undeliverable", "recipient address not ASCII")
    assert all(rows[key]["state"] == "sent" for key in kept)
    assert str(rows[refused]["notice_as_of"]).startswith("2026-11-25"), "same date: the grace period runs"
    _assert_no_address(engine, tmp_path, ["gone@example.org", "josé@example.org", "smicer0@example.org"])

    run_once(engine, tmp_path, smtp(smtp_server.port), NOTICE_DAY + timedelta(days=30), "thirty days on")
    assert not exists(engine, "smicers", refused) and not exists(engine, "smicers", missing)


def test_a_temporary_refusal_records_nothing_and_is_tried_again_next_run(engine, tmp_path, smtp_server):
    busy = inactive(engine, "busy@example.org")
    inactive(engine, "fine@example.org")
    smtp_server.refuse("busy@example.org", 450)

    first, error = run_once(engine, tmp_path, smtp(smtp_server.port))
    smtp_server.handler.recipient_replies.clear()
    second, _ = run_once(engine, tmp_path, smtp(smtp_server.port), NOTICE_DAY + timedelta(days=1), "next night")

    assert error is None, "a refused recipient is not a fault of the run"
    assert (first["emailed"], first["deferred"], first["deferred_reasons"]) == (
        1,
        1,
        {"recipient deferred (SMTP 450)": 1},
    )
    assert (second["emailed"], smtp_server.recipients) == (1, ["fine@example.org", "busy@example.org"])
    [row] = [row for row in ledger_rows(engine) if row["record_key"] == busy]
    assert (row["state"], row["attempts"], str(row["notice_as_of"])[:10]) == ("sent", 2, "2026-11-26")
    _assert_no_address(engine, tmp_path, ["busy@example.org"])


@contextmanager
def _refused_connection(server):
    yield smtp(free_port())


@contextmanager
def _silent_server(server):
    with silent_server() as port:
        yield smtp(port, timeout=0.5)


@contextmanager
def _refused_sender(server):
    server.handler.sender_reply = "550 5.7.1 <contact@smice.com>: sender not allowed"
    yield smtp(server.port)


@contextmanager
def _refused_message(server):
    server.handler.data_reply = "554 5.6.0 message refused"
    yield smtp(server.port)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (_refused_connection, "mail server unavailable (ConnectionRefusedError)"),
        (_silent_server, "mail server unavailable (SMTPServerDisconnected after TimeoutError)"),
        (_refused_sender, "sender refused (SMTP 550)"),
        (_refused_message, "message refused (SMTP 554)"),
    ],
    ids=["connection refused", "timeout", "sender refused", "message refused"],
)
def test_a_fault_of_the_run_defers_every_notice_records_none_and_fails_the_step(
    engine, tmp_path, smtp_server, fault, reason
):
    for n in range(3):
        inactive(engine, f"smicer{n}@example.org")
    with fault(smtp_server) as mailer:
        outcome, error = run_once(engine, tmp_path, mailer)

    assert isinstance(error, MailServerUnavailable) and reason in str(error)
    assert (outcome["emailed"], outcome["undeliverable"], outcome["deferred"]) == (0, 0, 3)
    assert outcome["deferred_reasons"] == {reason: 3}
    assert {row["state"] for row in ledger_rows(engine)} <= {"deferred"}, "no notice recorded: no grace started"
    assert smtp_server.handler.received == []
    _assert_no_address(engine, tmp_path, ["smicer0@example.org"], error)

    smtp_server.handler.sender_reply = smtp_server.handler.data_reply = None
    retried, error = run_once(engine, tmp_path, smtp(smtp_server.port), NOTICE_DAY + timedelta(days=1), "next night")
    assert (error, retried["emailed"], len(smtp_server.recipients)) == (None, 3, 3)


def _assert_no_address(engine, tmp_path, addresses: list[str], error: Exception | None = None) -> None:
    """Neither the ledger nor the reports nor the exception name an address."""
    texts = [json.dumps(ledger_rows(engine), default=str), str(error or "")]
    texts += [path.read_text() for path in (tmp_path / "reports").rglob("*") if path.is_file()]
    assert not [address for address in addresses for text in texts if address in text]


def test_valid_addresses_as_policy_md_defines_them():
    assert valid_address("  Alice@Example.org ") == "Alice@Example.org"
    for invalid in (
        None,
        "",
        "not-an-email",
        "@example.org",
        "a@b@example.org",
        "a@localhost",
        "a b@example.org",
        "a@exa\nmple.org",
        42,
    ):
        assert valid_address(invalid) is None, invalid


def test_the_throttle_waits_so_that_no_minute_has_more_than_its_share():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    throttle = Throttle(per_minute=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        throttle.wait()
        now[0] += 1
    assert slept == [58.0, 58.0]
