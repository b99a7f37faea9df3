"""A rule's decision on its records: due, held, invalid, a notice to send, or not due, as of an instant.

The database decides, set-based (include/sql/decision.sql's `verdicts`, bound by `DecisionStatement`); `decide()`
is the reference it must agree with record by record (tests/test_decision_differential.py): the
rule in plain Python, with calendar arithmetic. Both name what made a record undecidable by table
and column only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from dateutil.relativedelta import relativedelta

from lifecycle.periods import MalformedValue, add_period, due_anchors, to_utc, utc_date
from lifecycle.policy import ColumnRef, Filter, Policy, Rule
from lifecycle.sql import statement

DUE, HELD, INVALID, NOTIFY, NOT_DUE = "due", "held", "invalid", "notify", "not_due"


@dataclass(frozen=True)
class Decision:
    record_key: int
    verdict: str
    reason: str | None = None
    anchor: datetime | None = None
    due_at: datetime | None = None
    retain_until: date | None = None

    @property
    def needs_archive(self) -> bool:
        return self.retain_until is not None


def label(ref: ColumnRef) -> str:
    return f"{ref.alias}_{ref.column}"


@dataclass(frozen=True)
class RuleReading:
    """What a rule reads of a record: its selected columns and which of them are event timestamps."""

    rule: Rule
    selected: tuple[ColumnRef, ...]
    events: tuple[ColumnRef, ...]
    chronology: tuple[tuple[str, str], ...]
    bundle_events: dict[str, tuple[str, ...]]  # member table -> its event timestamps

    @classmethod
    def of(cls, policy: Policy, rule: Rule) -> RuleReading:
        spec = policy.tables[rule.table]
        selected = list(rule.read_columns())
        bundle_events: dict[str, tuple[str, ...]] = {}
        if rule.bundle:
            selected += [ColumnRef(rule.table, column, "t") for column in spec.event_timestamps]
            for member in policy.bundles[rule.bundle].members:
                bundle_events[member.table] = policy.tables[member.table].event_timestamps
        selected += [ColumnRef(rule.table, column, "t") for pair in spec.chronology for column in pair]
        selected = tuple(dict.fromkeys(selected))
        events = tuple(ref for ref in selected if ref.column in policy.tables[ref.table].event_timestamps)
        return cls(rule, selected, events, spec.chronology, bundle_events)


def decide(
    reading: RuleReading,
    row: dict,
    as_of: datetime,
    bundle_latest: dict[str, object] | None = None,
) -> Decision:
    """The verdict on one selected row; `bundle_latest` maps member table.column to its latest value."""
    key = int(row["record_key"])
    try:
        values = {ref: to_utc(row[label(ref)]) for ref in reading.selected}
        latest = {name: to_utc(value) for name, value in (bundle_latest or {}).items()}
    except MalformedValue:
        return Decision(key, INVALID, "malformed timestamp")
    problem = _undecidable(reading, values, latest, as_of)
    if problem:
        return Decision(key, INVALID, problem)
    rule = reading.rule
    anchor, due_at = _anchor_and_due(rule, values, as_of)
    if anchor is None:
        verdict = INVALID if rule.without_anchor == "invalid" else NOT_DUE
        return Decision(key, verdict, "no anchor" if verdict == INVALID else None)
    if due_at > as_of:
        return Decision(key, NOT_DUE, anchor=anchor, due_at=due_at)
    if row.get("held"):
        return Decision(key, HELD, "hold", anchor, due_at)
    return Decision(key, DUE, None, anchor, due_at, _retain_until(rule, values, as_of))


def _undecidable(reading: RuleReading, values: dict, latest: dict, as_of: datetime) -> str | None:
    for ref in reading.events:
        if values[ref] is not None and values[ref] > as_of:
            return f"timestamp after as-of: {ref.table}.{ref.column}"
    for name, value in latest.items():
        if value is not None and value > as_of:
            return f"bundle timestamp after as-of: {name}"
    table = reading.rule.table
    for earlier, later in reading.chronology:
        first = values[ColumnRef(table, earlier, "t")]
        second = values[ColumnRef(table, later, "t")]
        if first is not None and second is not None and second < first:
            return f"{table}.{later} before {table}.{earlier}"
    archive = reading.rule.archive
    if archive and archive.source and values[archive.source] is None:
        return "no retain_until source"
    return None


def _anchor_and_due(rule: Rule, values: dict, as_of: datetime) -> tuple[datetime | None, datetime | None]:
    for window in rule.windows:
        present = [values[ref] for ref in window.columns if values[ref] is not None] if window.columns else [as_of]
        if present:
            anchor = present[0] if window.pick == "first" else max(present)
            return anchor, add_period(anchor, window.period)
    return None, None


def _retain_until(rule: Rule, values: dict, as_of: datetime) -> date | None:
    """The archive copy's retain_until, or None when no copy is to be written (already past)."""
    if rule.archive is None:
        return None
    start = as_of if rule.archive.source is None else values[rule.archive.source]
    retain_until = utc_date(add_period(start, rule.archive.retain_for))
    return retain_until if retain_until > utc_date(as_of) else None


class DecisionStatement:
    """The decision of one rule in one run: the context of decision.sql's macros and the values they bind."""

    def __init__(self, run, rule: Rule):
        policy = run.policy
        reading = RuleReading.of(policy, rule)
        holds, self.params = holds_context(policy, run.tables, rule.table, enabled=rule.holds)
        self.context = {
            "table": rule.table,
            "key": policy.tables[rule.table].key,
            "parent": rule.parent,
            "filters": self._filters(rule.filters, run.subject_email),
            "selected": reading.selected,
            "events": reading.events,
            "bundle_events": _bundle_events(policy, rule),
            "chronology": reading.chronology,
            "windows": [_window(w) for w in rule.windows],
            "anchor_columns": [ref for w in rule.windows for ref in w.columns],
            "anchorless_is_invalid": rule.without_anchor == "invalid",
            "archive": rule.archive and {"source": rule.archive.source, "period": _period(rule.archive.retain_for)},
            "holds": holds,
            "candidates": run.tables.qualified(run.tables.candidates),
            "reactivation": rule.action == "reactivate"
            and {
                "notices": run.tables.qualified(run.tables.reactivation_notices),
                "grace": _period(rule.grace_period),
            },
        }
        self._bind_instants(run, rule)
        self.params |= {"today": run.today, "rule_id": rule.id}

    def _bind_instants(self, run, rule: Rule) -> None:
        """The anchors due under each window (and the end of the reactivation's grace period), as
        intervals of instants; the as-of; the retain_until counted from the as-of."""
        dialect, as_of = run.engine.dialect.name, run.as_of
        instant, day = _instant_binder(dialect), _date_binder(dialect)
        due = {f"window_{i}": due_anchors(as_of, w.period) for i, w in enumerate(rule.windows)}
        if rule.grace_period is not None:
            due["grace"] = due_anchors(as_of, rule.grace_period)
            self.context["reactivation"]["intervals"] = len(due["grace"])
        for i, window in enumerate(self.context["windows"]):
            window |= {"name": f"window_{i}", "intervals": len(due[f"window_{i}"])}
        for name, intervals in due.items():
            self.params[f"{name}_last"] = instant(intervals[-1][1])
            for j, (start, end) in enumerate(intervals):
                self.params |= {f"{name}_{j}_from": start and instant(start), f"{name}_{j}_to": instant(end)}
        self.params |= {"as_of": instant(as_of), "as_of_date": day(utc_date(as_of))}
        if rule.archive and rule.archive.source is None:
            retain_until = _retain_until(rule, {}, as_of)
            self.params["retain_until_from_as_of"] = retain_until and day(retain_until)

    def _filters(self, filters: tuple[Filter, ...], subject_email: str | None) -> list[dict]:
        """The rule's filters as decision.sql's `condition` renders them, their values bound (a
        `subject` filter: the request's address)."""
        rendered = []
        for i, flt in enumerate(filters):
            param = f"filter_{i}"
            if flt.op in ("eq", "subject"):
                self.params[param] = flt.value if flt.op == "eq" else subject_email
            rendered.append({"alias": flt.column.alias, "column": flt.column.column, "op": flt.op, "param": param})
        return rendered


def _window(window) -> dict:
    columns = window.columns
    rotations = [columns[i:] + columns[:i] for i in range(len(columns))]
    return {"columns": columns, "pick": window.pick, "rotations": rotations, "period": _period(window.period)}


def _period(period: relativedelta) -> dict:
    """A period as the databases add it: whole months (years included), then days."""
    normalized = period.normalized()
    months, days = normalized.years * 12 + normalized.months, normalized.days
    return {"months": months, "days": days, "text": f"P{months}M{days}D"}


def _bundle_events(policy: Policy, rule: Rule) -> list[dict]:
    if not rule.bundle:
        return []
    return [
        {"table": member.table, "link": member.link, "column": column}
        for member in policy.bundles[rule.bundle].members
        for column in policy.tables[member.table].event_timestamps
    ]


def holds_context(policy: Policy, tables, table: str | None = None, *, enabled: bool = True) -> tuple[dict, dict]:
    """What holds a record of `table` (decision.sql's held_any; without a table, the held emails only)
    and the values it binds but `today`: its email column, the bundle it belongs to as root or member
    (a row of a bundle is held when its smicer or any row of the bundle is), the open restriction
    requests and the legal holds."""
    restriction = policy.restriction_holds
    filters = [
        {"alias": "r", "column": flt.column.column, "op": flt.op, "param": f"restriction_{i}"}
        for i, flt in enumerate(restriction.filters)
    ]
    params = {f["param"]: flt.value for f, flt in zip(filters, restriction.filters, strict=True) if flt.op == "eq"}
    context = {
        "enabled": enabled,
        "legal_holds": tables.qualified(tables.legal_holds),
        "restriction": {"table": restriction.table, "email": restriction.email, "filters": filters},
    }
    if table is None:
        return context, params
    context |= {"email": policy.tables[table].email, "bundle": _bundle_of(policy, table)}
    return context, params | {"hold_table": table}


def _bundle_of(policy: Policy, table: str) -> dict | None:
    """The bundle a row of `table` belongs to, as its root or as a member (`link`: the member's column
    naming the root), or None."""
    membership = policy.bundle_membership(table)
    bundle = membership[0] if membership else next((b for b in policy.bundles.values() if b.root == table), None)
    if bundle is None:
        return None
    root = policy.tables[bundle.root]
    return {
        "table": root.name,
        "key": root.key,
        "email": root.email,
        "link": membership[1].link if membership else None,
        "members": [{"table": m.table, "key": policy.tables[m.table].key, "link": m.link} for m in bundle.members],
    }


def _instant_binder(dialect: str):
    """SQLite compares instants as canonical UTC text (lifecycle.sqlite_functions); the others as naive UTC."""
    if dialect == "sqlite":
        from lifecycle.sqlite_functions import canonical

        return canonical
    return lambda instant: to_utc(instant).replace(tzinfo=None)


def _date_binder(dialect: str):
    return (lambda day: day.isoformat()) if dialect == "sqlite" else (lambda day: day)


def decide_keys(connection, run, rule: Rule, keys: list[int]) -> list[Decision]:
    """The database's verdicts on the given records, inside the caller's transaction, which holds
    them locked where the database can, so that they stay true until it commits."""
    decision = DecisionStatement(run, rule)
    lock = statement(run.engine, LOCK_RECORDS, expanding=("keys",), r=decision.context, scope="keys")
    connection.execute(lock, {"keys": keys})
    query = statement(run.engine, VERDICTS, expanding=("keys",), r=decision.context, scope="keys")
    rows = connection.execute(query, decision.params | {"keys": keys}).mappings()
    return [_decision_of(row) for row in rows]


def _decision_of(row) -> Decision:
    acted_on = row["due_epoch"] is not None
    due_at = datetime.fromtimestamp(row["due_epoch"], UTC) if acted_on else None
    anchor = to_utc(row["anchor"]) if acted_on else None
    retain_until = row["retain_until"]
    if isinstance(retain_until, str):
        retain_until = date.fromisoformat(retain_until)
    return Decision(row["record_key"], row["verdict"], row["reason"], anchor, due_at, retain_until)


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

# A rule's verdicts on its records (decision.sql): `scope` 'all', 'scan', 'keys' or 'staged'.
VERDICTS = """\
{% import "decision.sql" as m %}
{{ m.verdicts(r, scope) }}
"""

LOCK_RECORDS = """\
{# Lock a rule's records for the caller's transaction (given keys, or the selection's pending due
   candidates in a key range), so that what is decided next stays true until it commits. #}
{% import "decision.sql" as m %}
{% macro records(r, scope, what) -%}
SELECT {{ what }} FROM {{ r.table | q }} t
 WHERE t.{{ r.key | q }} IN {% if scope == 'keys' %}:keys{% else %}({{ m.staged_range(r.candidates) }}){% endif %}
{%- endmacro %}
{% if dialect == 'postgresql' %}
SELECT COUNT(*) FROM ({{ records(r, scope, 't.' ~ (r.key | q)) }} FOR UPDATE OF t) locked
{% elif dialect == 'mysql' %}
{{ records(r, scope, 'COUNT(*)') }} FOR UPDATE
{% else %}
{{ records(r, scope, 'COUNT(*)') }}
{% endif %}
"""
