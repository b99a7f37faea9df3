"""Steps 3 and 4 of an archiving rule: copy the due records into batches (one per table and
retain_until), then verify each batch before anything may be erased."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import and_, delete, func, insert, literal, select, update

from lifecycle.archive_store import ArchiveError, open_archive_store, sha256_of_file
from lifecycle.policy import Policy, Rule
from lifecycle.rows import ArrowConverter, subject_digests
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.select import selection_id_of
from lifecycle.sql import statement

PART_ROWS = 500_000
FORMAT_VERSION = 1
AUDIT_COLUMNS = [
    "recorded_at",
    "dag_id",
    "run_id",
    "rule",
    "action",
    "table_name",
    "record_key",
    "policy_version",
    "archive_batch",
    "as_of",
]


@dataclass(frozen=True)
class ArchiveSource:
    """A table whose rows a rule archives: the rule's own, or a bundle member matched on its link."""

    table: str
    key: str
    match: str

    @property
    def is_root(self) -> bool:
        return self.match == self.key


def archive_sources(policy: Policy, rule: Rule) -> list[ArchiveSource]:
    root = policy.tables[rule.table]
    sources = [ArchiveSource(rule.table, root.key, root.key)]
    if rule.bundle:
        for member in policy.bundles[rule.bundle].members:
            if member.action == "erase":
                sources.append(ArchiveSource(member.table, policy.tables[member.table].key, member.link))
    return sources


def archive_due(run: RunContext, rule: Rule) -> dict:
    """Write a batch for every (table, retain_until) whose due records have no verified copy yet."""
    selection_id = selection_id_of(run, rule)
    store = open_archive_store(run.archive_uri, run.s3_options)
    batches = []
    for retain_until in _retain_dates(run, selection_id):
        for source in archive_sources(run.policy, rule):
            batch = _archive_group(run, rule, store, selection_id, retain_until, source)
            if batch:
                batches.append(batch)
    return {"rule": rule.id, "batches": len(batches), "rows": sum(rows for _, rows in batches)}


def _retain_dates(run: RunContext, selection_id: int) -> list[date]:
    c = run.tables.candidates
    with run.engine.connect() as connection:
        return list(
            connection.execute(
                select(c.c.retain_until)
                .where(c.c.selection_id == selection_id, c.c.decision == "due", c.c.state == "pending")
                .where(c.c.retain_until.is_not(None))
                .distinct()
                .order_by(c.c.retain_until)
            ).scalars()
        )


def due_key_pages(
    run: RunContext, selection_id: int, page_size: int, retain_until: date | None = None
) -> Iterator[list[int]]:
    """The pending due keys of a selection, in key order, a page at a time."""
    c = run.tables.candidates
    after = None
    while True:
        query = select(c.c.record_key).where(
            c.c.selection_id == selection_id, c.c.decision == "due", c.c.state == "pending"
        )
        if retain_until is not None:
            query = query.where(c.c.retain_until == retain_until)
        if after is not None:
            query = query.where(c.c.record_key > after)
        with run.engine.connect() as connection:
            keys = list(connection.execute(query.order_by(c.c.record_key).limit(page_size)).scalars())
        if not keys:
            return
        yield keys
        after = keys[-1]


def _keys_to_archive(run: RunContext, selection_id: int, retain_until: date, source: ArchiveSource, page_size: int):
    """Pages of the source's keys for a retain_until group that no verified batch holds yet."""
    for owners in due_key_pages(run, selection_id, page_size, retain_until):
        with run.engine.connect() as connection:
            if source.is_root:
                keys = owners
            else:
                query = statement(
                    run.engine,
                    "member_keys.sql",
                    expanding=("owners",),
                    table=source.table,
                    key=source.key,
                    link=source.match,
                )
                keys = list(connection.execute(query, {"owners": owners}).scalars())
            archived = verified_archived_keys(run, connection, source.table, keys)
        pending = [key for key in keys if key not in archived]
        if pending:
            yield pending


def verified_archived_keys(run: RunContext, connection, table: str, keys: list[int]) -> dict[int, str]:
    """Of `keys`, those with a copy in a verified batch, and that batch."""
    if not keys:
        return {}
    records, batches = run.tables.archived_records, run.tables.archive_batches
    query = (
        select(records.c.record_key, records.c.batch_key)
        .join(batches, batches.c.batch_key == records.c.batch_key)
        .where(records.c.table_name == table, records.c.record_key.in_(keys), batches.c.verified_at.is_not(None))
    )
    return dict(connection.execute(query).all())


def _archive_group(run, rule, store, selection_id, retain_until, source) -> tuple[str, int] | None:
    expected = hashlib.sha256()
    expected_rows = 0
    for keys in _keys_to_archive(run, selection_id, retain_until, source, rule.batch_size):
        expected.update("".join(f"{key}\n" for key in keys).encode())
        expected_rows += len(keys)
    if expected_rows == 0:
        return None
    digest = expected.hexdigest()
    batch_key = (
        f"{source.table}/retain_until={retain_until.isoformat()}/{rule.id}-{run.as_of:%Y%m%dT%H%M%SZ}-{digest[:16]}"
    )
    existing = store.read_manifest(batch_key)
    if existing is None or existing.get("records_digest") != digest:
        manifest = _write_batch(run, rule, store, selection_id, retain_until, source, batch_key)
        if manifest["records_digest"] != digest:
            raise ArchiveError(f"batch {batch_key}: the rows written differ from the candidates (changed meanwhile)")
    else:
        _record_batch_members(run, selection_id, retain_until, source, batch_key, rule.batch_size)
    _record_batch(run, rule, store, source, retain_until, batch_key, digest, expected_rows)
    return batch_key, expected_rows


def _write_batch(run, rule, store, selection_id, retain_until, source, batch_key) -> dict:
    import pyarrow.parquet as pq

    converter = ArrowConverter.for_table(run.engine, source.table)
    written = hashlib.sha256()
    parts: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="archive-") as scratch:
        writer, part_path, part_rows = None, None, 0
        for keys in _keys_to_archive(run, selection_id, retain_until, source, rule.batch_size):
            rows = _fetch_rows(run, source, converter.columns, keys)
            table = converter.to_arrow(rows, source.table, source.key)
            if writer is None or part_rows >= PART_ROWS:
                if writer is not None:
                    writer.close()
                    parts.append(_store_part(store, batch_key, part_path, part_rows, len(parts), retain_until))
                part_path = Path(scratch) / f"part-{len(parts):05d}.parquet"
                writer, part_rows = pq.ParquetWriter(part_path, converter.schema, compression="zstd"), 0
            writer.write_table(table)
            part_rows += table.num_rows
            written.update("".join(f"{row[source.key]}\n" for row in rows).encode())
            _remember_copies(run, source, batch_key, rows)
        if writer is not None:
            writer.close()
            parts.append(_store_part(store, batch_key, part_path, part_rows, len(parts), retain_until))
    manifest = {
        "format_version": FORMAT_VERSION,
        "rule": rule.id,
        "table": source.table,
        "key_column": source.key,
        "as_of": run.as_of.isoformat(),
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "policy_version": run.policy.version,
        "row_count": sum(part["row_count"] for part in parts),
        "retain_until": retain_until.isoformat(),
        "created_at": now_utc_naive().isoformat() + "Z",
        "records_digest": written.hexdigest(),
        "files": parts,
    }
    store.put_manifest(batch_key, manifest)
    return manifest


def _store_part(store, batch_key: str, path: Path, rows: int, index: int, retain_until: date) -> dict:
    """The part's manifest entry, with what the store adds (on S3: the checksum S3 must keep)."""
    key = f"{batch_key}/part-{index:05d}.parquet"
    stored = store.put_file(path, key, retain_until)
    return {"key": key, "row_count": rows, "sha256": sha256_of_file(path), "bytes": path.stat().st_size, **stored}


def _fetch_rows(run: RunContext, source: ArchiveSource, columns: list[str], keys: list[int]) -> list[dict]:
    query = statement(
        run.engine,
        "fetch_rows.sql",
        expanding=("keys",),
        table=source.table,
        columns=columns,
        match=source.key,
        key=source.key,
    )
    with run.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query, {"keys": keys}).mappings()]


def _remember_copies(run: RunContext, source: ArchiveSource, batch_key: str, rows: list[dict]) -> None:
    """Which batch holds each record, with its subject's email digest (never the email)."""
    keys = [row[source.key] for row in rows]
    digests = subject_digests(run, source.table, rows)
    records = run.tables.archived_records
    with run.engine.begin() as connection:
        connection.execute(delete(records).where(records.c.table_name == source.table, records.c.record_key.in_(keys)))
        connection.execute(
            insert(records),
            [
                {"table_name": source.table, "record_key": key, "batch_key": batch_key, "subject_digest": digest}
                for key, digest in zip(keys, digests, strict=True)
            ],
        )


def _record_batch_members(run, selection_id, retain_until, source, batch_key, page_size) -> None:
    """A batch found complete in the archive (an interrupted run wrote it): index its records again."""
    for keys in _keys_to_archive(run, selection_id, retain_until, source, page_size):
        _remember_copies(
            run, source, batch_key, _fetch_rows(run, source, [source.key, *_subject_columns(run, source)], keys)
        )


def _subject_columns(run: RunContext, source: ArchiveSource) -> list[str]:
    spec = run.policy.tables[source.table]
    if spec.email:
        return [spec.email]
    membership = run.policy.bundle_membership(source.table)
    return [membership[1].link] if membership else []


def _record_batch(run, rule, store, source, retain_until, batch_key, digest, rows) -> None:
    batches = run.tables.archive_batches
    with run.engine.begin() as connection:
        connection.execute(delete(batches).where(batches.c.batch_key == batch_key, batches.c.verified_at.is_(None)))
        already = connection.execute(select(batches.c.batch_key).where(batches.c.batch_key == batch_key)).scalar()
        if already is None:
            connection.execute(
                insert(batches).values(
                    batch_key=batch_key,
                    rule=rule.id,
                    table_name=source.table,
                    retain_until=retain_until,
                    as_of=run.as_of_naive,
                    dag_id=run.dag_id,
                    run_id=run.run_id,
                    policy_version=run.policy.version,
                    uri=f"{store.uri}/{batch_key}",
                    row_count=rows,
                    records_digest=digest,
                )
            )


def verify_archive(run: RunContext, rule: Rule) -> dict:
    """Check every batch of this run against its manifest and its candidates; only then mark it verified."""
    from lifecycle.gates import validate_frame

    store = open_archive_store(run.archive_uri, run.s3_options)
    batches = _unverified_batches(run, rule)
    summary = [_check_batch(run, store, batch) for batch in batches]
    if summary:
        import pandas as pd

        validate_frame(
            pd.DataFrame(summary),
            [
                {
                    "type": "expect_column_pair_values_to_be_equal",
                    "column_A": "candidate_rows",
                    "column_B": "manifest_rows",
                },
                {
                    "type": "expect_column_pair_values_to_be_equal",
                    "column_A": "candidate_rows",
                    "column_B": "indexed_rows",
                },
                {
                    "type": "expect_column_pair_values_to_be_equal",
                    "column_A": "candidate_digest",
                    "column_B": "manifest_digest",
                },
                {"type": "expect_column_values_to_be_in_set", "column": "parts_match", "value_set": [True]},
            ],
            gate=f"{rule.id}/archive",
            artifact_path=run.artifact_path(rule, "gate-archive.json"),
        )
    _mark_verified(run, rule, [batch["batch_key"] for batch in batches])
    return {"rule": rule.id, "verified_batches": len(batches), "rows": sum(b["row_count"] for b in batches)}


def _unverified_batches(run: RunContext, rule: Rule) -> list[dict]:
    batches = run.tables.archive_batches
    with run.engine.connect() as connection:
        rows = connection.execute(
            select(batches).where(
                batches.c.dag_id == run.dag_id,
                batches.c.run_id == run.run_id,
                batches.c.rule == rule.id,
                batches.c.verified_at.is_(None),
            )
        ).mappings()
        return [dict(row) for row in rows]


def _check_batch(run: RunContext, store, batch: dict) -> dict:
    manifest = store.read_manifest(batch["batch_key"]) or {}
    files = manifest.get("files", [])
    records = run.tables.archived_records
    with run.engine.connect() as connection:
        indexed = connection.execute(
            select(func.count()).select_from(records).where(records.c.batch_key == batch["batch_key"])
        ).scalar_one()
    return {
        "batch_key": batch["batch_key"],
        "candidate_rows": batch["row_count"],
        "manifest_rows": manifest.get("row_count", -1),
        "indexed_rows": indexed,
        "candidate_digest": batch["records_digest"],
        "manifest_digest": manifest.get("records_digest", ""),
        "parts_match": bool(files)
        and all(store.part_matches(f["key"], f["sha256"], f["bytes"], f.get("s3_checksum_sha256")) for f in files),
    }


def _mark_verified(run: RunContext, rule: Rule, batch_keys: list[str]) -> None:
    """Verified batches, and one audit event per record archived, in one transaction per batch."""
    batches, records, audit = run.tables.archive_batches, run.tables.archived_records, run.tables.audit_events
    for batch_key in batch_keys:
        with run.engine.begin() as connection:
            connection.execute(
                update(batches).where(batches.c.batch_key == batch_key).values(verified_at=now_utc_naive())
            )
            events = select(
                literal(now_utc_naive()),
                literal(run.dag_id),
                literal(run.run_id),
                literal(rule.id),
                literal("archived"),
                records.c.table_name,
                records.c.record_key,
                literal(run.policy.version),
                records.c.batch_key,
                literal(run.as_of_naive),
            ).where(and_(records.c.batch_key == batch_key))
            connection.execute(insert(audit).from_select(AUDIT_COLUMNS, events))
