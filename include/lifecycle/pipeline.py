"""The steps of each rule, in order, by name: the one sequence the DAGs, the demo and the tests all
run. Data flows one way: select -> gate -> approve -> archive -> verify -> erase -> verify erase
[-> notify] -> report. Each step is one unit in its own module (lifecycle.step.Step: what it does,
what it would do in a dry run, what it reports); this module imports none of them, so that parsing
a DAG file loads no step code."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycle.policy import Rule
    from lifecycle.run import RunContext
    from lifecycle.select import KeyRange
    from lifecycle.step import Step

SELECT, GATE, APPROVE = "select", "gate", "approve"
ARCHIVE, VERIFY_ARCHIVE = "archive", "verify_archive"
ERASE, VERIFY_ERASE = "erase", "verify_erase"
PURGE, NOTIFY = "purge", "notify"
# The steps several tasks may share, each acting on its own key range of the rule's selection.
SHARED_BY_KEY_RANGE = (ARCHIVE, ERASE)

MODULES = {
    SELECT: "lifecycle.select",
    GATE: "lifecycle.gating",
    APPROVE: "lifecycle.gating",
    ARCHIVE: "lifecycle.archiving",
    VERIFY_ARCHIVE: "lifecycle.archiving",
    ERASE: "lifecycle.erasing",
    VERIFY_ERASE: "lifecycle.erasing",
    PURGE: "lifecycle.expiry",
    NOTIFY: "lifecycle.notifying",
}


def step_named(name: str) -> Step:
    return importlib.import_module(MODULES[name]).STEPS[name]


def steps_for(rule: Rule) -> list[str]:
    if rule.action == "purge_archive":
        return [PURGE]
    archive = [ARCHIVE, VERIFY_ARCHIVE] if rule.archives else []
    # The reactivation cycle erases those its grace period is over for, then emails those due a notice:
    # a mail server down does not hold back erasures.
    notify = [NOTIFY] if rule.action == "reactivate" else []
    return [SELECT, GATE, APPROVE, *archive, ERASE, VERIFY_ERASE, *notify]


def run_step(
    run: RunContext, rule: Rule, name: str, selected: dict | None = None, key_range: KeyRange | None = None
) -> dict:
    """One step (a step of SHARED_BY_KEY_RANGE: its share `key_range`, else all of it); in a dry run,
    what it would do (a dry run's later steps report from `selected`, what its select step found)."""
    step = step_named(name)
    if run.dry_run:
        from lifecycle.preview import preview_step

        return preview_step(run, rule, step, selected)
    if key_range is not None and name not in SHARED_BY_KEY_RANGE:
        raise ValueError(f"step {name!r} is not shared by key range")
    result = step.act(run, rule) if key_range is None else step.act(run, rule, key_range)
    if step.stage:
        from lifecycle.select import Selection

        Selection.record_stage(run, rule, step.stage)
    return result


def run_rule(run: RunContext, rule: Rule) -> list[dict]:
    """Every step of one rule, stopping at the first that fails (its exception propagates)."""
    results: list[dict] = []
    for name in steps_for(rule):
        results.append(run_step(run, rule, name, results[0] if results else None))
    return results
