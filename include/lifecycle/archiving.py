"""Steps 3 and 4 of an archiving rule: copy the due records into batches (one per table and
retain_until), then verify each batch before anything may be erased. A batch's rows stream from one
statement joining the table to the staged candidates into Parquet as Arrow record batches, and are
indexed by one statement: no record key passes through Python to select them.

Runs at the same time (a backfill, a manual run during the nightly one, a subject's erasure) may
archive the same records: each record goes into one batch, claimed in the index by one archive step
at a time per table, and any run needing a batch another run wrote verifies it."""

from __future__ import annotations

import hashlib
import tempfile
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import Date, TextClause, bindparam, delete, func, insert, select, update

from lifecycle.locks import exclusive
from lifecycle.policy import Policy, Rule
from lifecycle.rows import ArrowConverter, email_strip, key_lines, record_batches
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.select import EVERY_KEY, KeyRange, Selection
from lifecycle.sql import statement
from lifecycle.step import Step
from lifecycle.stores import ArchiveError, open_archive_store, sha256_of_file

PART_ROWS = 500_000
FORMAT_VERSION = 1
FIRST_KEY = -(2**63)
# How long an archive step waits for another one writing a batch of the same table.
CLAIM_WAIT_SECONDS = 900


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


def archive_due(run: RunContext, rule: Rule, key_range: KeyRange = EVERY_KEY) -> dict:
    """Write a batch for every (table, retain_until) whose due records (in `key_range`, when several
    tasks share the step) have no verified copy yet."""
    selection = Selection.of(run, rule)
    store = open_archive_store(run.archive_uri, run.s3_options)
    batches = []
    with run.engine.connect() as connection:
        retain_dates = selection.retain_dates(connection, key_range)
    for retain_until in retain_dates:
        for source in archive_sources(run.policy, rule):
            batch = _archive_group(rule, store, BatchRows(run, source, selection.id, retain_until, key_range))
            if batch:
                batches.append(batch)
    return {"rule": rule.id, "batches": len(batches), "rows": sum(rows for _, rows in batches)}


@dataclass(frozen=True)
class BatchRows:
    """The rows of one batch: a source's due rows for one retain_until (and key range of their
    candidates) that no verified batch holds, selected in the database by the statements below
    (BATCH_ROWS and the others)."""

    run: RunContext
    source: ArchiveSource
    selection_id: int
    retain_until: date
    key_range: KeyRange = EVERY_KEY

    def statement(self, name: str, **context) -> TextClause:
        tables, source = self.run.tables, self.source
        batch = {
            "table": source.table,
            "key": source.key,
            "match": source.match,
            "candidates": tables.qualified(tables.candidates),
            "archived_records": tables.qualified(tables.archived_records),
            "archive_batches": tables.qualified(tables.archive_batches),
            "bounds": list(self.key_range.params()),
            **_subject(self.run.policy, source.table),
        }
        clause = statement(self.run.engine, name, a=batch, **context)
        return clause.bindparams(bindparam("retain_until", type_=Date()))

    def params(self, **values) -> dict:
        return {
            "selection_id": self.selection_id,
            "retain_until": self.retain_until,
            "table_name": self.source.table,
            **self.key_range.params(),
            **values,
        }


def _subject(policy: Policy, table: str) -> dict:
    """Where the email of a row's subject is: its own column, or its owning smicer's."""
    spec = policy.tables[table]
    if spec.email:
        return {"email": spec.email, "owner": None}
    membership = policy.bundle_membership(table)
    if membership is None or not policy.tables[membership[0].root].email:
        return {"email": None, "owner": None}
    bundle, member = membership
    root = policy.tables[bundle.root]
    return {"email": None, "owner": {"table": root.name, "key": root.key, "link": member.link, "email": root.email}}


@dataclass(frozen=True)
class Export:
    """A batch's rows as Parquet parts in a scratch folder, with the digest of their keys."""

    parts: list[tuple[Path, int]]
    digest: str

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.parts)


class _ClaimedMeanwhile(Exception):
    """Another run's batch took some of the exported rows since the export."""


def _archive_group(rule: Rule, store, rows: BatchRows) -> tuple[str, int] | None:
    """Export the batch's rows; then, alone among the archive steps of its table, index them and write
    the batch unless the archive holds it complete. Rows another run's batch took since the export
    are left to it, and the others exported again."""
    while True:
        with tempfile.TemporaryDirectory(prefix="archive-") as scratch:
            export = _export(rows, Path(scratch))
            if export.rows == 0:
                if rows.source.is_root:
                    with rows.run.engine.connect() as connection:
                        _check_candidates(rows, 0, _unarchived_candidates(connection, rows))
                return None
            # Named by what it holds, not by the run: a run that dies before recording a batch leaves it
            # for the next, which finds it complete under the same name instead of writing it again.
            table, retain_until = rows.source.table, rows.retain_until.isoformat()
            batch_key = f"{table}/retain_until={retain_until}/{rule.id}-{export.digest[:16]}"
            try:
                with _alone_archiving(rows.run, table):
                    _index_records(rows, batch_key, export.rows)
                    existing = store.read_manifest(batch_key)
                    if existing is None or existing.get("records_digest") != export.digest:
                        _write_batch(rule, store, rows, batch_key, export)
                    _record_batch(rule, store, rows, batch_key, export)
            except _ClaimedMeanwhile:
                continue
        return batch_key, export.rows


@contextmanager
def _alone_archiving(run: RunContext, table: str):
    """From indexing a batch's rows to recording it, no other archive step indexes rows of `table`:
    rows indexed for a batch not recorded are another run's only while it is still writing it."""
    with exclusive(run.engine, f"lifecycle-archive-{table}", CLAIM_WAIT_SECONDS) as alone:
        if not alone:
            raise TimeoutError(f"{table}: another archive step has been writing a batch for {CLAIM_WAIT_SECONDS} s")
        yield


def _export(rows: BatchRows, scratch: Path) -> Export:
    """Stream the batch's rows from the database into Parquet parts, hashing their keys as they pass."""
    engine, source = rows.run.engine, rows.source
    converter = ArrowConverter.for_table(engine, source.table, source.key)
    query = rows.statement(BATCH_ROWS, columns=converter.columns)
    digest = hashlib.sha256()
    stream = record_batches(engine, query, rows.params(after=FIRST_KEY), converter)
    with _PartWriter(scratch, converter.schema) as parts, closing(stream):
        for batch in stream:
            digest.update(key_lines(batch.column(source.key)))
            parts.write(batch)
    return Export(parts.parts, digest.hexdigest())


class _PartWriter:
    """Parquet parts (zstd) of at most PART_ROWS rows each, a row group per record batch."""

    def __init__(self, folder: Path, schema):
        self.folder = folder
        self.schema = schema
        self.parts: list[tuple[Path, int]] = []
        self.writer = None

    def __enter__(self) -> _PartWriter:
        return self

    def write(self, batch) -> None:
        while batch.num_rows:
            if self.writer is None or self.parts[-1][1] == PART_ROWS:
                self._next_part()
            path, rows = self.parts[-1]
            piece = batch.slice(0, PART_ROWS - rows)
            self.writer.write_batch(piece)
            self.parts[-1] = (path, rows + piece.num_rows)
            batch = batch.slice(piece.num_rows)

    def _next_part(self) -> None:
        import pyarrow.parquet as pq

        self.__exit__()
        path = self.folder / f"part-{len(self.parts):05d}.parquet"
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.parts.append((path, 0))

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()


def _unarchived_candidates(connection, rows: BatchRows) -> int:
    return connection.execute(rows.statement(BATCH_CANDIDATES), rows.params()).scalar_one()


def _check_candidates(rows: BatchRows, found: int, expected: int) -> None:
    """Every due candidate of the rule's own table not in a batch yet (`expected`) has its row among
    the `found` (none was deleted meanwhile)."""
    if found != expected:
        raise ArchiveError(
            f"{rows.source.table}, retain_until {rows.retain_until}: {found} rows to archive for {expected} "
            "candidates (changed meanwhile)"
        )


def _index_records(rows: BatchRows, batch_key: str, exported: int) -> None:
    """Which batch holds each record, with its subject's email digest computed by the database, in one
    transaction; rows deleted since the export fail it, rows another run's batch took since undo it."""
    params = rows.params(batch_key=batch_key, strip=email_strip(rows.run.engine.dialect.name))
    with rows.run.engine.begin() as connection:
        connection.execute(rows.statement(UNINDEX_BATCH), params)
        expected = _unarchived_candidates(connection, rows) if rows.source.is_root else None
        indexed = connection.execute(rows.statement(INDEX_BATCH), params).rowcount
        if expected is not None:
            _check_candidates(rows, indexed, expected)
        if indexed != exported:
            raise _ClaimedMeanwhile
        if rows.run.engine.dialect.name == "postgresql":
            # The erase step's re-check joins these rows: the planner must see them.
            connection.exec_driver_sql(f"ANALYZE {rows.run.tables.qualified(rows.run.tables.archived_records)}")


def _write_batch(rule: Rule, store, rows: BatchRows, batch_key: str, export: Export) -> None:
    """The parts, then the manifest: a batch with a manifest is complete."""
    run = rows.run
    parts = [
        _store_part(store, batch_key, path, count, index, rows.retain_until)
        for index, (path, count) in enumerate(export.parts)
    ]
    manifest = {
        "format_version": FORMAT_VERSION,
        "rule": rule.id,
        "table": rows.source.table,
        "key_column": rows.source.key,
        "as_of": run.as_of.isoformat(),
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "policy_version": run.policy.version,
        "row_count": export.rows,
        "retain_until": rows.retain_until.isoformat(),
        "created_at": now_utc_naive().isoformat() + "Z",
        "records_digest": export.digest,
        "files": parts,
    }
    store.put_manifest(batch_key, manifest)


def _store_part(store, batch_key: str, path: Path, rows: int, index: int, retain_until: date) -> dict:
    """The part's manifest entry, with what the store adds (on S3: the checksum S3 must keep)."""
    key = f"{batch_key}/part-{index:05d}.parquet"
    stored = store.put_file(path, key, retain_until)
    return {"key": key, "row_count": rows, "sha256": sha256_of_file(path), "bytes": path.stat().st_size, **stored}


def _record_batch(rule: Rule, store, rows: BatchRows, batch_key: str, export: Export) -> None:
    run = rows.run
    batches = run.tables.archive_batches
    with run.engine.begin() as connection:
        connection.execute(delete(batches).where(batches.c.batch_key == batch_key, batches.c.verified_at.is_(None)))
        already = connection.execute(select(batches.c.batch_key).where(batches.c.batch_key == batch_key)).scalar()
        if already is None:
            connection.execute(
                insert(batches).values(
                    batch_key=batch_key,
                    rule=rule.id,
                    table_name=rows.source.table,
                    retain_until=rows.retain_until,
                    as_of=run.as_of_naive,
                    dag_id=run.dag_id,
                    run_id=run.run_id,
                    policy_version=run.policy.version,
                    uri=f"{store.uri}/{batch_key}",
                    row_count=export.rows,
                    records_digest=export.digest,
                )
            )


def verify_archive(run: RunContext, rule: Rule) -> dict:
    """Check every batch holding this run's records that no run has verified yet against its manifest
    and its candidates; only then mark it verified. A batch that fails is unrecorded: its records are
    archived again by the next run."""
    from lifecycle.expectations import validate_frame

    store = open_archive_store(run.archive_uri, run.s3_options)
    batches = _unverified_batches(run, rule)
    summary = [_check_batch(run, store, batch) for batch in batches]
    _unrecord(run, [check["batch_key"] for check in summary if not _intact(check)])
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
    _mark_verified(run, [batch["batch_key"] for batch in batches])
    return {"rule": rule.id, "verified_batches": len(batches), "rows": sum(b["row_count"] for b in batches)}


def _unverified_batches(run: RunContext, rule: Rule) -> list[dict]:
    """The batches holding the run's due records that no run has verified yet: those it wrote, and those
    another run wrote for some of them (at the same time, or before it was interrupted)."""
    tables = run.tables
    names = {name: tables.qualified(getattr(tables, name)) for name in ("archive_batches", "archived_records")}
    query = statement(
        run.engine,
        BATCHES_TO_VERIFY,
        sources=archive_sources(run.policy, rule),
        candidates=tables.qualified(tables.candidates),
        **names,
    )
    with run.engine.connect() as connection:
        rows = connection.execute(query, {"selection_id": Selection.of(run, rule).id}).mappings()
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


def _intact(check: dict) -> bool:
    """What the archive gate expects of a batch (verify_archive's expectations)."""
    rows_agree = check["candidate_rows"] == check["manifest_rows"] == check["indexed_rows"]
    return rows_agree and check["candidate_digest"] == check["manifest_digest"] and check["parts_match"]


def _unrecord(run: RunContext, batch_keys: list[str]) -> None:
    """Batches failing verification (unless another run verified them meanwhile) no longer hold their
    records: the next run archives them again."""
    batches, records = run.tables.archive_batches, run.tables.archived_records
    with run.engine.begin() as connection:
        for batch_key in batch_keys:
            unverified = (batches.c.batch_key == batch_key, batches.c.verified_at.is_(None))
            if connection.execute(delete(batches).where(*unverified)).rowcount:
                connection.execute(delete(records).where(records.c.batch_key == batch_key))


def _mark_verified(run: RunContext, batch_keys: list[str]) -> None:
    """Verified batches: from now on their records may be erased, and the audit trail counts them archived
    (once, whichever run verified them first)."""
    batches = run.tables.archive_batches
    with run.engine.begin() as connection:
        connection.execute(
            update(batches)
            .where(batches.c.batch_key.in_(batch_keys), batches.c.verified_at.is_(None))
            .values(verified_at=now_utc_naive())
        )


def _would_archive(scratch) -> dict:
    """The rows each batch would hold: one batch per archived table and retain_until."""
    retain_dates = scratch.selection.retain_dates(scratch.connection)
    sources = archive_sources(scratch.run.policy, scratch.rule)
    batch_rows = [
        scratch.rows_of_due(source.table, source.match, retain_until)
        for retain_until in retain_dates
        for source in sources
    ]
    return {"archived": sum(batch_rows), "batches": sum(1 for rows in batch_rows if rows)}


def _would_verify(scratch) -> dict:
    return {"verified_batches": scratch.would_do["archive"]["batches"]}


STEPS = {
    "archive": Step("archive", archive_due, _would_archive, "archived", dry_run_columns=("archived",)),
    "verify_archive": Step("verify_archive", verify_archive, _would_verify, "archive_verified"),
}


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

BATCH_CANDIDATES = """\
{# The candidates a batch of the rule's own table must hold: one row each. #}
{% import "archive.sql" as m %}
SELECT COUNT(*)
  FROM {{ a.candidates }} c
 WHERE {{ m.due(a) }}
   AND {{ m.unarchived(a, "c.record_key") }}
"""

INDEX_BATCH = """\
{# Which batch holds each of its rows, with the digest of its subject's email (never the email); in
   key order, which makes the inserts into the index's primary key sequential. #}
{% import "archive.sql" as m %}
INSERT INTO {{ a.archived_records }} (table_name, record_key, batch_key, subject_digest)
SELECT :table_name, t.{{ a.key | q }}, :batch_key, {{ m.subject_digest(a) }}
{{ m.batch_rows(a, with_owner=true) }}
 ORDER BY t.{{ a.key | q }}
"""

BATCH_ROWS = """\
{# The rows of an archive batch in key order, after :after (where a stream resumes). #}
{% import "archive.sql" as m %}
SELECT {% for column in columns %}t.{{ column | q }}{% if not loop.last %}, {% endif %}{% endfor %}

{{ m.batch_rows(a) }}
   AND t.{{ a.key | q }} > :after
 ORDER BY t.{{ a.key | q }}
"""

UNINDEX_BATCH = """\
{# A batch's rows indexed under a batch never recorded (a run interrupted while writing it): indexed
   again by this one. #}
{% import "archive.sql" as m %}
DELETE FROM {{ a.archived_records }}
 WHERE table_name = :table_name
   AND record_key IN (SELECT t.{{ a.key | q }}
{{ m.batch_rows(a) }})
"""

BATCHES_TO_VERIFY = """\
{# The unverified batches holding a selection's due records: a source's rows whose candidate (the row
   itself, or the smicer a bundle member's link names) is due. #}
SELECT ab.batch_key, ab.row_count, ab.records_digest
  FROM {{ archive_batches }} ab
 WHERE ab.verified_at IS NULL
   AND (
{% for source in sources %}
       EXISTS (SELECT 1 FROM {{ archived_records }} ar
                WHERE ar.batch_key = ab.batch_key AND ar.table_name = '{{ source.table }}'
                  AND ar.record_key IN (SELECT t.{{ source.key | q }} FROM {{ source.table | q }} t
                                          JOIN {{ candidates }} c ON c.record_key = t.{{ source.match | q }}
                                         WHERE c.selection_id = :selection_id AND c.decision = 'due'))
{% if not loop.last %}    OR {% endif %}
{% endfor %}
       )
 ORDER BY ab.batch_key
"""
