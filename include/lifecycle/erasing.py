"""Steps 5 and 6 of a rule: erase the due records set-based, a key range of candidates per short
transaction, each statement re-checking in the database that its records are still due, not held,
and copied to a verified archive batch where the rule archives; then check that nothing recorded as
erased remains."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy import func, select, update

from lifecycle.decide import DecisionStatement
from lifecycle.policy import Rule
from lifecycle.reactivation import close_erased_cycles
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.s3_archive import S3Options
from lifecycle.select import selection_id_of
from lifecycle.sql import render, statement

# Left in place by a safeguard, which fails the step: the run must not look complete.
REFUSALS = ("archive not verified", "stored file not erased")


class ErasureRefused(RuntimeError):
    """Records were left in place because erasing them would break a safeguard."""


def erase_due(run: RunContext, rule: Rule) -> dict:
    """Erase what is still due; a record whose archive copy is not verified is never erased."""
    eraser = _RangeEraser(run, rule, selection_id_of(run, rule))
    erased: dict[str, int] = {}
    for key_from, key_to in eraser.key_ranges():
        for name, count in eraser.erase_range(key_from, key_to).items():
            erased[name] = erased.get(name, 0) + count
    left = eraser.left_in_place()
    refused = sum(count for reason, count in left.items() if reason in REFUSALS)
    if refused:
        raise ErasureRefused(
            f"rule {rule.id}: {refused} record(s) left in place (no verified archive copy, or a stored file "
            f"that could not be erased); left in place: {left}"
        )
    return {"rule": rule.id, **erased, **{f"skipped:{reason}": count for reason, count in left.items()}}


class _RangeEraser:
    """The statements of one rule's erase step, for one selection."""

    def __init__(self, run: RunContext, rule: Rule, selection_id: int):
        self.run = run
        self.rule = rule
        self.selection_id = selection_id
        self.decision = DecisionStatement(run, rule)
        tables = run.tables
        self.names = {
            "candidates": tables.qualified(tables.candidates),
            "archived_records": tables.qualified(tables.archived_records),
            "archive_batches": tables.qualified(tables.archive_batches),
            "audit": tables.qualified(tables.audit_events),
        }

    def key_ranges(self) -> list[tuple[int, int]]:
        """Ranges [from, to) of `batch_size` pending due candidates each, in key order."""
        c = self.run.tables.candidates
        with self.run.engine.connect() as connection:
            query = statement(self.run.engine, "erase_ranges.sql", candidates=self.names["candidates"])
            starts = list(
                connection.execute(query, {"selection_id": self.selection_id, "size": self.rule.batch_size}).scalars()
            )
            last = connection.execute(
                select(func.max(c.c.record_key)).where(
                    c.c.selection_id == self.selection_id, c.c.decision == "due", c.c.state == "pending"
                )
            ).scalar()
        return list(zip(starts, [*starts[1:], last + 1], strict=True)) if starts else []

    def erase_range(self, key_from: int, key_to: int) -> dict[str, int]:
        """One transaction: lock, re-check, erase stored files, audit, erase (the bundle with its smicer)."""
        bounds = {"selection_id": self.selection_id, "key_from": key_from, "key_to": key_to}
        with self.run.engine.begin() as connection:
            self._execute(connection, "lock_records.sql", bounds, r=self.decision.context, scope="staged")
            self._recheck(connection, bounds)
            if self.rule.stored_file:
                self._erase_stored_files(connection, bounds)
            erased: dict[str, int] = {}
            for table, column, action in self._targets():
                self._audit(connection, bounds, table, column, action)
                erase = self._execute(
                    connection, "erase_staged.sql", bounds, table=table, column=column, action=action, **self.names
                )
                count = erase.rowcount
                if table != self.rule.table:
                    erased[f"{action}d:{table}"] = count
            if self.rule.action == "reactivate":
                close_erased_cycles(connection, self.run, self.rule, self._staged(bounds))
            erased["erased"] = self._mark_erased(connection, bounds)
        return erased

    def _recheck(self, connection, bounds: dict) -> None:
        params = self.decision.params | bounds | {"table_name": self.rule.table}
        context = {"r": self.decision.context, "scope": "staged"} | self.names
        self._execute(connection, "erase_skip.sql", params, gone=True, **context)
        self._execute(connection, "erase_skip.sql", params, gone=False, **context)

    def _targets(self) -> list[tuple[str, str, str]]:
        """(table, column matched to the candidates, action): a bundle's members first, the rule's table last."""
        policy = self.run.policy
        members = policy.bundles[self.rule.bundle].members if self.rule.bundle else ()
        targets = [(m.table, m.link, "erase" if m.action == "erase" else "pseudonymise") for m in members]
        return [*targets, (self.rule.table, policy.tables[self.rule.table].key, "erase")]

    def _audit(self, connection, bounds: dict, table: str, column: str, action: str) -> None:
        run = self.run
        params = bounds | {
            "recorded_at": now_utc_naive(),
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "rule_id": self.rule.id,
            "action": f"{action}d",
            "table_name": table,
            "policy_version": run.policy.version,
            "as_of": run.as_of_naive,
        }
        key = run.policy.tables[table].key
        self._execute(connection, "erase_audit.sql", params, table=table, key=key, column=column, **self.names)

    def _erase_stored_files(self, connection, bounds: dict) -> None:
        """Erase each record's stored file first; a record whose file cannot be erased stays."""
        spec = self.run.policy.tables[self.rule.table]
        query = statement(
            self.run.engine,
            "stored_files.sql",
            table=self.rule.table,
            key=spec.key,
            column=self.rule.stored_file,
            candidates=self.names["candidates"],
        )
        stored = connection.execute(query, bounds).all()
        failed = [key for key, location in stored if not erase_stored_file(location, self.run.s3_options)]
        if failed:
            c = self.run.tables.candidates
            connection.execute(
                update(c)
                .where(c.c.selection_id == self.selection_id, c.c.record_key.in_(failed))
                .values(state="failed", reason="stored file not erased")
            )

    def _staged(self, bounds: dict):
        c = self.run.tables.candidates
        return select(c.c.record_key).where(
            c.c.selection_id == bounds["selection_id"],
            c.c.decision == "due",
            c.c.state == "pending",
            c.c.record_key >= bounds["key_from"],
            c.c.record_key < bounds["key_to"],
        )

    def _mark_erased(self, connection, bounds: dict) -> int:
        c = self.run.tables.candidates
        staged = self._staged(bounds).whereclause
        return connection.execute(update(c).where(staged).values(state="erased")).rowcount

    def left_in_place(self) -> dict[str, int]:
        c = self.run.tables.candidates
        with self.run.engine.connect() as connection:
            rows = connection.execute(
                select(c.c.reason, func.count())
                .where(
                    c.c.selection_id == self.selection_id, c.c.decision == "due", c.c.state.in_(("skipped", "failed"))
                )
                .group_by(c.c.reason)
            ).all()
        return dict(rows)

    def _execute(self, connection, template: str, params: dict, **context):
        return connection.execute(statement(self.run.engine, template, **context), params)


def erase_stored_file(location: str, s3_options: S3Options | None = None) -> bool:
    """Delete a stored scan; an already missing one counts as erased (a retried run finds it gone)."""
    parsed = urlparse(location or "")
    if parsed.scheme == "s3":
        return _erase_s3_object(parsed.netloc, parsed.path.lstrip("/"), s3_options or S3Options())
    if parsed.scheme != "file":
        return False
    try:
        Path(unquote(parsed.path)).unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _erase_s3_object(bucket: str, key: str, s3_options: S3Options) -> bool:
    """Every version of the object, so that no earlier copy of the scan survives in a versioned bucket."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_options.client()
    try:
        listing = client.list_object_versions(Bucket=bucket, Prefix=key)
        versions = [v for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []) if v["Key"] == key]
        for version in versions:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
        if not versions:
            client.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError):
        return False
    return True


def verify_erased(run: RunContext, rule: Rule) -> dict:
    """Great Expectations, in the database: no row recorded as erased remains, none stays linked."""
    from lifecycle.gates import validate_sql

    selection_id = selection_id_of(run, rule)
    candidates = run.tables.qualified(run.tables.candidates)
    checks = [(rule.table, run.policy.tables[rule.table].key)]
    if rule.bundle:
        checks += [(member.table, member.link) for member in run.policy.bundles[rule.bundle].members]
    for table, column in checks:
        query = render(
            run.engine,
            "gate_erased_remaining.sql",
            candidates=candidates,
            table=table,
            column=column,
            selection_id=selection_id,
        )
        validate_sql(
            run.engine_url,
            query,
            [{"type": "expect_table_row_count_to_equal", "value": 0}],
            gate=f"{rule.id}/erased/{table}",
            artifact_path=run.artifact_path(rule, f"gate-erased-{table}.json"),
        )
    return {"rule": rule.id, "checked_tables": len(checks)}
