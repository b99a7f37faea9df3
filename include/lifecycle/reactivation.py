"""The reactivation cycle's memory (docs/policy.md, rule `account-inactive`): the ledger of notices, one
row per smicer and inactivity cycle, and what it makes of a smicer inactive for the rule's period:
a notice to send, an erasure due (grace over, no response), or nothing yet.

Because every run reads this ledger, a smicer never gets two emails for one cycle, whatever reruns,
retries or backfills happen: a notice given (pending, sent, undeliverable) closes the cycle to email
until the smicer responds (activity after the notice's as-of) or is erased."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select, update

from lifecycle.decide import DUE, NOT_DUE, NOTIFY, Decision
from lifecycle.mail import Mailer
from lifecycle.periods import MalformedValue, add_period, to_utc
from lifecycle.policy import Rule
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.sql import statement

if TYPE_CHECKING:
    from lifecycle.select import Selection

DEFERRED, PENDING, SENT, UNDELIVERABLE = "deferred", "pending", "sent", "undeliverable"
RESPONDED, ERASED = "responded", "erased"
NOTICE_GIVEN = (PENDING, SENT, UNDELIVERABLE)
# A candidate notice's state in the run's selection, once handled.
CANDIDATE_STATE = {SENT: "emailed", UNDELIVERABLE: "undeliverable", DEFERRED: "deferred"}


@dataclass(frozen=True)
class Notice:
    id: int
    record_key: int
    cycle: int
    state: str
    notice_as_of: datetime
    message_id: str | None
    channel: str | None
    handed_over_at: datetime | None
    dag_id: str
    run_id: str
    outcome: str | None

    @classmethod
    def of(cls, row) -> Notice:
        return cls(
            row["id"],
            row["record_key"],
            row["cycle"],
            row["state"],
            to_utc(row["notice_as_of"]),
            row["message_id"],
            row["channel"],
            row["handed_over_at"],
            row["dag_id"],
            row["run_id"],
            row["outcome"],
        )

    def answered_by(self, last_activity: datetime | None) -> bool:
        """A response is activity strictly after the notice's as-of: a login later that day counts."""
        return last_activity is not None and last_activity > self.notice_as_of


def with_notices(connection, run: RunContext, rule: Rule, decisions: list[Decision]) -> list[Decision]:
    """Each smicer due by inactivity, in the light of the ledger: NOTIFY (no notice for this cycle yet),
    DUE (the grace period is over without response: erase) or NOT_DUE (in grace, or a notice unsettled)."""
    latest = latest_notices(connection, run, rule, [d.record_key for d in decisions if d.verdict == DUE])
    return [_in_cycle(d, latest.get(d.record_key), run, rule) if d.verdict == DUE else d for d in decisions]


def _in_cycle(decision: Decision, notice: Notice | None, run: RunContext, rule: Rule) -> Decision:
    if notice is not None and notice.state == PENDING:
        return replace(decision, verdict=NOT_DUE, reason="notice not settled")
    if notice is None or notice.state not in NOTICE_GIVEN or notice.answered_by(decision.anchor):
        return replace(decision, verdict=NOTIFY, retain_until=None)
    erase_at = add_period(notice.notice_as_of, rule.grace_period)
    if erase_at > run.as_of:
        return replace(decision, verdict=NOT_DUE, reason="grace period")
    return replace(decision, due_at=erase_at)


def latest_notices(connection, run: RunContext, rule: Rule, keys: list[int]) -> dict[int, Notice]:
    """Each smicer's notice of their latest cycle."""
    if not keys:
        return {}
    ledger = run.tables.reactivation_notices
    rows = connection.execute(
        select(ledger).where(ledger.c.rule == rule.id, ledger.c.record_key.in_(keys)).order_by(ledger.c.cycle)
    ).mappings()
    return {row["record_key"]: Notice.of(row) for row in rows}


def close_erased_cycles(connection, run: RunContext, rule: Rule, smicers) -> None:
    """Close the cycles of the smicers (a subquery of keys) erased for not responding, in the erasure's
    own transaction."""
    ledger = run.tables.reactivation_notices
    connection.execute(
        update(ledger)
        .where(ledger.c.rule == rule.id, ledger.c.record_key.in_(smicers), ledger.c.state.in_((SENT, UNDELIVERABLE)))
        .values(state=ERASED, closed_at=now_utc_naive(), closed_run_id=run.run_id)
    )


class NoticeLedger:
    """The ledger's writes for one run and rule: an attempt's intent, its outcome, and the cycles closed."""

    def __init__(self, run: RunContext, rule: Rule):
        self.run = run
        self.rule = rule
        self.table = run.tables.reactivation_notices

    def record(self, connection, key: int, inactive_since: datetime, state: str, **values) -> int | None:
        """Record an intent (pending) or an undeliverable notice for the smicer's current cycle, reusing
        a deferred attempt's row and closing a cycle answered since; None when the cycle has its notice."""
        t = self.table
        latest = latest_notices(connection, self.run, self.rule, [key]).get(key)
        if latest is not None and latest.state in NOTICE_GIVEN:
            if not latest.answered_by(inactive_since):
                return None
            self._close(connection, [latest.id], RESPONDED)
        now = now_utc_naive()
        row = {
            "state": state,
            "inactive_since": to_utc(inactive_since).replace(tzinfo=None),
            "notice_as_of": self.run.as_of_naive,
            "dag_id": self.run.dag_id,
            "run_id": self.run.run_id,
            "recorded_at": now,
            "handed_over_at": None,
            "sent_at": None,
            "message_id": None,
            "channel": None,
            "language": None,
            "outcome": None,
            **values,
        }
        attempted = 1 if state == PENDING else 0
        if latest is not None and latest.state == DEFERRED:
            connection.execute(
                update(t)
                .where(t.c.id == latest.id, t.c.state == DEFERRED)
                .values(attempts=t.c.attempts + attempted, **row)
            )
            return latest.id
        cycle = latest.cycle + 1 if latest else 1
        inserted = connection.execute(
            insert(t).values(rule=self.rule.id, record_key=key, cycle=cycle, attempts=attempted, **row)
        )
        return inserted.inserted_primary_key[0]

    def mark_handed_over(self, notice_id: int) -> None:
        """From here on the message may reach the smicer even if this process dies."""
        self._update_pending(notice_id, handed_over_at=now_utc_naive())

    def settle(self, notice_id: int, state: str, outcome: str, **values) -> None:
        self._update_pending(notice_id, state=state, outcome=outcome[:120], **values)

    def _update_pending(self, notice_id: int, **values) -> None:
        t = self.table
        with self.run.engine.begin() as connection:
            connection.execute(update(t).where(t.c.id == notice_id, t.c.state == PENDING).values(**values))

    def settle_interrupted(self, mailer: Mailer) -> Counter[str]:
        """Settle the intents of tries that died before recording how their send ended.

        Not handed over: nothing left, the notice is tried again. Handed over to the outbox: the file
        tells. Handed over to a mail server, which cannot be asked: counted as sent at its as-of, never
        sent twice (docs/policy.md choices: one email per cycle, never two), and erasure still waits for the grace."""
        t = self.table
        with self.run.engine.connect() as connection:
            pending = [
                Notice.of(row)
                for row in connection.execute(
                    select(t).where(t.c.rule == self.rule.id, t.c.state == PENDING).order_by(t.c.id)
                ).mappings()
            ]
        outcomes: Counter[str] = Counter()
        for notice in pending:
            state, outcome = self._interrupted_outcome(notice, mailer)
            sent_at = {"sent_at": notice.handed_over_at} if state == SENT else {}
            self.settle(notice.id, state, outcome, **sent_at)
            outcomes[outcome] += 1
        return outcomes

    @staticmethod
    def _interrupted_outcome(notice: Notice, mailer: Mailer) -> tuple[str, str]:
        if notice.handed_over_at is None:
            return DEFERRED, "interrupted before sending"
        delivered = mailer.delivered(notice.message_id) if notice.channel == mailer.channel else None
        if delivered is None:
            return SENT, "interrupted after handing over: counted as sent"
        if delivered:
            return SENT, "interrupted after delivery"
        return DEFERRED, "interrupted before delivery"

    def close_responded(self) -> int:
        """Mark responded every notice whose smicer shows activity after it (and not after as-of)."""
        t = self.table
        closed, after = 0, 0
        while True:
            with self.run.engine.connect() as connection:
                notices = [
                    Notice.of(row)
                    for row in connection.execute(
                        select(t)
                        .where(t.c.rule == self.rule.id, t.c.state.in_((SENT, UNDELIVERABLE)), t.c.id > after)
                        .order_by(t.c.id)
                        .limit(self.rule.batch_size)
                    ).mappings()
                ]
            if not notices:
                return closed
            activity = self._last_activity([notice.record_key for notice in notices])
            answered = [
                n.id
                for n in notices
                if n.answered_by(activity.get(n.record_key)) and activity[n.record_key] <= self.run.as_of
            ]
            if answered:
                with self.run.engine.begin() as connection:
                    self._close(connection, answered, RESPONDED)
            closed += len(answered)
            after = notices[-1].id

    def _close(self, connection, notice_ids: list[int], state: str) -> None:
        t = self.table
        connection.execute(
            update(t)
            .where(t.c.id.in_(notice_ids), t.c.state.in_((SENT, UNDELIVERABLE)))
            .values(state=state, closed_at=now_utc_naive(), closed_run_id=self.run.run_id)
        )

    def _last_activity(self, keys: list[int]) -> dict[int, datetime]:
        """Each smicer's last activity: the latest of the rule's anchor columns, where readable."""
        spec = self.run.policy.tables[self.rule.table]
        columns = [ref.column for window in self.rule.windows for ref in window.columns]
        query = statement(
            self.run.engine,
            FETCH_ROWS,
            expanding=("keys",),
            table=self.rule.table,
            columns=[spec.key, *columns],
            match=spec.key,
            key=spec.key,
        )
        activity = {}
        with self.run.engine.connect() as connection:
            for row in connection.execute(query, {"keys": keys}).mappings():
                try:
                    instants = [to_utc(row[column]) for column in columns]
                except MalformedValue:
                    continue
                present = [instant for instant in instants if instant is not None]
                if present:
                    activity[row[spec.key]] = max(present)
        return activity

    def sent_in_run(self) -> int:
        t = self.table
        with self.run.engine.connect() as connection:
            return connection.execute(
                select(func.count())
                .select_from(t)
                .where(
                    t.c.rule == self.rule.id,
                    t.c.dag_id == self.run.dag_id,
                    t.c.run_id == self.run.run_id,
                    t.c.state == SENT,
                )
            ).scalar_one()


def notice_report(connection, selection: Selection) -> dict:
    """The notices of a run: emailed, undeliverable, deferred (and why), cycles closed, notices open."""
    run, rule = selection.run, selection.rule
    t = run.tables.reactivation_notices
    handled = selection.states(connection, NOTIFY)
    by_state = Counter()
    deferred_reasons = Counter()
    for state, reason, count in handled:
        by_state[state] += count
        if state in ("deferred", "pending"):
            deferred_reasons[reason or "not attempted"] += count
    responded = connection.execute(
        select(func.count())
        .select_from(t)
        .where(t.c.rule == rule.id, t.c.closed_run_id == run.run_id, t.c.state == RESPONDED)
    ).scalar_one()
    notices_open = connection.execute(
        select(func.count()).select_from(t).where(t.c.rule == rule.id, t.c.state.in_(NOTICE_GIVEN))
    ).scalar_one()
    return {
        "emailed": by_state["emailed"],
        "undeliverable": by_state["undeliverable"],
        "deferred": by_state["deferred"] + by_state["pending"],
        "unsettled": by_state["unsettled"],
        "deferred_reasons": dict(deferred_reasons),
        "responded": responded,
        "notices_open": notices_open,
    }


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

FETCH_ROWS = """\
{# Whole rows to archive, matched on their key or on the link to their owner. #}
SELECT {% for column in columns %}{{ column | q }}{% if not loop.last %}, {% endif %}{% endfor %}

  FROM {{ table | q }}
 WHERE {{ match | q }} IN :keys
 ORDER BY {{ key | q }}
"""
