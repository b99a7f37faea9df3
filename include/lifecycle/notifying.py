"""The last step of the reactivation rule: settle the sends earlier tries left unsettled, close the
cycles of smicers who logged in, then email each smicer due a notice, within the run's limits.

Exactly once: a notice's intent (pending, its Message-ID chosen) is committed before the message
leaves, its outcome after; the moment it is handed over is recorded too, so a try that dies at any
point is settled by the next without a second email (NoticeLedger.settle_interrupted). One NOTIFY
at a time per rule (a lock that dies with its holder), so no try settles another's live send."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack

from lifecycle.decide import decide_keys
from lifecycle.locks import exclusive
from lifecycle.mail import (
    DeliveryUncertain,
    MailServerUnavailable,
    MailSession,
    RecipientDeferred,
    RecipientRefused,
    valid_address,
)
from lifecycle.notice_email import new_message_id, notice_language, notice_message, render_notice
from lifecycle.periods import add_period, utc_date
from lifecycle.policy import Rule
from lifecycle.reactivation import (
    CANDIDATE_STATE,
    DEFERRED,
    FETCH_ROWS,
    NOTIFY,
    PENDING,
    SENT,
    UNDELIVERABLE,
    NoticeLedger,
    latest_notices,
)
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.select import Selection
from lifecycle.sql import statement
from lifecycle.step import Step

# The ledger refused a second notice for the cycle although the decision saw none: never send it.
NOTICE_ALREADY_GIVEN = "notice already given"
# Long enough for a database server to notice that the lock's last holder died.
LOCK_WAIT_SECONDS = 10


class Throttle:
    """At most `per_minute` sends in any sixty seconds: waits before a send that would exceed it."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ):
        self.per_minute = per_minute
        self.clock = clock
        self.sleep = sleep
        self.recent: deque[float] = deque()

    def wait(self) -> None:
        now = self.clock()
        while self.recent and now - self.recent[0] >= 60:
            self.recent.popleft()
        if len(self.recent) >= self.per_minute:
            self.sleep(60 - (now - self.recent.popleft()))
        self.recent.append(self.clock())


def notify_inactive(run: RunContext, rule: Rule) -> dict:
    """Email the notices of the run's selection; a mail server fault defers the rest and fails the step."""
    if run.mailer is None:
        raise ValueError(f"rule {rule.id}: the run has no mailer for its notices")
    selection = Selection.of(run, rule)
    ledger = NoticeLedger(run, rule)
    with exclusive(run.engine, f"lifecycle-notify-{rule.id}", LOCK_WAIT_SECONDS) as alone:
        if not alone:
            sender = _NoticeSender(selection, ledger)
            sender.defer_all("another run is sending notices")
            return {"rule": rule.id, **sender.counts}
        settled = ledger.settle_interrupted(run.mailer)
        responded = ledger.close_responded()
        sender = _NoticeSender(selection, ledger)
        sender.send_all()
    if sender.fault:
        raise MailServerUnavailable(
            f"rule {rule.id}: {sender.fault}; {sender.counts['deferred']} notice(s) left for the next run"
        )
    return {"rule": rule.id, "settled": dict(settled), "responded": responded, **sender.counts}


class _NoticeSender:
    def __init__(self, selection: Selection, ledger: NoticeLedger):
        self.selection = selection
        self.run = run = selection.run
        self.rule = selection.rule
        self.ledger = ledger
        self.throttle = Throttle(run.notices.max_per_minute)
        self.emails_left = run.notices.max_per_run - ledger.sent_in_run()
        self.fault: str | None = None
        self.counts: Counter[str] = Counter()
        self._stack = ExitStack()
        self._session: MailSession | None = None

    def send_all(self) -> None:
        with self._stack:
            for key in self._candidates():
                self._notify(key)

    def defer_all(self, reason: str) -> None:
        for key in self._candidates():
            self._mark(key, "deferred", reason)

    def _candidates(self) -> Iterator[int]:
        """The selection's notices not handled yet, in key order (each is marked once handled)."""
        after = None
        while keys := self.selection.pending(NOTIFY, after, self.rule.batch_size):
            yield from keys
            after = keys[-1]

    def _notify(self, key: int) -> None:
        if not self.run.notices_allowed:
            return self._mark(key, "deferred", "as-of in the past: sent by a current run")
        with self.run.engine.begin() as connection:
            decision = next(iter(decide_keys(connection, self.run, self.rule, [key])), None)
            if decision is None or decision.verdict != NOTIFY:
                return self._mark_settled_or_skipped(connection, key, decision)
            recipient = self._recipient(connection, key)
            address = valid_address(recipient[self.run.policy.tables[self.rule.table].email])
            if address is None:
                if self.ledger.record(connection, key, decision.anchor, UNDELIVERABLE, outcome="invalid address"):
                    return self._mark(key, "undeliverable", "invalid address", connection)
                return self._mark(key, "skipped", NOTICE_ALREADY_GIVEN, connection)
            held_back = self._held_back()
            if held_back:
                return self._mark(key, "deferred", held_back, connection)
            language = notice_language(self.rule.notice, recipient[self.rule.notice.locale])
            message = self._message(recipient, address, language)
            notice_id = self.ledger.record(
                connection,
                key,
                decision.anchor,
                PENDING,
                message_id=message["Message-ID"],
                channel=self.run.mailer.channel,
                language=language,
            )
            if notice_id is None:
                return self._mark(key, "skipped", NOTICE_ALREADY_GIVEN, connection)
        self._send(key, notice_id, message, address)

    def _held_back(self) -> str | None:
        if self.fault:
            return self.fault
        if self.emails_left <= 0:
            return f"per-run limit of {self.run.notices.max_per_run} emails reached"
        return None

    def _send(self, key: int, notice_id: int, message, address: str) -> None:
        try:
            session = self._open_session()
            self.throttle.wait()
            session.send(message, address, lambda: self.ledger.mark_handed_over(notice_id))
        except RecipientRefused as refusal:
            self._settle(key, notice_id, UNDELIVERABLE, str(refusal))
        except RecipientDeferred as deferral:
            self._settle(key, notice_id, DEFERRED, str(deferral))
        except MailServerUnavailable as fault:
            self.fault = str(fault)
            self._settle(key, notice_id, DEFERRED, self.fault)
        except DeliveryUncertain as doubt:
            # Left pending: the next try settles it (and never sends it again).
            self.fault = str(doubt)
            self._mark(key, "unsettled", self.fault)
        else:
            self.emails_left -= 1
            self._settle(key, notice_id, SENT, "sent", sent_at=now_utc_naive())

    def _open_session(self) -> MailSession:
        if self._session is None:
            self._session = self._stack.enter_context(self.run.mailer.session())
        return self._session

    def _settle(self, key: int, notice_id: int, state: str, outcome: str, **values) -> None:
        self.ledger.settle(notice_id, state, outcome, **values)
        self._mark(key, CANDIDATE_STATE[state], outcome)

    def _mark_settled_or_skipped(self, connection, key: int, decision) -> None:
        """A notice this run recorded already (a retried try) is counted as such; any other is skipped."""
        notice = latest_notices(connection, self.run, self.rule, [key]).get(key)
        if (
            notice
            and (notice.dag_id, notice.run_id) == (self.run.dag_id, self.run.run_id)
            and notice.state
            in (
                SENT,
                UNDELIVERABLE,
            )
        ):
            return self._mark(key, CANDIDATE_STATE[notice.state], notice.outcome, connection)
        reason = "gone" if decision is None else decision.reason or decision.verdict
        self._mark(key, "skipped", f"no longer due: {reason}", connection)

    def _recipient(self, connection, key: int) -> dict:
        spec = self.run.policy.tables[self.rule.table]
        notice = self.rule.notice
        query = statement(
            self.run.engine,
            FETCH_ROWS,
            expanding=("keys",),
            table=self.rule.table,
            columns=[spec.key, spec.email, notice.first_name, notice.locale],
            match=spec.key,
            key=spec.key,
        )
        return dict(connection.execute(query, {"keys": [key]}).mappings().one())

    def _message(self, recipient: dict, address: str, language: str):
        erasure_date = utc_date(add_period(self.run.as_of, self.rule.grace_period))
        settings = self.run.notices
        text = render_notice(
            self.rule.notice, language, recipient[self.rule.notice.first_name], erasure_date, settings.login_url
        )
        return notice_message(
            text,
            sender=settings.sender,
            recipient=address,
            message_id=new_message_id(settings.sender),
            language=language,
        )

    def _mark(self, key: int, state: str, reason: str | None, connection=None) -> None:
        self.counts[state] += 1
        if connection is not None:
            self.selection.mark([key], state, reason, connection)
            return
        with self.run.engine.begin() as own:
            self.selection.mark([key], state, reason, own)


def _would_notify(scratch) -> dict:
    """Notices that would leave (within the per-run limit), and those whose address is unusable."""
    run, rule = scratch.run, scratch.rule
    spec = run.policy.tables[rule.table]
    query = statement(
        run.engine,
        STAGED_EMAILS,
        table=rule.table,
        key=spec.key,
        email=spec.email,
        candidates=run.tables.qualified(run.tables.candidates),
    )
    addresses = scratch.connection.execute(query, {"selection_id": scratch.selection_id}).scalars()
    due = usable = 0
    for address in addresses:
        due += 1
        usable += valid_address(address) is not None
    return {"notices_due": due, "emailed": min(usable, run.notices.max_per_run), "undeliverable": due - usable}


STEPS = {
    "notify": Step(
        "notify",
        notify_inactive,
        _would_notify,
        "notified",
        dry_run_columns=("notices_due", "emailed", "undeliverable"),
    )
}


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

STAGED_EMAILS = """\
{# The addresses of a selection's notices to send: what a dry run checks for deliverability. #}
SELECT t.{{ email | q }} FROM {{ table | q }} t
  JOIN {{ candidates }} c ON c.record_key = t.{{ key | q }}
 WHERE c.selection_id = :selection_id AND c.decision = 'notify'
"""
