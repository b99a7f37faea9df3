"""A rule's decision on one record: due, held, invalid or not due, as of an instant.

The database preselects (include/sql/select_candidates.sql); this module decides exactly, with
calendar arithmetic, and names what made a record undecidable by table and column only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from lifecycle.periods import MalformedValue, add_period, latest_due_anchor, to_utc, utc_date
from lifecycle.policy import ColumnRef, Policy, Rule

DUE, HELD, INVALID, NOT_DUE = "due", "held", "invalid", "not_due"


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
    anchor, due_at = _anchor_and_due(rule, values)
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
    return None


def _anchor_and_due(rule: Rule, values: dict) -> tuple[datetime | None, datetime | None]:
    for window in rule.windows:
        present = [values[ref] for ref in window.columns if values[ref] is not None]
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


def query_parameters(reading: RuleReading, as_of: datetime, dialect: str, today: date) -> dict:
    """Bound values for select_candidates.sql: one cutoff per window, the suspect threshold, holds."""
    naive = _naive_utc
    params = {f"cutoff_{i}": naive(latest_due_anchor(as_of, w.period)) for i, w in enumerate(reading.rule.windows)}
    # SQLite compares timestamps as text; a day's margin keeps the preselection a superset.
    margin = timedelta(days=1) if dialect == "sqlite" else timedelta(0)
    params["suspect_after"] = naive(as_of - margin)
    params["today"] = today
    params["hold_table"] = reading.rule.table
    return params


def _naive_utc(instant: datetime) -> datetime:
    return instant.replace(tzinfo=None) if instant.tzinfo is None else to_utc(instant).replace(tzinfo=None)
