"""The reactivation cycle of the policy (docs/policy.md) against a real SMTP server on loopback, on three databases:
who gets a notice on which as-of date, responses, the grace period to the day, a new cycle,
holds, invalid records, reruns, retries, backfills and throttling."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lifecycle import notifying
from lifecycle.appschema import create_app_schema
from lifecycle.locks import exclusive
from lifecycle.mail import SmtpMailer
from lifecycle.pipeline import NOTIFY, SELECT, run_step
from lifecycle.store import ensure_lifecycle_tables, make_engine
from lifecycle_airflow.mail_config import notices_allowed
from smtp_fixtures import smtp_client
from tests.lifecycle_helpers import POLICY, add, exists, make_run, run_rules, scalar, utc

NOTICE_DAY = utc(2026, 11, 25)
DAY = timedelta(days=1)
RULE = "account-inactive"


def lifecycle_table(engine, name: str) -> str:
    return f"lifecycle.{name}" if engine.dialect.name == "postgresql" else f"lifecycle_{name}"


def notices(engine, key: int) -> list[tuple]:
    """(cycle, state, notice date) of a smicer's notices."""
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            f"SELECT cycle, state, notice_as_of FROM {lifecycle_table(engine, 'reactivation_notices')}"
            f" WHERE record_key = {int(key)} ORDER BY cycle"
        ).all()
    return [(cycle, state, _day(notice_as_of)) for cycle, state, notice_as_of in rows]


def _day(value) -> date:
    return value.date() if isinstance(value, datetime) else date.fromisoformat(str(value)[:10])


def inactive_smicer(engine, email: str, **values) -> int:
    """A smicer whose last login is 2 years before the notice day, with a bundle to erase."""
    smicer = add(
        engine,
        "smicers",
        email=email,
        **{"created_at": datetime(2020, 1, 1), "last_login_at": datetime(2024, 11, 20)} | values,
    )
    add(engine, "connection_logs", smicer_id=smicer, connected_at=datetime(2024, 11, 20))
    return smicer


class Cycle:
    """Runs of the reactivation rule through the SMTP mailer, one per as-of date."""

    def __init__(self, engine, tmp_path, smtp_server, **run_options):
        self.engine, self.tmp_path, self.server, self.run_options = engine, tmp_path, smtp_server, run_options

    def run(self, as_of, run_id=None, **kwargs) -> dict:
        """Run the rule and return its report, with the recipients the server got in that run."""
        before = len(self.server.recipients)
        summary = run_rules(
            self.engine,
            as_of,
            self.tmp_path,
            [RULE],
            run_id=run_id or f"run-{as_of:%Y%m%d%H%M}",
            mailer=SmtpMailer(lambda: smtp_client(self.server.port)),
            **self.run_options | kwargs,
        )
        return rule_report(summary) | {"recipients": sorted(self.server.recipients[before:])}


def rule_report(summary: dict) -> dict:
    report = json.loads(Path(summary["report"]).with_suffix(".json").read_text())
    return next(outcome for outcome in report["rules"] if outcome["rule"] == RULE)


def test_the_cycle_over_successive_as_of_dates(engine, tmp_path, smtp_server):
    alice = inactive_smicer(engine, "alice@example.org", locale="en")
    carol = inactive_smicer(engine, "carol@example.org")
    erin = inactive_smicer(engine, "not-an-email")
    dave = inactive_smicer(engine, "dave@example.org")
    add(engine, "rights_requests", email=" Dave@Example.org", kind="restriction", status="open")
    frank = inactive_smicer(engine, "frank@example.org")
    add(engine, "browsing_events", smicer_id=frank, occurred_at=datetime(2031, 6, 1))
    bob = add(
        engine, "smicers", email="bob@example.org", created_at=datetime(2020, 1, 1), last_login_at=datetime(2025, 6, 1)
    )
    cycle = Cycle(engine, tmp_path, smtp_server)

    first = cycle.run(NOTICE_DAY)
    assert first["recipients"] == ["alice@example.org", "carol@example.org"]
    assert (first["notices_due"], first["emailed"], first["undeliverable"]) == (3, 2, 1)
    assert (first["held"], first["invalid"]) == (1, 1), "dave held, frank's future event: no email"
    assert notices(engine, erin) == [(1, "undeliverable", NOTICE_DAY.date())]

    assert cycle.run(NOTICE_DAY, run_id="same-day-again")["recipients"] == []
    with engine.begin() as connection:  # carol logs in later on the notice day: a response
        connection.exec_driver_sql(f"UPDATE smicers SET last_login_at = '2026-11-25 08:00:00' WHERE id = {int(carol)}")

    day_29 = cycle.run(NOTICE_DAY + 29 * DAY)
    assert (day_29["recipients"], day_29["erased"], day_29["responded"]) == ([], 0, 1)
    assert all(exists(engine, "smicers", key) for key in (alice, erin, carol))

    day_30 = cycle.run(NOTICE_DAY + 30 * DAY)
    assert (day_30["recipients"], day_30["erased"], day_30["erased_with_bundle"]) == ([], 2, 2)
    assert not exists(engine, "smicers", alice) and not exists(engine, "smicers", erin)
    assert all(exists(engine, "smicers", key) for key in (carol, dave, frank, bob))
    assert notices(engine, alice) == [(1, "erased", NOTICE_DAY.date())]
    retained = scalar(engine, f"SELECT MIN(retain_until) FROM {lifecycle_table(engine, 'archive_batches')}")
    assert _day(retained) == date(2031, 12, 25), "archived until as-of + 5 years"

    # Carol's login of 2026-11-25 08:00 starts a new period: 2 years on, a new cycle and a new email
    # (bob, inactive since 2025-06-01, gets his first on the way; dave stays held, frank invalid).
    not_yet = cycle.run(utc(2028, 11, 25, 7, 59))
    new_cycle = cycle.run(utc(2028, 11, 25, 8, 0))
    assert (not_yet["recipients"], new_cycle["recipients"]) == (["bob@example.org"], ["carol@example.org"])
    assert notices(engine, carol) == [(1, "responded", date(2026, 11, 25)), (2, "sent", date(2028, 11, 25))]


def test_a_retried_notify_step_and_a_cleared_run_send_nothing_twice(sqlite_url, tmp_path, smtp_server):
    engine = _sqlite(sqlite_url)
    inactive_smicer(engine, "alice@example.org")
    mailer = SmtpMailer(lambda: smtp_client(smtp_server.port))
    run = make_run(engine, NOTICE_DAY, tmp_path, run_id="nightly", mailer=mailer)
    rule = POLICY.rule(RULE)
    run_step(run, rule, SELECT)
    run_step(run, rule, NOTIFY)
    run_step(run, rule, NOTIFY)  # a task retry

    cleared = run_rules(engine, NOTICE_DAY, tmp_path, [RULE], run_id="nightly", mailer=mailer)

    assert smtp_server.recipients == ["alice@example.org"]
    report = rule_report(cleared)
    assert (report["emailed"], report["notices_open"]) == (1, 1), "the run's report still counts its email"


def test_a_backfill_sends_nothing_for_a_cycle_noticed_later(sqlite_url, tmp_path, smtp_server):
    engine = _sqlite(sqlite_url)
    alice = inactive_smicer(engine, "alice@example.org")
    cycle = Cycle(engine, tmp_path, smtp_server)
    cycle.run(NOTICE_DAY)

    backfill = cycle.run(NOTICE_DAY - 3 * DAY, run_id="backfill")

    assert smtp_server.recipients == ["alice@example.org"]
    assert (backfill["notices_due"], backfill["due"]) == (0, 0), "an open notice, even a later one, closes the cycle"
    assert exists(engine, "smicers", alice)


def test_a_run_for_a_past_date_decides_but_emails_nobody(sqlite_url, tmp_path, smtp_server):
    engine = _sqlite(sqlite_url)
    inactive_smicer(engine, "alice@example.org")
    cycle = Cycle(engine, tmp_path, smtp_server)

    past = cycle.run(NOTICE_DAY, notices_allowed=False)
    current = cycle.run(NOTICE_DAY + DAY)

    assert (past["notices_due"], past["deferred"], past["recipients"]) == (1, 1, [])
    assert past["deferred_reasons"] == {"as-of in the past: sent by a current run": 1}
    assert current["recipients"] == ["alice@example.org"]


def test_only_runs_for_a_current_as_of_and_not_backfills_send_notices():
    now = datetime.now(UTC)
    assert notices_allowed("scheduled", now - DAY) and notices_allowed("manual", now + 31 * DAY)
    assert not notices_allowed("backfill", now)
    assert not notices_allowed("scheduled", now - 3 * DAY)


def test_a_second_sender_at_the_same_time_defers_instead_of_sending(sqlite_url, tmp_path, smtp_server, monkeypatch):
    engine = _sqlite(sqlite_url)
    inactive_smicer(engine, "alice@example.org")
    monkeypatch.setattr(notifying, "LOCK_WAIT_SECONDS", 0)
    cycle = Cycle(engine, tmp_path, smtp_server)

    with exclusive(engine, f"lifecycle-notify-{RULE}") as held:
        concurrent = cycle.run(NOTICE_DAY, run_id="concurrent")
    afterwards = cycle.run(NOTICE_DAY)

    assert held and concurrent["recipients"] == []
    assert concurrent["deferred_reasons"] == {"another run is sending notices": 1}
    assert afterwards["recipients"] == ["alice@example.org"]


def test_throttled_notices_go_out_on_later_runs_each_with_its_own_grace(sqlite_url, tmp_path, smtp_server):
    engine = _sqlite(sqlite_url)
    smicers = [inactive_smicer(engine, f"smicer{n}@example.org") for n in range(5)]
    cycle = Cycle(engine, tmp_path, smtp_server, notices=_limits(max_per_run=2))

    runs = [cycle.run(NOTICE_DAY + n * DAY) for n in range(3)]

    assert [len(run["recipients"]) for run in runs] == [2, 2, 1]
    assert runs[0]["deferred_reasons"] == {"per-run limit of 2 emails reached": 3}
    assert sorted(smtp_server.recipients) == [f"smicer{n}@example.org" for n in range(5)]
    assert [notices(engine, key)[0][2].day for key in smicers] == [25, 25, 26, 26, 27]
    erased_by_day = [cycle.run(NOTICE_DAY + n * DAY)["erased"] for n in (30, 31, 32)]
    assert erased_by_day == [2, 2, 1], "each grace period starts with its own notice"


def _limits(**values):
    from lifecycle.run import NoticeSettings

    return NoticeSettings(**values)


def _sqlite(url: str):
    engine = make_engine(url)
    create_app_schema(engine)
    ensure_lifecycle_tables(engine)
    return engine
