"""Each rule of the policy (docs/policy.md) against real SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from dateutil.relativedelta import relativedelta

from tests.lifecycle_helpers import add, exists, run_rules, scalar, utc

DUE_AT = utc(2026, 3, 1, 12, 30, 15)
MIDNIGHT_DUE_AT = utc(2026, 3, 1)
ONE_SECOND = timedelta(seconds=1)


def _smicer(engine, **values):
    defaults = {"created_at": datetime(2019, 1, 1), "last_login_at": datetime(2019, 6, 1)}
    return add(engine, "smicers", **defaults | values)


def _closed_smicer(engine):
    return "smicers", _smicer(engine, closed_at=DUE_AT), DUE_AT


def _connection_log(engine):
    key = add(engine, "connection_logs", smicer_id=_smicer(engine), connected_at=DUE_AT - relativedelta(years=1))
    return "connection_logs", key, DUE_AT


def _browsing_event(engine):
    return "browsing_events", add(engine, "browsing_events", occurred_at=DUE_AT - relativedelta(years=1)), DUE_AT


def _client_contact(engine):
    client = add(engine, "clients", contract_end=date(2026, 3, 1))
    return "client_contacts", add(engine, "client_contacts", client_id=client), MIDNIGHT_DUE_AT


def _prospect(engine):
    key = add(engine, "prospects", created_at=datetime(2018, 1, 1), last_contact_at=DUE_AT - relativedelta(years=3))
    return "prospects", key, DUE_AT


def _withdrawn_subscription(engine):
    return "newsletter_subscriptions", add(engine, "newsletter_subscriptions", withdrawn_at=DUE_AT), DUE_AT


def _quiet_subscription(engine):
    key = add(engine, "newsletter_subscriptions", consented_at=DUE_AT - relativedelta(years=3))
    return "newsletter_subscriptions", key, DUE_AT


def _info_request(engine):
    key = add(
        engine, "contact_requests", received_at=datetime(2020, 1, 1), last_contact_at=DUE_AT - relativedelta(years=3)
    )
    return "contact_requests", key, DUE_AT


def _rejected_application(engine):
    key = add(
        engine,
        "test_applications",
        smicer_id=_smicer(engine),
        decision="rejected",
        test_date=date(2025, 10, 1),
        test_ended_at=DUE_AT - relativedelta(months=3),
        decided_at=DUE_AT - relativedelta(months=4),
    )
    return "test_applications", key, DUE_AT


def _accepted_application(engine):
    key = add(
        engine,
        "test_applications",
        smicer_id=_smicer(engine),
        decision="accepted",
        test_date=date(2025, 10, 1),
        decided_at=DUE_AT,
    )
    return "test_applications", key, DUE_AT


def _identity_document(engine):
    request = add(engine, "rights_requests", identity_verified_at=DUE_AT)
    return "identity_documents", add(engine, "identity_documents", rights_request_id=request), DUE_AT


def _objection(engine):
    key = add(engine, "prospecting_objections", objected_at=DUE_AT - relativedelta(years=3))
    return "prospecting_objections", key, DUE_AT


BOUNDARY_CASES = {
    "account-closed": _closed_smicer,
    "connection-logs": _connection_log,
    "browsing-events": _browsing_event,
    "client-contacts": _client_contact,
    "prospects": _prospect,
    "newsletter": _withdrawn_subscription,
    "info-requests": _info_request,
    "applications-rejected": _rejected_application,
    "applications-accepted": _accepted_application,
    "identity-documents": _identity_document,
    "objections": _objection,
}


@pytest.mark.parametrize("rule_id", BOUNDARY_CASES)
def test_a_record_is_erased_exactly_when_due_and_not_a_second_before(engine, tmp_path, rule_id):
    table, key, due_at = BOUNDARY_CASES[rule_id](engine)

    early = run_rules(engine, due_at - ONE_SECOND, tmp_path, [rule_id])
    assert exists(engine, table, key)
    assert early["rules"][rule_id]["erased"] == 0

    on_time = run_rules(engine, due_at, tmp_path, [rule_id])
    assert not exists(engine, table, key)
    assert on_time["rules"][rule_id]["due"] == 1
    archived = scalar(
        engine,
        "SELECT COUNT(*) FROM " + _lifecycle(engine, "archived_records") + " WHERE table_name = :t AND record_key = :k",
        t=table,
        k=key,
    )
    assert archived == (1 if rule_id in ("account-closed", "applications-rejected", "applications-accepted") else 0)


def test_a_subscription_without_withdrawal_waits_three_years_from_last_contact(engine, tmp_path):
    table, key, due_at = _quiet_subscription(engine)
    run_rules(engine, due_at - ONE_SECOND, tmp_path, ["newsletter"])
    assert exists(engine, table, key)
    run_rules(engine, due_at, tmp_path, ["newsletter"])
    assert not exists(engine, table, key)


def test_an_inactive_account_gets_its_notice_exactly_when_due_and_is_not_erased_yet(engine, tmp_path):
    key = _smicer(engine, last_login_at=DUE_AT - relativedelta(years=2))
    early = run_rules(engine, DUE_AT - ONE_SECOND, tmp_path, ["account-inactive"])["rules"]["account-inactive"]
    on_time = run_rules(engine, DUE_AT, tmp_path, ["account-inactive"])["rules"]["account-inactive"]
    assert (early["notices_due"], on_time["notices_due"], on_time["emailed"], on_time["due"]) == (0, 1, 1, 0)
    assert exists(engine, "smicers", key)


def test_three_years_are_calendar_years_not_1095_days(engine, tmp_path):
    key = add(engine, "prospects", created_at=datetime(2023, 3, 1), last_contact_at=None)
    run_rules(engine, utc(2023, 3, 1) + timedelta(days=1095), tmp_path, ["prospects"])
    assert exists(engine, "prospects", key), "1095 days after 2023-03-01 is 2026-02-28: not yet 3 years"
    run_rules(engine, utc(2026, 3, 1), tmp_path, ["prospects"])
    assert not exists(engine, "prospects", key)


def test_one_year_after_29_february_is_28_february(engine, tmp_path):
    key = add(engine, "connection_logs", smicer_id=_smicer(engine), connected_at=datetime(2024, 2, 29, 8, 0))
    run_rules(engine, utc(2025, 2, 28, 7, 59, 59), tmp_path, ["connection-logs"])
    assert exists(engine, "connection_logs", key)
    run_rules(engine, utc(2025, 2, 28, 8, 0), tmp_path, ["connection-logs"])
    assert not exists(engine, "connection_logs", key)


def _lifecycle(engine, name: str) -> str:
    return f"lifecycle.{name}" if engine.dialect.name == "postgresql" else f"lifecycle_{name}"
