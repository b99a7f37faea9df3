"""Step 2 of a rule: the Great Expectations gate on the staged candidates, in the database.
Nothing of the rule is archived, erased or sent unless it passes."""

from __future__ import annotations

import math

from sqlalchemy import select

from lifecycle.periods import epoch_seconds
from lifecycle.policy import Rule
from lifecycle.run import RunContext
from lifecycle.select import selection_id_of
from lifecycle.sql import render


def volume_limit(rule: Rule, table_rows: int) -> int:
    """The most candidates one run may act on without approval (POLICY.md, volume safeguard)."""
    ceiling = rule.volume_ceiling
    return max(ceiling.count, math.floor(ceiling.share * table_rows))


def candidate_expectations(rule: Rule, as_of_epoch: int, limit: int | None) -> list[dict]:
    expectations = [
        {"type": "expect_column_values_to_be_unique", "column": "record_key"},
        {"type": "expect_column_values_to_not_be_null", "column": "anchor_epoch"},
        {"type": "expect_column_values_to_not_be_null", "column": "due_epoch"},
        {"type": "expect_column_values_to_be_between", "column": "anchor_epoch", "max_value": as_of_epoch},
        # The rule, checked again: every candidate's anchor + period is on or before as-of.
        {"type": "expect_column_values_to_be_between", "column": "due_epoch", "max_value": as_of_epoch},
        {
            "type": "expect_column_pair_values_a_to_be_greater_than_b",
            "column_A": "due_epoch",
            "column_B": "anchor_epoch",
            "or_equal": True,
        },
    ]
    if limit is not None:
        expectations.append({"type": "expect_table_row_count_to_be_between", "min_value": 0, "max_value": limit})
    return expectations


def gate_candidates(run: RunContext, rule: Rule) -> dict:
    from lifecycle.gates import validate_sql

    selection_id = selection_id_of(run, rule)
    selections = run.tables.selections
    with run.engine.connect() as connection:
        table_rows = connection.execute(
            select(selections.c.table_rows).where(selections.c.id == selection_id)
        ).scalar_one()
    limit = None if run.volume_approved else volume_limit(rule, table_rows or 0)
    query = render(
        run.engine,
        "gate_candidates.sql",
        candidates=run.tables.qualified(run.tables.candidates),
        selection_id=selection_id,
    )
    summary = validate_sql(
        run.engine_url,
        query,
        candidate_expectations(rule, epoch_seconds(run.as_of), limit),
        gate=f"{rule.id}/candidates",
        artifact_path=run.artifact_path(rule, "gate-candidates.json"),
    )
    return {"rule": rule.id, "passed": bool(summary.get("success")), "volume_limit": limit}
