"""Answer deadlines of data subjects' requests (GDPR art. 12(3): one month from receipt), for the run
report of a purpose with an `answer_deadlines` section: each open request with its age and deadline as
of the run, flagged "due soon" from `warn_before` the deadline on and "overdue" after it; the standing
kinds (a restriction: a hold until lifted, answered when placed) listed apart, without a deadline.
A request is named by its key and kind only, never by its address.

A deadline is a day, the received day plus the period with month-end clipping (lifecycle.periods): a
request received at any time on 31 January is answered by the end of 28 February (29 in a leap year),
and is overdue from 1 March. Ages are whole days between the received day and the as-of's, in UTC."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

from dateutil.relativedelta import relativedelta

from lifecycle.periods import MalformedValue, add_period, to_utc, utc_date
from lifecycle.policy import AnswerDeadlines, Policy, Rule
from lifecycle.run import RunContext
from lifecycle.sql import statement
from lifecycle.sqlite_functions import canonical

DUE_SOON, OVERDUE, UNDATED = "due soon", "overdue", "no readable received date"


def deadlines_for(policy: Policy, rules: Iterable[Rule]) -> AnswerDeadlines | None:
    """The `answer_deadlines` section of the purpose the rules belong to, if it has one."""
    purpose_ids = {rule.purpose_id for rule in rules}
    return next((p.answer_deadlines for p in policy.purposes if p.id in purpose_ids and p.answer_deadlines), None)


def answer_deadlines(run: RunContext, spec: AnswerDeadlines) -> dict:
    """The report's section: the open requests received by the as-of, oldest first, each with its
    deadline and flag; the standing ones apart; and the count of each flag."""
    # One statement reads the open requests' keys, kinds and received instants, nothing else. Their
    # ages, deadlines and flags are worked out here, with lifecycle.periods' calendar arithmetic itself
    # rather than a copy of it per dialect: the rows are few (a request stays open a month at most,
    # unless it is late, which is what this reports) and the flags only inform the report and the alert.
    query = statement(run.engine, OPEN_REQUESTS, d=spec)
    with run.engine.connect() as connection:
        rows = connection.execute(query, {"open_status": spec.open_value, "as_of": _instant(run)}).all()
    as_of_day = utc_date(run.as_of)
    requests = [_request(key, kind, received, as_of_day) for key, kind, received in rows]
    answerable = [_with_deadline(r, spec, as_of_day) for r in requests if r["kind"] not in spec.standing_kinds]
    flags = [request["flag"] for request in answerable]
    return {
        "table": spec.table,
        "as_of": as_of_day.isoformat(),
        "answer_within": spec.answer_within_text,
        "warn_before": spec.warn_before_text,
        "open": len(answerable),
        "due_soon": flags.count(DUE_SOON),
        "overdue": flags.count(OVERDUE),
        "undated": flags.count(UNDATED),
        "requests": answerable,
        "restrictions_in_force": [r for r in requests if r["kind"] in spec.standing_kinds],
    }


def overdue_requests(section: dict) -> list[dict]:
    """The overdue requests of a report's `answer_deadlines` section."""
    return [request for request in section.get("requests", []) if request.get("flag") == OVERDUE]


def _request(key: object, kind: object, received: object, as_of_day: date) -> dict:
    try:
        instant = to_utc(received)
    except MalformedValue:  # text SQLite cannot read as an instant
        instant = None
    received_day = instant and utc_date(instant)
    return {
        "id": key,
        "kind": str(kind),
        "received": received_day and received_day.isoformat(),
        "age_days": received_day and (as_of_day - received_day).days,
    }


def _with_deadline(request: dict, spec: AnswerDeadlines, as_of_day: date) -> dict:
    if request["received"] is None:
        return request | {"deadline": None, "days_left": None, "flag": UNDATED}
    deadline = _day_plus(date.fromisoformat(request["received"]), spec.answer_within)
    if as_of_day > deadline:
        flag = OVERDUE
    elif _day_plus(as_of_day, spec.warn_before) >= deadline:
        flag = DUE_SOON
    else:
        flag = None
    return request | {"deadline": deadline.isoformat(), "days_left": (deadline - as_of_day).days, "flag": flag}


def _day_plus(day: date, period: relativedelta) -> date:
    return add_period(datetime(day.year, day.month, day.day), period).date()


def _instant(run: RunContext) -> object:
    """The as-of as the database compares instants: canonical UTC text on SQLite, naive UTC elsewhere."""
    return canonical(run.as_of) if run.engine.dialect.name == "sqlite" else run.as_of_naive


# The statement this module runs: a Jinja template (lifecycle.sql), importing include/sql/'s macros.

OPEN_REQUESTS = """\
{# The open requests received by the as-of (and those whose received instant cannot be read, to be
   named as such): key, kind and received instant only, never the address. #}
{% import "decision.sql" as m %}
{% set received = m.ts('t.' ~ (d.received | q)) %}
SELECT t.{{ d.key | q }} AS request_key, t.{{ d.kind | q }} AS kind, t.{{ d.received | q }} AS received
  FROM {{ d.table | q }} t
 WHERE t.{{ d.status_column | q }} = :open_status
   AND ({{ received }} IS NULL OR {{ received }} <= :as_of)
 ORDER BY {{ received }}, t.{{ d.key | q }}
"""
