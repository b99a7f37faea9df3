"""Step 1 of a rule: the database decides every record worth a look as of the run and stages the
decisions (due, held, invalid, notify) in one statement; no record passes through Python."""

from __future__ import annotations

import json

from sqlalchemy import delete, func, insert, select, update

from lifecycle.decide import DUE, HELD, INVALID, NOTIFY, DecisionStatement
from lifecycle.policy import Rule
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.sql import statement
from lifecycle.step import Step

INVALID_LISTED = 200


def stage_decisions(connection, run: RunContext, rule: Rule, selection_id: int, *, retried: bool = False) -> None:
    """The decision's verdicts, all but 'not_due', into the selection's candidates (STAGE_DECISIONS);
    `retried`: the selection may keep rows of an earlier try, which stay as they are."""
    decision = DecisionStatement(run, rule)
    query = statement(run.engine, STAGE_DECISIONS, r=decision.context, scope="scan", retried=retried)
    connection.execute(query, decision.params | {"selection_id": selection_id})
    if run.engine.dialect.name == "postgresql":
        # The planner must see the staged rows: it would join a million of them as if there were one.
        connection.exec_driver_sql(f"ANALYZE {run.tables.qualified(run.tables.candidates)}")


def selection_counts(connection, run: RunContext, rule: Rule, selection_id: int) -> dict:
    """What the select step reports: records due, held, invalid, to archive, notices, the table's rows,
    and the first invalid records by table and key."""
    c = run.tables.candidates
    rows = connection.execute(
        select(c.c.decision, func.count(), func.count(c.c.retain_until))
        .where(c.c.selection_id == selection_id)
        .group_by(c.c.decision)
    ).all()
    by_decision = {decision: (count, archived) for decision, count, archived in rows}
    counts = {verdict: by_decision.get(verdict, (0, 0))[0] for verdict in (DUE, HELD, INVALID)}
    counts["to_archive"] = by_decision.get(DUE, (0, 0))[1]
    if rule.action == "reactivate":
        counts[NOTIFY] = by_decision.get(NOTIFY, (0, 0))[0]
    counts["table_rows"] = connection.execute(statement(run.engine, COUNT_ROWS, table=rule.table)).scalar_one()
    counts["invalid_records"] = invalid_records(connection, run, rule, selection_id)
    return counts


def invalid_records(connection, run: RunContext, rule: Rule, selection_id: int) -> list[dict]:
    """The selection's first invalid records, by table and key, with the reason (never a value)."""
    c = run.tables.candidates
    invalid = connection.execute(
        select(c.c.record_key, c.c.reason)
        .where(c.c.selection_id == selection_id, c.c.decision == INVALID)
        .order_by(c.c.record_key)
        .limit(INVALID_LISTED)
    ).all()
    return [{"table": rule.table, "key": key, "reason": reason} for key, reason in invalid]


def select_candidates(run: RunContext, rule: Rule) -> dict:
    """Stage the rule's decisions for this run (replacing those of a try interrupted before any
    erasure; a selection the erase step has begun acting on is the run's decision, kept) and count them."""
    selection_id, retried, acted_on = _open_selection(run, rule)
    with run.engine.begin() as connection:
        if not acted_on:
            stage_decisions(connection, run, rule, selection_id, retried=retried)
        counts = selection_counts(connection, run, rule, selection_id)
        stored = {k: v for k, v in counts.items() if k != "invalid_records"}
        connection.execute(
            update(run.tables.selections)
            .where(run.tables.selections.c.id == selection_id)
            .values(table_rows=counts["table_rows"], counts=json.dumps(stored), stage="selected")
        )
    return {"rule": rule.id, "selection_id": selection_id, **counts}


def _open_selection(run: RunContext, rule: Rule) -> tuple[int, bool, bool]:
    """This run's selection for the rule, whether an earlier try opened it, and whether the erase
    step has begun acting on it; a retried step starts it afresh otherwise."""
    selections, candidates, erasures = run.tables.selections, run.tables.candidates, run.tables.erasures
    with run.engine.begin() as connection:
        existing = connection.execute(
            select(selections.c.id).where(
                selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id, selections.c.rule == rule.id
            )
        ).scalar()
        if existing is not None:
            planned = connection.execute(select(func.count()).where(erasures.c.selection_id == existing)).scalar_one()
            if planned:
                return existing, True, True
            connection.execute(
                # Notices emailed or undeliverable stay recorded.
                delete(candidates).where(
                    candidates.c.selection_id == existing, candidates.c.state.not_in(("emailed", "undeliverable"))
                )
            )
            return existing, True, False
        result = connection.execute(
            insert(selections).values(
                dag_id=run.dag_id,
                run_id=run.run_id,
                rule=rule.id,
                table_name=rule.table,
                as_of=run.as_of_naive,
                policy_version=run.policy.version,
                created_at=now_utc_naive(),
                stage="selecting",
            )
        )
        return result.inserted_primary_key[0], False, False


def selection_id_of(run: RunContext, rule: Rule) -> int:
    selections = run.tables.selections
    with run.engine.connect() as connection:
        found = connection.execute(
            select(selections.c.id).where(
                selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id, selections.c.rule == rule.id
            )
        ).scalar()
    if found is None:
        raise LookupError(f"rule {rule.id}: no selection for run {run.run_id}; the select step has not run")
    return found


def record_stage(run: RunContext, rule: Rule, stage: str) -> None:
    """The last step of the rule that completed in this run, for the report."""
    selections = run.tables.selections
    with run.engine.begin() as connection:
        connection.execute(
            update(selections)
            .where(selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id, selections.c.rule == rule.id)
            .values(stage=stage)
        )


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
