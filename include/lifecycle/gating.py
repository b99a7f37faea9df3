"""Steps 2 and 3 of a rule: the Great Expectations gate on the staged candidates, summed up by the database,
then the volume safeguard. Nothing of the rule is archived, erased or sent unless both pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lifecycle.expectations import GateFailed
from lifecycle.periods import epoch_seconds
from lifecycle.policy import Rule
from lifecycle.run import RunContext
from lifecycle.select import Selection
from lifecycle.sql import statement
from lifecycle.step import Step


def volume_limit(rule: Rule, table_rows: int) -> int:
    """The most candidates one run may act on without approval (docs/policy.md choices: the volume safeguard)."""
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


def check_candidates(connection, selection: Selection) -> tuple[bool, int]:
    """Great Expectations on the staged candidates, summed up by the database; raises GateFailed.
    Whether they passed, and how many candidates the rule acts on."""
    import pandas

    from lifecycle.expectations import validate_frame

    run, rule = selection.run, selection.rule
    query = statement(run.engine, CANDIDATES_SUMMARY, candidates=run.tables.qualified(run.tables.candidates))
    summary = connection.execute(query, {"selection_id": selection.id}).mappings().one()
    validation = validate_frame(
        pandas.DataFrame([dict(summary)], dtype="Int64"),
        candidate_expectations(epoch_seconds(run.as_of)),
        gate=f"{rule.id}/candidates",
        artifact_path=run.artifact_path(rule, "gate-candidates.json"),
    )
    return bool(validation.get("success")), summary["candidates"]


def gate_candidates(run: RunContext, rule: Rule) -> dict:
    selection = Selection.of(run, rule)
    with run.engine.connect() as connection:
        passed, acted_on = check_candidates(connection, selection)
    return {"rule": rule.id, "passed": passed, **_volume(rule, acted_on, selection.table_rows()).as_dict()}


def staged_volume(selection: Selection) -> Volume:
    with selection.run.engine.connect() as connection:
        acted_on = selection.acted_on(connection)
    return _volume(selection.rule, acted_on, selection.table_rows())


def _volume(rule: Rule, candidates: int, table_rows: int) -> Volume:
    return Volume(candidates, table_rows, volume_limit(rule, table_rows))


def require_volume_approval(run: RunContext, rule: Rule) -> dict:
    """Step 3: above its volume ceiling, a rule acts only in a run approved for volume."""
    volume = staged_volume(Selection.of(run, rule))
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
    passed, _ = check_candidates(scratch.connection, scratch.selection)
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
