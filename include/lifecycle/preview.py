"""A dry run: each step of a rule decides exactly as it would and reports what it would do, and
writes nothing: no staged decision, no archive, no erasure, no email, no audit event.

Steps of a dry run share no staged state, so each one decides again from the application
database: the same as-of and the same policy give the same decisions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from lifecycle.decide import DUE, HELD, INVALID, NOT_DUE
from lifecycle.gating import Volume, candidate_expectations, volume_limit
from lifecycle.periods import epoch_seconds
from lifecycle.policy import Rule
from lifecycle.reactivation import NOTIFY
from lifecycle.run import RunContext
from lifecycle.select import RuleSelector, table_rows
from lifecycle.sql import statement

INVALID_LISTED = 200
MEMBER_KEYS_PER_QUERY = 1000


@dataclass
class Preview:
    """What a rule would act on as of the run: counts, and the keys the steps would pass on."""

    counts: Counter[str] = field(default_factory=Counter)
    candidates: list[tuple[int, int | None, int | None]] = field(default_factory=list)  # key, anchor, due
    due_keys: list[int] = field(default_factory=list)
    notice_keys: list[int] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)
    archive_keys: dict[date, list[int]] = field(default_factory=dict)  # by retain_until
    table_rows: int = 0

    def volume(self, rule: Rule) -> Volume:
        return Volume(len(self.candidates), self.table_rows, volume_limit(rule, self.table_rows))


def preview_rule(run: RunContext, rule: Rule) -> Preview:
    preview = Preview(table_rows=table_rows(run, rule))
    for decisions in RuleSelector(run, rule).pages(rule.batch_size):
        for decision in decisions:
            if decision.verdict != NOT_DUE:
                _take(preview, rule, decision)
    return preview


def _take(preview: Preview, rule: Rule, decision) -> None:
    preview.counts[decision.verdict] += 1
    if decision.verdict in (DUE, NOTIFY):
        anchor = epoch_seconds(decision.anchor) if decision.anchor else None
        due = epoch_seconds(decision.due_at) if decision.due_at else None
        preview.candidates.append((decision.record_key, anchor, due))
    if decision.verdict == NOTIFY:
        preview.notice_keys.append(decision.record_key)
    if decision.verdict == DUE:
        preview.due_keys.append(decision.record_key)
        if decision.needs_archive:
            preview.counts["to_archive"] += 1
            preview.archive_keys.setdefault(decision.retain_until, []).append(decision.record_key)
    if decision.verdict == INVALID and len(preview.invalid) < INVALID_LISTED:
        preview.invalid.append({"table": rule.table, "key": decision.record_key, "reason": decision.reason})


def preview_step(run: RunContext, rule: Rule, step_name: str) -> dict:
    """What the step named `step_name` would do in this run, as the counts a report shows."""
    if step_name == "purge":
        from lifecycle.expiry import purge_expired

        return purge_expired(run, rule) | {"dry_run": True}
    preview = preview_rule(run, rule)
    counts = {DUE: preview.counts[DUE], HELD: preview.counts[HELD], INVALID: preview.counts[INVALID]}
    would: dict = {
        "select": lambda: (
            counts
            | {"to_archive": preview.counts["to_archive"], "notify": preview.counts[NOTIFY]}
            | {"table_rows": preview.table_rows, "invalid_records": preview.invalid}
        ),
        "gate": lambda: _gate(run, rule, preview),
        "approve": lambda: _approval(run, preview.volume(rule)),
        "archive": lambda: _archive(run, rule, preview),
        "verify_archive": lambda: {"verified_batches": _archive(run, rule, preview)["batches"]},
        "erase": lambda: {"erased": len(preview.due_keys)} | _bundle_rows(run, rule, preview.due_keys),
        "verify_erase": lambda: {"checked_records": len(preview.due_keys)},
        "notify": lambda: _notices(run, rule, preview.notice_keys),
    }
    return {"rule": rule.id, "dry_run": True, **would[step_name]()}


def _approval(run: RunContext, volume: Volume) -> dict:
    asked = volume.needs_approval(run.volume_approved)
    return {"approval": "would be asked (above the ceiling)" if asked else "not needed", **volume.as_dict()}


def _gate(run: RunContext, rule: Rule, preview: Preview) -> dict:
    import pandas

    from lifecycle.gates import validate_frame

    frame = pandas.DataFrame(preview.candidates, columns=["record_key", "anchor_epoch", "due_epoch"], dtype="Int64")
    summary = validate_frame(
        frame,
        candidate_expectations(rule, epoch_seconds(run.as_of)),
        gate=f"{rule.id}/candidates",
        artifact_path=run.artifact_path(rule, "gate-candidates.json"),
    )
    return {"passed": bool(summary.get("success")), **preview.volume(rule).as_dict()}


def _archive(run: RunContext, rule: Rule, preview: Preview) -> dict:
    """The rows each batch would hold: one batch per archived table and retain_until (lifecycle.archiving)."""
    from lifecycle.archiving import archive_sources

    batch_rows = []
    with run.engine.connect() as connection:
        for keys in preview.archive_keys.values():
            for source in archive_sources(run.policy, rule):
                rows = len(keys) if source.is_root else _member_rows(connection, run, source.table, source.match, keys)
                if rows:
                    batch_rows.append(rows)
    return {"archived": sum(batch_rows), "batches": len(batch_rows)}


def _bundle_rows(run: RunContext, rule: Rule, owners: list[int]) -> dict:
    """The rows of each smicer's bundle that would be erased or pseudonymised with them."""
    if not rule.bundle:
        return {}
    rows: Counter[str] = Counter()
    with run.engine.connect() as connection:
        for member in run.policy.bundles[rule.bundle].members:
            found = _member_rows(connection, run, member.table, member.link, owners)
            rows["erased_with_bundle" if member.action == "erase" else "pseudonymised"] += found
    return dict(rows)


def _notices(run: RunContext, rule: Rule, keys: list[int]) -> dict:
    """Notices that would leave (within the per-run limit), and those whose address is unusable."""
    from lifecycle.mail import valid_address

    spec = run.policy.tables[rule.table]
    query = statement(
        run.engine,
        "fetch_rows.sql",
        expanding=("keys",),
        table=rule.table,
        columns=[spec.email],
        match=spec.key,
        key=spec.key,
    )
    with run.engine.connect() as connection:
        usable = sum(
            valid_address(address) is not None
            for start in range(0, len(keys), MEMBER_KEYS_PER_QUERY)
            for address in connection.execute(query, {"keys": keys[start : start + MEMBER_KEYS_PER_QUERY]}).scalars()
        )
    return {
        "notices_due": len(keys),
        "emailed": min(usable, run.notices.max_per_run),
        "undeliverable": len(keys) - usable,
    }


def _member_rows(connection, run: RunContext, table: str, link: str, owners: list[int]) -> int:
    query = statement(
        run.engine, "member_keys.sql", expanding=("owners",), table=table, key=run.policy.tables[table].key, link=link
    )
    return sum(
        len(connection.execute(query, {"owners": owners[start : start + MEMBER_KEYS_PER_QUERY]}).scalars().all())
        for start in range(0, len(owners), MEMBER_KEYS_PER_QUERY)
    )
