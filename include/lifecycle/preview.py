"""A dry run: each step of a rule reports what it would do (its `would_do`, lifecycle.step). The
select step runs the real select statement once, into a temporary table inside a transaction then
rolled back (no staged decision, archive, erasure, email or audit event remains), and asks every step
what it would do of that scratch selection; the later steps report it. The same as-of and policy give
the same decisions as the real run."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

from lifecycle.decide import DUE, NOTIFY
from lifecycle.gating import Volume, volume_limit
from lifecycle.policy import Rule
from lifecycle.run import RunContext
from lifecycle.select import Selection
from lifecycle.sql import statement
from lifecycle.step import Step


def preview_step(run: RunContext, rule: Rule, step: Step, selected: dict | None = None) -> dict:
    """What `step` would do in this run, as the counts a report shows. The select step finds what
    every step would do; the later steps report it from `selected`."""
    if step.would_do is None:
        return step.act(run, rule) | {"dry_run": True}
    if step.name == "select":
        would_do = preview_rule(run, rule)
        return {"rule": rule.id, "dry_run": True, **would_do["select"], "would_do": would_do}
    if not selected or "would_do" not in selected:
        raise LookupError(f"rule {rule.id}: a dry run's {step.name} step reports what its select step found; none")
    return {"rule": rule.id, "dry_run": True, **selected["would_do"][step.name]}


def preview_rule(run: RunContext, rule: Rule) -> dict[str, dict]:
    """What each step of the rule would do, by step name: the select step's statement run once, in a
    transaction rolled back."""
    from lifecycle.pipeline import step_named, steps_for

    scratch_run = replace(run)
    scratch_run.tables = run.tables.with_scratch_candidates()
    with run.engine.connect() as connection:
        transaction = connection.begin()
        try:
            scratch_run.tables.candidates.create(connection)
            scratch = ScratchSelection(connection, _stage(connection, scratch_run, rule))
            for name in steps_for(rule):
                scratch.would_do[name] = step_named(name).would_do(scratch)
            return scratch.would_do
        finally:
            transaction.rollback()
            _drop_scratch(connection, scratch_run.tables.candidates.name)


def _drop_scratch(connection, name: str) -> None:
    """MariaDB and SQLite create a temporary table outside the transaction: it outlives the rollback."""
    temporary = "TEMPORARY " if connection.dialect.name == "mysql" else ""
    connection.exec_driver_sql(f"DROP {temporary}TABLE IF EXISTS {name}")
    connection.commit()


def _stage(connection, run: RunContext, rule: Rule) -> Selection:
    selection = Selection.create(connection, run, rule, f"{run.run_id} (dry run)")
    selection.stage(connection)
    return selection


class ScratchSelection:
    """The rolled-back selection a dry run's steps read, with what its select step would report and
    what the steps before have found they would do (by step name)."""

    def __init__(self, connection, selection: Selection):
        self.connection = connection
        self.selection = selection
        self.run = selection.run
        self.rule = selection.rule
        self.selection_id = selection.id
        self.would_do: dict[str, dict] = {}

    @cached_property
    def counts(self) -> dict:
        return self.selection.counts(self.connection)

    @cached_property
    def volume(self) -> Volume:
        acted_on = self.counts[DUE] + self.counts.get(NOTIFY, 0)
        table_rows = self.counts["table_rows"]
        return Volume(acted_on, table_rows, volume_limit(self.rule, table_rows))

    def rows_of_due(self, table: str, column: str, retain_until=None) -> int:
        """Rows of `table` whose `column` is a due candidate's key (of one retain_until, if given)."""
        query = statement(
            self.run.engine,
            COUNT_STAGED_ROWS,
            table=table,
            column=column,
            candidates=self.run.tables.qualified(self.run.tables.candidates),
            by_retain_until=retain_until is not None,
        )
        params = {"selection_id": self.selection_id, "retain_until": retain_until}
        return self.connection.execute(query, params).scalar_one()


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

COUNT_STAGED_ROWS = """\
{# The rows of a table whose `column` (its key, or a bundle member's link to its smicer) is a due
   candidate of a selection, of one retain_until if asked: what a dry run would archive or erase. #}
SELECT COUNT(*) FROM {{ table | q }} x
 WHERE x.{{ column | q }} IN (SELECT c.record_key FROM {{ candidates }} c
                               WHERE c.selection_id = :selection_id AND c.decision = 'due'
{% if by_retain_until %}
                                 AND c.retain_until = :retain_until
{% endif %}
                             )
"""
