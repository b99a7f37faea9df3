"""Steps 2 and 3 of a rule: the Great Expectations gate on the staged candidates, summed up by the database,
then the volume safeguard. Nothing of the rule is archived, erased or sent unless both pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import func, select

from lifecycle.expectations import GateFailed
from lifecycle.periods import epoch_seconds
from lifecycle.policy import Rule
from lifecycle.run import RunContext
from lifecycle.select import selection_id_of
from lifecycle.sql import statement
from lifecycle.step import Step


def volume_limit(rule: Rule, table_rows: int) -> int:
    """The most candidates one run may act on without approval (POLICY.md, volume safeguard)."""
    ceiling = rule.volume_ceiling
    return max(ceiling.count, math.floor(ceiling.share * table_rows))


@dataclass(frozen=True)
class Volume:
    """A rule's candidates in one run (records to act on, notices to send) against its ceiling."""

    candidates: int
    table_rows: int
    limit: int

    @property
    def over(self) -> bool:
        return self.candidates > self.limit

    def needs_approval(self, volume_approved: bool) -> bool:
        return self.over and not volume_approved

    def as_dict(self) -> dict:
        return {
            "candidates": self.candidates,
            "table_rows": self.table_rows,
            "volume_limit": self.limit,
            "over_volume": self.over,
        }


def candidate_expectations(as_of_epoch: int) -> list[dict]:
    """The gate's expectations on the summary of the staged candidates (CANDIDATES_SUMMARY)."""
    nothing = {"type": "expect_column_values_to_be_between", "min_value": 0, "max_value": 0}
    return [
        {"type": "expect_column_pair_values_to_be_equal", "column_A": "candidates", "column_B": "distinct_keys"},
        nothing | {"column": "missing_anchors"},
        nothing | {"column": "missing_due_instants"},
        nothing | {"column": "due_before_anchor"},
        {"type": "expect_column_values_to_be_between", "column": "latest_anchor", "max_value": as_of_epoch},
        # The rule, checked again: every candidate's anchor + period is on or before as-of.
        {"type": "expect_column_values_to_be_between", "column": "latest_due", "max_value": as_of_epoch},
    ]


def check_candidates(connection, run: RunContext, rule: Rule, selection_id: int) -> bool:
    """Great Expectations on the staged candidates, summed up by the database; raises GateFailed."""
    import pandas

    from lifecycle.expectations import validate_frame

    query = statement(run.engine, CANDIDATES_SUMMARY, candidates=run.tables.qualified(run.tables.candidates))
    summary = connection.execute(query, {"selection_id": selection_id}).mappings().one()
    validation = validate_frame(
        pandas.DataFrame([dict(summary)], dtype="Int64"),
        candidate_expectations(epoch_seconds(run.as_of)),
        gate=f"{rule.id}/candidates",
        artifact_path=run.artifact_path(rule, "gate-candidates.json"),
    )
    return bool(validation.get("success"))


def gate_candidates(run: RunContext, rule: Rule) -> dict:
    with run.engine.connect() as connection:
        passed = check_candidates(connection, run, rule, selection_id_of(run, rule))
    return {"rule": rule.id, "passed": passed, **staged_volume(run, rule).as_dict()}


def staged_volume(run: RunContext, rule: Rule) -> Volume:
    selection_id = selection_id_of(run, rule)
    selections, candidates = run.tables.selections, run.tables.candidates
    with run.engine.connect() as connection:
        table_rows = connection.execute(
            select(selections.c.table_rows).where(selections.c.id == selection_id)
        ).scalar_one()
        staged = connection.execute(
            select(func.count()).select_from(candidates).where(_acted_on(candidates, selection_id))
        ).scalar_one()
    return Volume(staged, table_rows or 0, volume_limit(rule, table_rows or 0))


def staged_sample(run: RunContext, rule: Rule, size: int) -> list[int]:
    """The first keys of the records the rule would act on, for an operator to look at."""
    candidates = run.tables.candidates
    query = (
        select(candidates.c.record_key)
        .where(_acted_on(candidates, selection_id_of(run, rule)))
        .order_by(candidates.c.record_key)
        .limit(size)
    )
    with run.engine.connect() as connection:
        return list(connection.execute(query).scalars())


def _acted_on(candidates, selection_id: int):
    """The staged candidates a rule acts on: records due, notices to send (as CANDIDATES_SUMMARY)."""
    return (candidates.c.selection_id == selection_id) & candidates.c.decision.in_(("due", "notify"))


def require_volume_approval(run: RunContext, rule: Rule) -> dict:
    """Step 3: above its volume ceiling, a rule acts only in a run approved for volume."""
    volume = staged_volume(run, rule)
    if volume.needs_approval(run.volume_approved):
        raise GateFailed(
            f"{rule.id}/volume",
            [
                {
                    "expectation": f"at most {volume.limit} candidates without approval (volume ceiling)",
                    "column": None,
                    "observed_value": volume.candidates,
                    "unexpected_count": None,
                    "element_count": volume.table_rows,
                    "error": None,
                }
            ],
        )
    return {"rule": rule.id, "approval": "approved by parameter" if volume.over else "not needed", **volume.as_dict()}


def _would_gate(scratch) -> dict:
    passed = check_candidates(scratch.connection, scratch.run, scratch.rule, scratch.selection_id)
    return {"passed": passed, **scratch.volume.as_dict()}


def _would_approve(scratch) -> dict:
    volume = scratch.volume
    asked = volume.needs_approval(scratch.run.volume_approved)
    return {"approval": "would be asked (above the ceiling)" if asked else "not needed", **volume.as_dict()}


STEPS = {
    "gate": Step("gate", gate_candidates, _would_gate, "gated"),
    "approve": Step("approve", require_volume_approval, _would_approve, "approved"),
}


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

CANDIDATES_SUMMARY = """\
{# What the Great Expectations gate checks of the staged candidates one selection acts on (records
   due, notices to send), summed up by the database in one row: keys unique, every anchor and due
   instant present, every due instant on or after its anchor, the latest of each on or before as-of. #}
SELECT COUNT(*) AS candidates,
       COUNT(DISTINCT record_key) AS distinct_keys,
       COALESCE(SUM(CASE WHEN anchor_epoch IS NULL THEN 1 ELSE 0 END), 0) AS missing_anchors,
       COALESCE(SUM(CASE WHEN due_epoch IS NULL THEN 1 ELSE 0 END), 0) AS missing_due_instants,
       COALESCE(SUM(CASE WHEN due_epoch < anchor_epoch THEN 1 ELSE 0 END), 0) AS due_before_anchor,
       MAX(anchor_epoch) AS latest_anchor,
       MAX(due_epoch) AS latest_due
  FROM {{ candidates }}
 WHERE selection_id = :selection_id AND decision IN ('due', 'notify')
"""
