"""Step 1 of a rule: the database decides every record worth a look as of the run and stages the
decisions (due, held, invalid, notify) in one statement; no record passes through Python. The
staged decisions are the rule's `Selection`: every later step reads, pages and marks them through
it, and nowhere else."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from itertools import pairwise

from sqlalchemy import and_, delete, func, insert, select, update

from lifecycle.decide import DUE, HELD, INVALID, NOTIFY, DecisionStatement
from lifecycle.policy import Rule
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.sql import statement
from lifecycle.step import Step

INVALID_LISTED = 200
# How a try of the select step finds the run's selection of the rule.
NEW, RETRIED, ACTED_ON = "new", "retried", "acted on"


def select_candidates(run: RunContext, rule: Rule) -> dict:
    """Stage the rule's decisions for this run (replacing those of a try interrupted before any
    erasure; a selection the erase step has begun acting on is the run's decision, kept) and count them."""
    selection, found = Selection.open(run, rule)
    with run.engine.begin() as connection:
        if found != ACTED_ON:
            selection.stage(connection, retried=found == RETRIED)
        counts = selection.counts(connection)
        stored = {k: v for k, v in counts.items() if k != "invalid_records"}
        selections = run.tables.selections
        connection.execute(
            update(selections)
            .where(selections.c.id == selection.id)
            .values(table_rows=counts["table_rows"], counts=json.dumps(stored), stage="selected")
        )
    return {"rule": rule.id, "selection_id": selection.id, **counts}


@dataclass(frozen=True)
class KeyRange:
    """The records whose key lies in [key_from, key_to), either end open when None: the share of a
    rule's archive or erase step that one task does when the step is spread over several."""

    key_from: int | None = None
    key_to: int | None = None

    @classmethod
    def of(cls, bounds: list | None) -> KeyRange:
        """From its JSON form, [key_from, key_to]; None: every key."""
        return cls(*bounds) if bounds else cls()

    def bounds(self) -> list[int | None]:
        return [self.key_from, self.key_to]

    def holds(self, column) -> list:
        """The conditions on a key column of a record in the range."""
        low = [] if self.key_from is None else [column >= self.key_from]
        return low + ([] if self.key_to is None else [column < self.key_to])

    def params(self) -> dict:
        """The bound ends, for statements that take :key_from and :key_to where the range names them."""
        return {
            name: value for name, value in zip(("key_from", "key_to"), self.bounds(), strict=True) if value is not None
        }

    @property
    def label(self) -> str:
        low = "first key" if self.key_from is None else f"key {self.key_from}"
        return f"{low} to " + ("last key" if self.key_to is None else f"key {self.key_to} excluded")


EVERY_KEY = KeyRange()


@dataclass(frozen=True)
class Selection:
    """One rule's staged decisions in one run (the tables selections and candidates)."""

    run: RunContext
    rule: Rule
    id: int

    @classmethod
    def of(cls, run: RunContext, rule: Rule) -> Selection:
        found = _selection_id(run, rule)
        if found is None:
            raise LookupError(f"rule {rule.id}: no selection for run {run.run_id}; the select step has not run")
        return cls(run, rule, found)

    @classmethod
    def open(cls, run: RunContext, rule: Rule) -> tuple[Selection, str]:
        """This run's selection for the rule, and how this try finds it: NEW, RETRIED (an earlier try's
        staged decisions are cleared, but for notices already emailed) or ACTED_ON (the erase step has
        begun: the staged decisions are the run's decision, kept)."""
        tables = run.tables
        with run.engine.begin() as connection:
            existing = _selection_id(run, rule, connection)
            if existing is not None:
                erasures = tables.erasures
                if connection.execute(select(func.count()).where(erasures.c.selection_id == existing)).scalar_one():
                    return cls(run, rule, existing), ACTED_ON
                c = tables.candidates
                connection.execute(
                    delete(c).where(c.c.selection_id == existing, c.c.state.not_in(("emailed", "undeliverable")))
                )
                return cls(run, rule, existing), RETRIED
            return cls.create(connection, run, rule, run.run_id), NEW

    @classmethod
    def create(cls, connection, run: RunContext, rule: Rule, run_id: str) -> Selection:
        """A new, empty selection of the rule, recorded under `run_id`."""
        opened = connection.execute(
            insert(run.tables.selections).values(
                dag_id=run.dag_id,
                run_id=run_id,
                rule=rule.id,
                table_name=rule.table,
                as_of=run.as_of_naive,
                policy_version=run.policy.version,
                created_at=now_utc_naive(),
                stage="selecting",
            )
        )
        return cls(run, rule, opened.inserted_primary_key[0])

    def stage(self, connection, *, retried: bool = False) -> None:
        """The decision's verdicts, all but 'not_due', as candidates (STAGE_DECISIONS); `retried`: rows
        an earlier try left stay as they are."""
        run = self.run
        decision = DecisionStatement(run, self.rule)
        query = statement(run.engine, STAGE_DECISIONS, r=decision.context, scope="scan", retried=retried)
        connection.execute(query, decision.params | {"selection_id": self.id})
        if run.engine.dialect.name == "postgresql":
            # The planner must see the staged rows: it would join a million of them as if there were one.
            connection.exec_driver_sql(f"ANALYZE {run.tables.qualified(run.tables.candidates)}")

    def counts(self, connection) -> dict:
        """What the select step reports: records due, held, invalid, to archive, notices, the table's
        rows, and the first invalid records by table and key."""
        c = self._candidates
        rows = connection.execute(
            select(c.c.decision, func.count(), func.count(c.c.retain_until)).where(self._of()).group_by(c.c.decision)
        ).all()
        by_decision = {decision: (count, archived) for decision, count, archived in rows}
        counts = {verdict: by_decision.get(verdict, (0, 0))[0] for verdict in (DUE, HELD, INVALID)}
        counts["to_archive"] = by_decision.get(DUE, (0, 0))[1]
        if self.rule.action == "reactivate":
            counts[NOTIFY] = by_decision.get(NOTIFY, (0, 0))[0]
        counts["table_rows"] = connection.execute(
            statement(self.run.engine, COUNT_ROWS, table=self.rule.table)
        ).scalar_one()
        counts["invalid_records"] = self.invalid_records(connection)
        return counts

    def invalid_records(self, connection) -> list[dict]:
        """The first invalid records, by table and key, with the reason (never a value)."""
        c = self._candidates
        invalid = connection.execute(
            select(c.c.record_key, c.c.reason)
            .where(self._of(c.c.decision == INVALID))
            .order_by(c.c.record_key)
            .limit(INVALID_LISTED)
        ).all()
        return [{"table": self.rule.table, "key": key, "reason": reason} for key, reason in invalid]

    @staticmethod
    def record_stage(run: RunContext, rule: Rule, stage: str) -> None:
        """The last step of the rule that completed in this run, for the report."""
        selections = run.tables.selections
        with run.engine.begin() as connection:
            connection.execute(
                update(selections)
                .where(selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id)
                .where(selections.c.rule == rule.id)
                .values(stage=stage)
            )

    def table_rows(self) -> int:
        """The rule's table's rows when the selection was staged."""
        selections = self.run.tables.selections
        with self.run.engine.connect() as connection:
            found = connection.execute(select(selections.c.table_rows).where(selections.c.id == self.id)).scalar()
        return found or 0

    def acted_on(self, connection) -> int:
        """How many staged decisions a step acts on: records due, notices to send (as CANDIDATES_SUMMARY)."""
        return connection.execute(select(func.count()).where(self._acted_on())).scalar_one()

    def sample(self, size: int) -> list[int]:
        """The first keys of the records the rule would act on, for an operator to look at."""
        c = self._candidates
        with self.run.engine.connect() as connection:
            return list(
                connection.execute(
                    select(c.c.record_key).where(self._acted_on()).order_by(c.c.record_key).limit(size)
                ).scalars()
            )

    def pending(self, decision: str, after: int | None, limit: int) -> list[int]:
        """A page of the keys of one decision not acted on yet, in key order (after `after`, if given)."""
        c = self._candidates
        later = () if after is None else (c.c.record_key > after,)
        query = (
            select(c.c.record_key)
            .where(self._of(c.c.decision == decision, c.c.state == "pending", *later))
            .order_by(c.c.record_key)
            .limit(limit)
        )
        with self.run.engine.connect() as connection:
            return list(connection.execute(query).scalars())

    def pending_due_in(self, key_from: int, key_to: int):
        """The keys of the due candidates of a key range not left in place: a subquery."""
        c = self._candidates
        in_range = (c.c.record_key >= key_from, c.c.record_key < key_to)
        return select(c.c.record_key).where(self._of(c.c.decision == DUE, c.c.state == "pending", *in_range))

    def retain_dates(self, connection, key_range: KeyRange = EVERY_KEY) -> list[date]:
        """The retain_until dates of the due candidates still to act on, in order."""
        c = self._candidates
        query = select(c.c.retain_until).where(
            self._of(
                c.c.decision == DUE,
                c.c.state == "pending",
                c.c.retain_until.is_not(None),
                *key_range.holds(c.c.record_key),
            )
        )
        return list(connection.execute(query.distinct().order_by(c.c.retain_until)).scalars())

    def range_starts(self, connection, size: int, key_range: KeyRange = EVERY_KEY) -> list[int]:
        """The first key of every `size` due candidates of the key range, in key order."""
        c = self._candidates
        position = func.row_number().over(order_by=c.c.record_key).label("position")
        due = select(c.c.record_key, position).where(self._of(c.c.decision == DUE, *key_range.holds(c.c.record_key)))
        due = due.subquery()
        query = select(due.c.record_key).where((due.c.position - 1) % size == 0).order_by(due.c.record_key)
        return list(connection.execute(query).scalars())

    def task_ranges(self, rows: int) -> list[KeyRange]:
        """The due candidates cut into key ranges of at most `rows` each, together covering every key:
        the shares of tasks that archive and erase them side by side."""
        with self.run.engine.connect() as connection:
            starts = self.range_starts(connection, rows)[1:]
        return [KeyRange(low, high) for low, high in pairwise([None, *starts, None])]

    def last_due_key(self, connection, key_range: KeyRange = EVERY_KEY) -> int | None:
        c = self._candidates
        due = self._of(c.c.decision == DUE, *key_range.holds(c.c.record_key))
        return connection.execute(select(func.max(c.c.record_key)).where(due)).scalar_one()

    def mark(self, keys: list[int], state: str, reason: str | None, connection) -> None:
        """Record what became of staged decisions: a notice emailed, a record left in place and why."""
        c = self._candidates
        connection.execute(
            update(c).where(self._of(c.c.record_key.in_(keys))).values(state=state, reason=(reason or "")[:120] or None)
        )

    def left_in_place(
        self, connection, decisions: tuple[str, ...] = (DUE, NOTIFY), key_range: KeyRange = EVERY_KEY
    ) -> dict[str, int]:
        """Records due and notices to send (or those of `decisions`) the steps left in place (skipped
        or failed), by reason."""
        c = self._candidates
        left = (c.c.decision.in_(decisions), c.c.state.in_(("skipped", "failed")), *key_range.holds(c.c.record_key))
        query = select(c.c.reason, func.count()).where(self._of(*left))
        return dict(connection.execute(query.group_by(c.c.reason)).all())

    def states(self, connection, decision: str) -> list[tuple[str, str | None, int]]:
        """(state, reason, how many) of one decision's candidates."""
        c = self._candidates
        query = select(c.c.state, c.c.reason, func.count()).where(self._of(c.c.decision == decision))
        return connection.execute(query.group_by(c.c.state, c.c.reason)).all()

    @property
    def _candidates(self):
        return self.run.tables.candidates

    def _of(self, *conditions):
        return and_(self._candidates.c.selection_id == self.id, *conditions)

    def _acted_on(self):
        c = self._candidates
        return self._of(c.c.decision.in_((DUE, NOTIFY)))


def _selection_id(run: RunContext, rule: Rule, connection=None) -> int | None:
    selections = run.tables.selections
    query = select(selections.c.id).where(
        selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id, selections.c.rule == rule.id
    )
    if connection is not None:
        return connection.execute(query).scalar()
    with run.engine.connect() as own:
        return own.execute(query).scalar()


def _would_select(scratch) -> dict:
    return scratch.counts


STEPS = {"select": Step("select", select_candidates, _would_select, "selected")}


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

STAGE_DECISIONS = """\
{# The select step: stage the rule's decisions (all but 'not_due') for a selection in one
   statement; `retried`: a record an earlier try already acted on (emailed) keeps its row. #}
{% import "decision.sql" as m %}
INSERT INTO {{ r.candidates }}
       (selection_id, record_key, decision, reason, anchor_epoch, due_epoch, retain_until, state)
SELECT :selection_id, x.record_key, x.verdict, x.reason, x.anchor_epoch, x.due_epoch, x.retain_until, 'pending'
  FROM ({{ m.verdicts(r, scope) }}) x
 WHERE x.verdict <> 'not_due'
{% if retried %}
   AND NOT EXISTS (SELECT 1 FROM {{ r.candidates }} kept
                    WHERE kept.selection_id = :selection_id AND kept.record_key = x.record_key)
{% endif %}
"""

COUNT_ROWS = """\
SELECT COUNT(*) FROM {{ table | q }}
"""
