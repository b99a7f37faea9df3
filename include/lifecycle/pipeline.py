"""The steps of each rule, in order: the one sequence the DAGs, the demo and the tests all run.
Data flows one way: select -> gate -> approve -> archive -> verify -> erase -> verify erase [-> notify]
-> report. A dry run runs the same steps, each reporting what it would do (lifecycle.preview)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lifecycle.archiving import archive_due, verify_archive
from lifecycle.erasing import erase_due, verify_erased
from lifecycle.expiry import purge_expired
from lifecycle.gating import gate_candidates, require_volume_approval
from lifecycle.notifying import notify_inactive
from lifecycle.policy import Rule
from lifecycle.preview import preview_step
from lifecycle.run import RunContext
from lifecycle.select import record_stage, select_candidates


@dataclass(frozen=True)
class Step:
    name: str
    action: Callable[[RunContext, Rule], dict]
    stage: str


SELECT = Step("select", select_candidates, "selected")
GATE = Step("gate", gate_candidates, "gated")
APPROVE = Step("approve", require_volume_approval, "approved")
ARCHIVE = Step("archive", archive_due, "archived")
VERIFY_ARCHIVE = Step("verify_archive", verify_archive, "archive_verified")
ERASE = Step("erase", erase_due, "erased")
VERIFY_ERASE = Step("verify_erase", verify_erased, "erase_verified")
PURGE = Step("purge", purge_expired, "purged")
NOTIFY = Step("notify", notify_inactive, "notified")


def steps_for(rule: Rule) -> list[Step]:
    if rule.action == "purge_archive":
        return [PURGE]
    archive = [ARCHIVE, VERIFY_ARCHIVE] if rule.archives else []
    # The reactivation cycle erases those its grace period is over for, then emails those due a notice:
    # a mail server down does not hold back erasures.
    notify = [NOTIFY] if rule.action == "reactivate" else []
    return [SELECT, GATE, APPROVE, *archive, ERASE, VERIFY_ERASE, *notify]


def run_step(run: RunContext, rule: Rule, step: Step, selected: dict | None = None) -> dict:
    """One step; in a dry run, what it would do (a dry run's later steps report from `selected`,
    what its select step found)."""
    if run.dry_run:
        return preview_step(run, rule, step.name, selected)
    result = step.action(run, rule)
    if step is not PURGE:
        record_stage(run, rule, step.stage)
    return result


def run_rule(run: RunContext, rule: Rule) -> list[dict]:
    """Every step of one rule, stopping at the first that fails (its exception propagates)."""
    results: list[dict] = []
    for step in steps_for(rule):
        results.append(run_step(run, rule, step, results[0] if results else None))
    return results
