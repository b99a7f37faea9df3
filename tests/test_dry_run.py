"""A dry run decides and reports what each step would do, and writes nothing anywhere: checked
against the real run that follows it, rule by rule, on the demo's database, on three databases."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from lifecycle.demo.seed import seed_demo
from lifecycle.pipeline import run_rule
from lifecycle.reporting import finish_run, start_run
from tests.lifecycle_helpers import POLICY, fingerprint, make_run

AS_OF = datetime(2026, 11, 25, tzinfo=UTC)
COMPARED = ("due", "held", "invalid", "archived", "erased", "erased_with_bundle", "pseudonymised", "emailed")


def run_once(engine, tmp_path, rule_id: str, *, dry_run: bool) -> dict:
    run = make_run(engine, AS_OF, tmp_path, run_id=f"{rule_id}-{'dry' if dry_run else 'real'}", dry_run=dry_run)
    start_run(run)
    rule = POLICY.rule(rule_id)
    results = {step["step"]: step for step in _steps(run, rule)}
    finish_run(run, [rule], {rule.id: results})
    return json.loads((run.report_dir() / "report.json").read_text())["rules"][0]


def _steps(run, rule):
    from lifecycle.pipeline import steps_for

    return [result | {"step": step} for step, result in zip(steps_for(rule), run_rule(run, rule), strict=True)]


def output_files(tmp_path) -> dict[str, str]:
    """Every file the pipeline may write (archive, outbox, stored documents) with its digest; not the
    reports, which a dry run writes, nor the SQLite database, which fingerprint() reads."""
    return {
        str(path.relative_to(tmp_path)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in tmp_path.rglob("*")
        if path.is_file() and path.parts[len(tmp_path.parts)] != "reports" and ".db" not in path.name
    }


def test_a_dry_run_changes_nothing_and_announces_what_the_run_then_does(engine, tmp_path):
    seed_demo(engine, AS_OF, size=120, seed=5, documents_dir=tmp_path / "documents")
    for purpose in POLICY.purposes:
        for rule in purpose.rules:
            if rule.action == "purge_archive":
                continue
            before, files = fingerprint(engine), output_files(tmp_path)

            would = run_once(engine, tmp_path, rule.id, dry_run=True)

            assert (fingerprint(engine), output_files(tmp_path)) == (before, files), rule.id
            did = run_once(engine, tmp_path, rule.id, dry_run=False)
            assert {c: would.get(c, 0) for c in COMPARED} == {c: did.get(c, 0) for c in COMPARED}, rule.id
