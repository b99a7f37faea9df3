"""Evidence out of the cold archive, on demand: a whole batch, or one person's archived records
(found through archived_records.subject_digest: the address itself is never stored). The first
call asks S3 to restore the batch's cold parts; once they are readable (at once for GLACIER_IR,
hours later for GLACIER and DEEP_ARCHIVE: call again), they are copied, each checked against the
manifest's SHA-256, into a local folder. Every call is safe to repeat.

    python -m lifecycle.restore ARCHIVE_URI --batch KEY [--batch KEY ...] --to file:///abs/dir
    python -m lifecycle.restore ARCHIVE_URI --email ADDRESS --db-url URL --to file:///abs/dir
        [--tier Bulk|Standard|Expedited] [--days 3] [--endpoint-url URL] [--region eu-west-3]

A batch lands in <dir>/<batch key>/: its parts and manifest.json, or for an address only that
person's rows (records.parquet), with restore.json saying what was copied and checked.
Exit status: 0 all copied, 75 restores still running (call again later), 1 failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy import select

from lifecycle.rows import email_digest
from lifecycle.run import now_utc_naive
from lifecycle.store import lifecycle_tables
from lifecycle.stores import MANIFEST, ArchiveError, open_archive_store, sha256_of_file
from lifecycle.stores.s3 import DEFAULT_REGION, RESTORE_TIERS, S3Options

PENDING_EXIT = 75


@dataclass(frozen=True)
class BatchRestore:
    batch_key: str
    state: str  # restoring | copied
    parts: int
    restores_started: int = 0
    records: int = 0

    @property
    def copied(self) -> bool:
        return self.state == "copied"


def subject_batches(engine, email: str) -> dict[str, list[int]]:
    """The verified, unpurged batches holding records of the address's subject, with those records' keys."""
    digest = email_digest(email)
    if digest is None:
        raise ValueError("the subject's address is empty")
    tables = lifecycle_tables(engine)
    records, batches = tables.archived_records, tables.archive_batches
    query = (
        select(records.c.batch_key, records.c.record_key)
        .join(batches, batches.c.batch_key == records.c.batch_key)
        .where(records.c.subject_digest == digest, batches.c.verified_at.is_not(None), batches.c.purged_at.is_(None))
        .order_by(records.c.batch_key, records.c.record_key)
    )
    found: dict[str, list[int]] = {}
    with engine.connect() as connection:
        for batch_key, record_key in connection.execute(query):
            found.setdefault(batch_key, []).append(record_key)
    return found


def restore_batches(
    store, requested: dict[str, list[int] | None], destination: Path, *, tier: str, days: int
) -> list[BatchRestore]:
    """Each batch restored whole (None) or for the given record keys only."""
    return [restore_batch(store, key, records, destination, tier=tier, days=days) for key, records in requested.items()]


def restore_batch(
    store, batch_key: str, records: list[int] | None, destination: Path, *, tier: str, days: int
) -> BatchRestore:
    manifest = store.read_manifest(batch_key)
    if manifest is None:
        raise ArchiveError(f"batch {batch_key} has no manifest under {store.uri} (never written, or purged)")
    parts = [part["key"] for part in manifest["files"]]
    cold = [key for key in parts if store.restore_status(key) == "archived"]
    for key in cold:
        store.start_restore(key, tier, days)
    # Asked again at once: a part in GLACIER_IR, or whose restore is done or quick, is copied on this call.
    if any(store.restore_status(key) != "available" for key in parts):
        return BatchRestore(batch_key, "restoring", len(parts), len(cold))
    copied = _copy_batch(store, manifest, batch_key, records, destination / batch_key)
    return BatchRestore(batch_key, "copied", len(parts), len(cold), copied)


def _copy_batch(store, manifest: dict, batch_key: str, records: list[int] | None, target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="restore-") as scratch:
        fetched = [_fetch_checked(store, batch_key, part, Path(scratch)) for part in manifest["files"]]
        if records is None:
            for path in fetched:
                shutil.move(path, target / path.name)
            copied = manifest["row_count"]
        else:
            copied = _write_subject_rows(fetched, manifest["key_column"], records, target / "records.parquet")
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    summary = {
        "batch_key": batch_key,
        "table": manifest["table"],
        "retain_until": manifest["retain_until"],
        "restored_at": now_utc_naive().isoformat() + "Z",
        "records": copied,
        "only_the_subjects_records": records is not None,
        "parts_checked_against_manifest_sha256": [part["key"] for part in manifest["files"]],
    }
    (target / "restore.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return copied


def _fetch_checked(store, batch_key: str, part: dict, scratch: Path) -> Path:
    local = scratch / Path(part["key"]).name
    store.fetch(part["key"], local)
    if sha256_of_file(local) != part["sha256"]:
        raise ArchiveError(f"archive part {part['key']} of batch {batch_key} does not match its manifest's SHA-256")
    return local


def _write_subject_rows(parts: list[Path], key_column: str, records: list[int], target: Path) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = pa.array(records, pa.int64())
    tables = []
    for path in parts:
        table = pq.read_table(path)
        tables.append(table.filter(pc.is_in(table[key_column], value_set=wanted)))
    rows = pa.concat_tables(tables)
    pq.write_table(rows, target, compression="zstd")
    return rows.num_rows


def local_folder(uri: str) -> Path:
    parsed = urlparse(uri)
    path = Path(unquote(parsed.path))
    if parsed.scheme != "file" or not path.is_absolute():
        raise ValueError(f"restore destination {uri!r} is not a file:///abs/dir URI")
    return path


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    options = S3Options(region=args.region, endpoint_url=args.endpoint_url)
    try:
        destination = local_folder(args.to)
        requested = _requested(args)
        store = open_archive_store(args.uri, options)
        outcomes = restore_batches(store, requested, destination, tier=args.tier, days=args.days)
    except (ArchiveError, ValueError) as error:
        print(f"restore failed: {error}", file=sys.stderr)
        return 1
    if not outcomes:
        print("nothing archived for this request")
    for outcome in outcomes:
        detail = f", {outcome.records} record(s) in {destination / outcome.batch_key}" if outcome.copied else ""
        started = f", restore started for {outcome.restores_started}" if outcome.restores_started else ""
        print(f"{outcome.batch_key}: {outcome.state} ({outcome.parts} part(s){started}{detail})")
    return 0 if all(outcome.copied for outcome in outcomes) else PENDING_EXIT


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("uri", help="the archive location: s3://bucket/prefix or file:///abs/dir")
    wanted = parser.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--batch", action="append", help="a batch key (repeatable)")
    wanted.add_argument("--email", help="the address whose archived records to restore (needs --db-url)")
    parser.add_argument("--db-url", help="the application database holding the pipeline's tables")
    parser.add_argument("--to", required=True, help="where to copy the records: file:///abs/dir")
    parser.add_argument("--tier", choices=RESTORE_TIERS, default="Bulk", help="S3 restore tier (default Bulk)")
    parser.add_argument("--days", type=int, default=3, help="days S3 keeps the restored copy (default 3)")
    parser.add_argument("--endpoint-url", help="an S3-compatible endpoint (default: AWS)")
    parser.add_argument("--region", default=DEFAULT_REGION, help=f"the client's region (default {DEFAULT_REGION})")
    args = parser.parse_args(argv)
    if args.email and not args.db_url:
        parser.error("--email needs --db-url")
    return args


def _requested(args) -> dict[str, list[int] | None]:
    if args.batch:
        return dict.fromkeys(args.batch)
    from lifecycle.store import make_engine

    engine = make_engine(args.db_url)
    try:
        return subject_batches(engine, args.email)
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
