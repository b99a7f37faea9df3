"""The erasure ledger: what each rule erased and pseudonymised in a run, written to the evidence
archive when its erase step ends. The audit trail lives inside the application database, so a
restore from a backup taken before some erasures brings their records back and rolls their audit
trail back with them; the ledger, outside it, survives, and lifecycle.replay erases again from it.

One Parquet file per run and rule, `ledger/<day>/<dag_id>/<run_id>/<rule>.parquet`, the day (UTC)
being that of the rule's first erasure in the run: a retried step rewrites the same object, and
"since a day" lists that day's objects and the later ones only. Where several tasks share a rule's
erase step by key range, each writes its own object, `<rule>.from_<key>_to_<key>.parquet`, holding
the rule's erasures in the run so far (a bundle's rows cannot be told by their smicer's key once
erased): together they hold every erasure, and the replay reads each record once. It names records by table and key,
with the run, rule, action, policy version and instant of their erasure: never their data. It is
kept in STANDARD storage (readable at once, unlike the cold archive parts) with its SHA-256."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

from sqlalchemy import func, select

from lifecycle.policy import Rule
from lifecycle.report_paths import safe_run_id
from lifecycle.rows import ArrowConverter, record_batches
from lifecycle.run import RunContext
from lifecycle.select import EVERY_KEY, KeyRange
from lifecycle.sql import statement
from lifecycle.stores import ArchiveError, open_archive_store

LEDGER_PREFIX = "ledger/"
FORMAT_VERSION = "1"
ACTIONS = ("erased", "pseudonymised")
COLUMNS = ("dag_id", "run_id", "rule", "action", "table_name", "record_key", "policy_version", "recorded_at")
# What the replay reads of each record.
RECORD_COLUMNS = ("action", "table_name", "record_key")


def export_ledger(run: RunContext, rule: Rule, key_range: KeyRange = EVERY_KEY) -> str | None:
    """Write the run's erasures of the rule to the archive, as the task erasing `key_range`; the
    object's key, or None when it erased nothing."""
    trail = run.tables.audit_trail
    of_rule = (
        trail.c.dag_id == run.dag_id,
        trail.c.run_id == run.run_id,
        trail.c.rule == rule.id,
        trail.c.action.in_(ACTIONS),
    )
    with run.engine.connect() as connection:
        first_erased = connection.execute(select(func.min(trail.c.recorded_at)).where(*of_rule)).scalar()
    if first_erased is None:
        return None
    key = ledger_key(first_erased.date(), run.dag_id, run.run_id, rule.id, key_range)
    with tempfile.TemporaryDirectory(prefix="ledger-") as scratch:
        path = Path(scratch) / "ledger.parquet"
        _write_parquet(run, rule, path)
        open_archive_store(run.archive_uri, run.s3_options).put_ledger(key, path)
    return key


def ledger_key(day: date, dag_id: str, run_id: str, rule_id: str, key_range: KeyRange = EVERY_KEY) -> str:
    low, high = (end if key is None else key for key, end in zip(key_range.bounds(), ("start", "end"), strict=True))
    share = "" if key_range == EVERY_KEY else f".from_{low}_to_{high}"
    return f"{LEDGER_PREFIX}{day.isoformat()}/{dag_id}/{safe_run_id(run_id)}/{rule_id}{share}.parquet"


def ledger_schema():
    return _converter().schema.with_metadata({"format_version": FORMAT_VERSION})


def _converter() -> ArrowConverter:
    kinds = dict.fromkeys(COLUMNS, "text") | {"record_key": "int", "recorded_at": "timestamp"}
    return ArrowConverter.of_columns("audit_trail", "record_key", kinds)


def _write_parquet(run: RunContext, rule: Rule, path: Path) -> None:
    """The rule's erasures in the run streamed from the database into one Parquet file, table by table
    (the rule's, then its bundle's), as the archive exports rows: through COPY on PostgreSQL."""
    import pyarrow.parquet as pq

    members = run.policy.bundles[rule.bundle].members if rule.bundle else ()
    query = statement(run.engine, LEDGER_ROWS, trail=run.tables.qualified(run.tables.audit_trail))
    params = {"dag_id": run.dag_id, "run_id": run.run_id, "rule": rule.id, "after": -(2**63)}
    converter, schema = _converter(), ledger_schema()
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for table in [rule.table, *(member.table for member in members)]:
            for batch in record_batches(run.engine, query, params | {"table_name": table}, converter):
                writer.write_batch(batch.replace_schema_metadata(schema.metadata))


def read_ledger(store, since: date) -> tuple[list[str], object]:
    """The keys of the ledger objects dated `since` or later, and their records as one Arrow table
    (action, table_name, record_key), each record once. An object that fails its SHA-256 check or
    is not a ledger stops the reading (ArchiveError): nothing is erased from a doubtful ledger."""
    import pyarrow as pa

    keys = store.ledger_keys(LEDGER_PREFIX, start_after=f"{LEDGER_PREFIX}{since.isoformat()}")
    schema = pa.schema([ledger_schema().field(name) for name in RECORD_COLUMNS])
    tables = []
    with tempfile.TemporaryDirectory(prefix="ledger-") as scratch:
        for index, key in enumerate(keys):
            local = Path(scratch) / f"{index}.parquet"
            store.fetch_ledger(key, local)
            tables.append(_records(key, local, schema))
    if not tables:
        return keys, schema.empty_table()
    return keys, pa.concat_tables(tables).group_by(list(RECORD_COLUMNS), use_threads=False).aggregate([])


def _records(key: str, local: Path, schema):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(local, columns=list(RECORD_COLUMNS)).cast(schema)
    except (pa.ArrowException, OSError, KeyError) as error:
        raise ArchiveError(f"ledger object {key} is not a readable ledger: {type(error).__name__}") from None


# The statements this module runs: Jinja templates (lifecycle.sql).

LEDGER_ROWS = """\
{# A run's erasures of one rule in one table, from the audit trail, in key order after :after (where
   lifecycle.rows takes up a stream again). #}
SELECT dag_id, run_id, rule, action, table_name, record_key, policy_version, recorded_at
  FROM {{ trail }}
 WHERE dag_id = :dag_id AND run_id = :run_id AND rule = :rule AND table_name = :table_name
   AND action IN ('erased', 'pseudonymised') AND record_key > :after
 ORDER BY record_key
"""
