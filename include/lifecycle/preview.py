"""A dry run: each step of a rule reports what it would do. The select step runs the real select
statement once, inside a transaction then rolled back (no staged decision, archive, erasure, email or
audit event remains), and finds what every step would do; the later steps report it. The same as-of
and policy give the same decisions as the real run."""

from __future__ import annotations

from functools import cached_property

from sqlalchemy import func, insert, select

from lifecycle.decide import DUE, NOTIFY
from lifecycle.gating import Volume, check_candidates, volume_limit
from lifecycle.policy import Rule
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.select import selection_counts, stage_decisions
from lifecycle.sql import statement


def preview_step(run: RunContext, rule: Rule, step_name: str, selected: dict | None = None) -> dict:
    """What the step named `step_name` would do in this run, as the counts a report shows. The
    select step finds what every step would do; the later steps report it from `selected`."""
    if step_name == "purge":
        from lifecycle.expiry import purge_expired

        return purge_expired(run, rule) | {"dry_run": True}
    if step_name == "select":
        would_do = preview_rule(run, rule)
        return {"rule": rule.id, "dry_run": True, **would_do["select"], "would_do": would_do}
    if not selected or "would_do" not in selected:
        raise LookupError(f"rule {rule.id}: a dry run's {step_name} step reports what its select step found; none")
    return {"rule": rule.id, "dry_run": True, **selected["would_do"][step_name]}


def preview_rule(run: RunContext, rule: Rule) -> dict[str, dict]:
    """What each step of the rule would do, by step name: the select step's statement run once, in a
    transaction rolled back."""
    from lifecycle.pipeline import steps_for

    with run.engine.connect() as connection:
        transaction = connection.begin()
        try:
            staged = _Staged(connection, run, rule, _stage(connection, run, rule))
            return {step.name: WOULD_DO[step.name](staged) for step in steps_for(rule)}
        finally:
            transaction.rollback()


def _stage(connection, run: RunContext, rule: Rule) -> int:
    selections = run.tables.selections
    opened = connection.execute(
        insert(selections).values(
            dag_id=run.dag_id,
            run_id=f"{run.run_id} (dry run)",
            rule=rule.id,
            as_of=run.as_of_naive,
            policy_version=run.policy.version,
            created_at=now_utc_naive(),
            stage="selecting",
        )
    )
    selection_id = opened.inserted_primary_key[0]
    stage_decisions(connection, run, rule, selection_id)
    return selection_id


class _Staged:
    """The rolled-back selection a dry-run step reads."""

    def __init__(self, connection, run: RunContext, rule: Rule, selection_id: int):
        self.connection = connection
        self.run = run
        self.rule = rule
        self.selection_id = selection_id

    def count(self, decisions: tuple[str, ...]) -> int:
        c = self.run.tables.candidates
        query = select(func.count()).where(c.c.selection_id == self.selection_id, c.c.decision.in_(decisions))
        return self.connection.execute(query).scalar_one()

    @cached_property
    def volume(self) -> Volume:
        rows = self.connection.execute(statement(self.run.engine, "count_rows.sql", table=self.rule.table))
        table_rows = rows.scalar_one()
        return Volume(self.count((DUE, NOTIFY)), table_rows, volume_limit(self.rule, table_rows))

    @cached_property
    def archive(self) -> dict:
        return _archive(self)

    def rows_of_due(self, table: str, column: str, retain_until=None) -> int:
        """Rows of `table` whose `column` is a due candidate's key (of one retain_until, if given)."""
        query = statement(
            self.run.engine,
            "count_staged_rows.sql",
            table=table,
            column=column,
            candidates=self.run.tables.qualified(self.run.tables.candidates),
            by_retain_until=retain_until is not None,
        )
        params = {"selection_id": self.selection_id, "retain_until": retain_until}
        return self.connection.execute(query, params).scalar_one()


def _select(staged: _Staged) -> dict:
    return selection_counts(staged.connection, staged.run, staged.rule, staged.selection_id)


def _gate(staged: _Staged) -> dict:
    passed = check_candidates(staged.connection, staged.run, staged.rule, staged.selection_id)
    return {"passed": passed, **staged.volume.as_dict()}


def _approve(staged: _Staged) -> dict:
    volume = staged.volume
    asked = volume.needs_approval(staged.run.volume_approved)
    return {"approval": "would be asked (above the ceiling)" if asked else "not needed", **volume.as_dict()}


def _archive(staged: _Staged) -> dict:
    """The rows each batch would hold: one batch per archived table and retain_until (lifecycle.archiving)."""
    from lifecycle.archiving import archive_sources

    c = staged.run.tables.candidates
    retain_dates = staged.connection.execute(
        select(c.c.retain_until)
        .where(c.c.selection_id == staged.selection_id, c.c.decision == DUE, c.c.retain_until.is_not(None))
        .distinct()
    ).scalars()
    sources = archive_sources(staged.run.policy, staged.rule)
    batch_rows = [
        staged.rows_of_due(source.table, source.match, retain_until)
        for retain_until in list(retain_dates)
        for source in sources
    ]
    return {"archived": sum(batch_rows), "batches": sum(1 for rows in batch_rows if rows)}


def _erase(staged: _Staged) -> dict:
    """The records that would be erased, and the rows of their bundles erased or pseudonymised with them."""
    erased = {"erased": staged.count((DUE,))}
    if staged.rule.bundle:
        erased |= {"erased_with_bundle": 0, "pseudonymised": 0}
        for member in staged.run.policy.bundles[staged.rule.bundle].members:
            column = "erased_with_bundle" if member.action == "erase" else "pseudonymised"
            erased[column] += staged.rows_of_due(member.table, member.link)
    return erased


def _notify(staged: _Staged) -> dict:
    """Notices that would leave (within the per-run limit), and those whose address is unusable."""
    from lifecycle.mail import valid_address

    run, rule = staged.run, staged.rule
    spec = run.policy.tables[rule.table]
    query = statement(
        run.engine,
        "staged_emails.sql",
        table=rule.table,
        key=spec.key,
        email=spec.email,
        candidates=run.tables.qualified(run.tables.candidates),
    )
    addresses = staged.connection.execute(query, {"selection_id": staged.selection_id}).scalars()
    due = usable = 0
    for address in addresses:
        due += 1
        usable += valid_address(address) is not None
    return {"notices_due": due, "emailed": min(usable, run.notices.max_per_run), "undeliverable": due - usable}


WOULD_DO = {
    "select": _select,
    "gate": _gate,
    "approve": _approve,
    "archive": lambda staged: staged.archive,
    "verify_archive": lambda staged: {"verified_batches": staged.archive["batches"]},
    "erase": _erase,
    "verify_erase": lambda staged: {"checked_records": staged.count((DUE,))},
    "notify": _notify,
}
