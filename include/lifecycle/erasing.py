"""Steps 5 and 6 of a rule: erase the due records in short transactions, each record decided
again under lock, then check that nothing recorded as erased remains."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy import and_, func, insert, literal, or_, select, update

from lifecycle.archiving import AUDIT_COLUMNS, due_key_pages, verified_archived_keys
from lifecycle.decide import DUE
from lifecycle.policy import Rule
from lifecycle.reactivation import mark_erased
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.s3_archive import S3Options
from lifecycle.select import RuleSelector, selection_id_of
from lifecycle.sql import render, statement


class ErasureRefused(RuntimeError):
    """Records were left in place because erasing them would break a safeguard."""


def erase_due(run: RunContext, rule: Rule) -> dict:
    """Erase what is still due; a record whose archive copy is not verified is never erased."""
    selection_id = selection_id_of(run, rule)
    eraser = _Eraser(run, rule, selection_id)
    for keys in due_key_pages(run, selection_id, rule.batch_size):
        if rule.bundle:
            for key in keys:
                eraser.erase_bundle(key)
        else:
            eraser.erase_records(keys)
    counts = dict(eraser.counts)
    refused = counts.get("skipped:archive not verified", 0) + counts.get("failed:stored file not erased", 0)
    if refused:
        raise ErasureRefused(
            f"rule {rule.id}: {refused} record(s) left in place (no verified archive copy, or a stored file "
            f"that could not be erased); counts: {counts}"
        )
    return {"rule": rule.id, **counts}


class _Eraser:
    def __init__(self, run: RunContext, rule: Rule, selection_id: int):
        self.run = run
        self.rule = rule
        self.selection_id = selection_id
        self.selector = RuleSelector(run, rule)
        self.counts: Counter[str] = Counter()

    def erase_records(self, keys: list[int]) -> None:
        """One transaction for a batch of records of a rule without bundle."""
        spec = self.run.policy.tables[self.rule.table]
        with self.run.engine.begin() as connection:
            erasable = self._still_erasable(connection, keys)
            if self.rule.stored_file:
                erasable = self._erase_stored_files(connection, erasable)
            if erasable:
                self._delete(connection, self.rule.table, spec.key, list(erasable))
                self._mark(connection, list(erasable), "erased", None)
                self._audit_erased_candidates(connection, list(erasable))
                self.counts["erased"] += len(erasable)

    def erase_bundle(self, owner: int) -> None:
        """One transaction for one smicer: members erased or pseudonymised, then the smicer."""
        policy = self.run.policy
        bundle = policy.bundles[self.rule.bundle]
        root = policy.tables[bundle.root]
        with self.run.engine.begin() as connection:
            if not self._still_erasable(connection, [owner]):
                return
            members = {m.table: self._member_keys(connection, m.table, m.link, owner) for m in bundle.members}
            if self._legally_held(connection, members):
                self._skip(connection, owner, "legal hold on a row of the bundle")
                return
            batches: dict[tuple[str, int], str | None] = {(bundle.root, owner): self._archived[owner]}
            if self._needs_archive(owner):
                for member in bundle.members:
                    if member.action != "erase":
                        continue
                    archived = verified_archived_keys(self.run, connection, member.table, members[member.table])
                    if len(archived) != len(members[member.table]):
                        self._mark(connection, [owner], "skipped", "archive not verified")
                        self.counts["skipped:archive not verified"] += 1
                        return
                    batches |= {(member.table, key): batch for key, batch in archived.items()}
            for member in bundle.members:
                keys = members[member.table]
                if not keys:
                    continue
                if member.action == "erase":
                    self._delete(connection, member.table, member.link, [owner])
                    self._audit(
                        connection, "erased", member.table, keys, {k: batches.get((member.table, k)) for k in keys}
                    )
                else:
                    connection.execute(
                        statement(
                            self.run.engine,
                            "pseudonymise_rows.sql",
                            expanding=("owners",),
                            table=member.table,
                            link=member.link,
                        ),
                        {"owners": [owner]},
                    )
                    self._audit(connection, "pseudonymised", member.table, keys, {})
                self.counts[f"{member.action}d:{member.table}"] += len(keys)
            self._delete(connection, bundle.root, root.key, [owner])
            self._audit(connection, "erased", bundle.root, [owner], {owner: batches[(bundle.root, owner)]})
            if self.rule.action == "reactivate":
                mark_erased(connection, self.run, self.rule, owner)
            self._mark(connection, [owner], "erased", None)
            self.counts["erased"] += 1

    def _still_erasable(self, connection, keys: list[int]) -> dict[int, str | None]:
        """Of `keys`, those still due and not held now, with a verified copy where one is needed."""
        decisions = {d.record_key: d for d in self.selector.redecide(connection, keys)}
        self._archive_needed = {k: d.needs_archive for k, d in decisions.items()}
        needing = [k for k, d in decisions.items() if d.verdict == DUE and d.needs_archive]
        archived = verified_archived_keys(self.run, connection, self.rule.table, needing)
        self._archived = {k: archived.get(k) for k in decisions}
        erasable: dict[int, str | None] = {}
        for key in keys:
            decision = decisions.get(key)
            if decision is None:
                self._skip(connection, key, "gone before erasure")
            elif decision.verdict != DUE:
                self._skip(connection, key, f"no longer due: {decision.verdict}")
            elif decision.needs_archive and key not in archived:
                self._skip(connection, key, "archive not verified")
            else:
                erasable[key] = archived.get(key)
        return erasable

    def _legally_held(self, connection, rows: dict[str, list[int]]) -> bool:
        holds = self.run.tables.legal_holds
        held = or_(
            *(and_(holds.c.table_name == table, holds.c.record_key.in_(keys)) for table, keys in rows.items() if keys)
        )
        query = select(func.count()).where(
            holds.c.lifted_at.is_(None), or_(holds.c.until.is_(None), holds.c.until > self.run.today), held
        )
        return any(rows.values()) and connection.execute(query).scalar_one() > 0

    def _needs_archive(self, key: int) -> bool:
        return self._archive_needed.get(key, False)

    def _skip(self, connection, key: int, reason: str) -> None:
        self._mark(connection, [key], "skipped", reason)
        self.counts[f"skipped:{reason}"] += 1

    def _erase_stored_files(self, connection, erasable: dict[int, str | None]) -> dict[int, str | None]:
        """Erase each record's stored file first; a record whose file cannot be erased stays."""
        if not erasable:
            return erasable
        query = statement(
            self.run.engine,
            "stored_files.sql",
            expanding=("keys",),
            table=self.rule.table,
            key=self.run.policy.tables[self.rule.table].key,
            column=self.rule.stored_file,
        )
        kept = dict(erasable)
        for key, location in connection.execute(query, {"keys": list(erasable)}).all():
            if not erase_stored_file(location, self.run.s3_options):
                del kept[key]
                self._mark(connection, [key], "failed", "stored file not erased")
                self.counts["failed:stored file not erased"] += 1
        return kept

    def _member_keys(self, connection, table: str, link: str, owner: int) -> list[int]:
        query = statement(
            self.run.engine,
            "member_keys.sql",
            expanding=("owners",),
            table=table,
            key=self.run.policy.tables[table].key,
            link=link,
        )
        return list(connection.execute(query, {"owners": [owner]}).scalars())

    def _delete(self, connection, table: str, column: str, keys: list[int]) -> None:
        query = statement(self.run.engine, "delete_rows.sql", expanding=("keys",), table=table, column=column)
        connection.execute(query, {"keys": keys})

    def _audit_erased_candidates(self, connection, keys: list[int]) -> None:
        """One audit event per erased record of the rule's table, written by the database itself."""
        candidates, records, audit = (
            self.run.tables.candidates,
            self.run.tables.archived_records,
            self.run.tables.audit_events,
        )
        events = (
            select(
                literal(now_utc_naive()),
                literal(self.run.dag_id),
                literal(self.run.run_id),
                literal(self.rule.id),
                literal("erased"),
                literal(self.rule.table),
                candidates.c.record_key,
                literal(self.run.policy.version),
                records.c.batch_key,
                literal(self.run.as_of_naive),
            )
            .select_from(candidates)
            .outerjoin(
                records,
                and_(records.c.table_name == self.rule.table, records.c.record_key == candidates.c.record_key),
            )
            .where(candidates.c.selection_id == self.selection_id, candidates.c.record_key.in_(keys))
        )
        connection.execute(insert(audit).from_select(AUDIT_COLUMNS, events))

    def _audit(self, connection, action: str, table: str, keys: list[int], batches: dict) -> None:
        recorded_at = now_utc_naive()
        connection.execute(
            insert(self.run.tables.audit_events),
            [
                {
                    "recorded_at": recorded_at,
                    "dag_id": self.run.dag_id,
                    "run_id": self.run.run_id,
                    "rule": self.rule.id,
                    "action": action,
                    "table_name": table,
                    "record_key": key,
                    "policy_version": self.run.policy.version,
                    "archive_batch": batches.get(key),
                    "as_of": self.run.as_of_naive,
                }
                for key in keys
            ],
        )

    def _mark(self, connection, keys: list[int], state: str, reason: str | None) -> None:
        candidates = self.run.tables.candidates
        values = {"state": state} if reason is None else {"state": state, "reason": reason}
        connection.execute(
            update(candidates)
            .where(candidates.c.selection_id == self.selection_id, candidates.c.record_key.in_(keys))
            .values(**values)
        )


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
