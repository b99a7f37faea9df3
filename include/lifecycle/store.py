"""The pipeline's own tables, inside the application database: a schema of their own on
PostgreSQL, `lifecycle_`-prefixed tables elsewhere. They hold decisions, archive batches, the
audit trail and holds, never a person's data (emails only as declared legal holds)."""

from __future__ import annotations

import copy
from functools import cache

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    inspect,
)
from sqlalchemy.schema import CreateSchema

from lifecycle.locks import exclusive
from lifecycle.sql import render

POSTGRES_SCHEMA = "lifecycle"
# How long a run waits for another one creating the pipeline's tables (the runs of a first backfill).
CREATE_WAIT_SECONDS = 60
BATCH_KEY = String(300)


class LifecycleTables:
    def __init__(self, schema: str | None):
        prefix = "" if schema else "lifecycle_"
        self.metadata = MetaData(schema=schema)
        m = self.metadata
        self.runs = Table(
            f"{prefix}runs",
            m,
            Column("dag_id", String(250), primary_key=True),
            Column("run_id", String(250), primary_key=True),
            Column("as_of", DateTime, nullable=False),
            Column("policy_version", String(64), nullable=False),
            Column("started_at", DateTime, nullable=False),
            Column("finished_at", DateTime),
            Column("state", String(16), nullable=False),
            Column("summary", Text),
        )
        self.selections = Table(
            f"{prefix}selections",
            m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("dag_id", String(250), nullable=False),
            Column("run_id", String(250), nullable=False),
            Column("rule", String(64), nullable=False),
            Column("as_of", DateTime, nullable=False),
            Column("policy_version", String(64), nullable=False),
            Column("created_at", DateTime, nullable=False),
            Column("table_name", String(64)),  # the rule's table, for the audit trail
            Column("table_rows", BigInteger),
            Column("counts", Text),
            # The last step completed: selected, gated, archived, archive_verified, erased, erase_verified.
            Column("stage", String(20), nullable=False, default="selected"),
            UniqueConstraint("dag_id", "run_id", "rule"),
        )
        self.candidates = Table(
            f"{prefix}candidates",
            m,
            Column("selection_id", Integer, primary_key=True, autoincrement=False),
            Column("record_key", BigInteger, primary_key=True, autoincrement=False),
            Column("decision", String(12), nullable=False),  # due | held | invalid
            Column("reason", String(120)),
            Column("anchor_epoch", BigInteger),
            Column("due_epoch", BigInteger),
            Column("retain_until", Date),
            Column("archive_batch", BATCH_KEY),
            # pending | erased | skipped | failed; a notice: emailed | undeliverable | deferred | skipped
            Column("state", String(16), nullable=False),
        )
        self.archive_batches = Table(
            f"{prefix}archive_batches",
            m,
            Column("batch_key", BATCH_KEY, primary_key=True),
            Column("rule", String(64), nullable=False),
            Column("table_name", String(64), nullable=False),
            Column("retain_until", Date, nullable=False),
            Column("as_of", DateTime, nullable=False),
            Column("dag_id", String(250), nullable=False),
            Column("run_id", String(250), nullable=False),
            Column("policy_version", String(64), nullable=False),
            Column("uri", Text, nullable=False),
            Column("row_count", BigInteger, nullable=False),
            Column("records_digest", String(64), nullable=False),
            Column("verified_at", DateTime),
            Column("purged_at", DateTime),
        )
        self.archived_records = Table(
            f"{prefix}archived_records",
            m,
            Column("table_name", String(64), primary_key=True),
            Column("record_key", BigInteger, primary_key=True, autoincrement=False),
            Column("batch_key", BATCH_KEY, nullable=False, index=True),
            # SHA-256 of the trimmed, lower-cased email of the record's subject: lets a hold
            # reach the archive without keeping the address.
            Column("subject_digest", String(64)),
        )
        # The erase step's plan and audit trail: the key ranges of a selection's due candidates, one
        # erase transaction each, done when recorded_at is set. A due candidate still pending in a done
        # range was erased by it (those left in place are marked skipped or failed in the same transaction).
        self.erasures = Table(
            f"{prefix}erasures",
            m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("selection_id", Integer, nullable=False, index=True),
            Column("key_from", BigInteger, nullable=False),
            Column("key_to", BigInteger, nullable=False),
            Column("recorded_at", DateTime),
        )
        # Every other audited action, one row per row: purges, and the rows of a smicer's bundle
        # erased or pseudonymised with them. (Archived records are audited by their verified batch.)
        self.audit_events = Table(
            f"{prefix}audit_events",
            m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("recorded_at", DateTime, nullable=False),
            Column("dag_id", String(250), nullable=False),
            Column("run_id", String(250), nullable=False),
            Column("rule", String(64), nullable=False),
            Column("action", String(16), nullable=False),  # archived | erased | pseudonymised | purged
            Column("table_name", String(64)),
            Column("record_key", BigInteger),
            Column("policy_version", String(64), nullable=False),
            Column("archive_batch", BATCH_KEY),
            Column("as_of", DateTime, nullable=False),
            Index(f"{prefix}audit_events_record", "table_name", "record_key"),
        )
        # The reactivation ledger: one row per smicer and inactivity cycle, never a person's data.
        # States: deferred (tried, nothing recorded) -> pending (intent recorded before sending) ->
        # sent | undeliverable (the notice, dated notice_as_of) -> responded | erased (cycle closed).
        self.reactivation_notices = Table(
            f"{prefix}reactivation_notices",
            m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("rule", String(64), nullable=False),
            Column("record_key", BigInteger, nullable=False),  # the smicer
            Column("cycle", Integer, nullable=False),
            Column("inactive_since", DateTime, nullable=False),  # the last activity the cycle follows
            Column("state", String(16), nullable=False),
            Column("notice_as_of", DateTime, nullable=False),  # the notice's date: its grace counts from here
            Column("message_id", String(250)),
            Column("channel", String(16)),  # the mailer that took it: outbox | smtp
            Column("language", String(8)),
            Column("attempts", Integer, nullable=False),
            Column("outcome", String(120)),  # how the last attempt ended: codes and reasons, no addresses
            Column("dag_id", String(250), nullable=False),
            Column("run_id", String(250), nullable=False),  # the run of the last attempt
            Column("recorded_at", DateTime, nullable=False),
            Column("handed_over_at", DateTime),  # the message left for the mail server or the outbox
            Column("sent_at", DateTime),
            Column("closed_at", DateTime),
            Column("closed_run_id", String(250)),
            UniqueConstraint("rule", "record_key", "cycle"),
            Index(f"{prefix}reactivation_notices_state", "rule", "state"),
        )
        # One row per request of a data subject carried out (or refused) by the subject_request DAG:
        # its outcome and certificate (counts by table, archive batches), never the address.
        self.subject_requests = Table(
            f"{prefix}subject_requests",
            m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("dag_id", String(250), nullable=False),
            Column("run_id", String(250), nullable=False),
            Column("kind", String(20), nullable=False),
            Column("request_id", BigInteger),  # the application's rights_requests row served, if named
            Column("as_of", DateTime, nullable=False),
            Column("policy_version", String(64), nullable=False),
            Column("outcome", String(16), nullable=False),  # done | refused | nothing found
            Column("reason", Text),
            Column("certificate", Text),  # JSON: what was done, per table; no personal data
            Column("recorded_at", DateTime, nullable=False),
            UniqueConstraint("dag_id", "run_id"),
        )
        # Keyed hashes (HMAC-SHA-256) of erased and objecting addresses: a later import is checked
        # against them without the address being kept (lifecycle.suppression).
        self.suppressions = Table(
            f"{prefix}suppressions",
            m,
            Column("digest", String(64), primary_key=True),
            Column("key_id", String(16), nullable=False),  # which key made the digest
            Column("reason", String(16), nullable=False),  # erased | objection
            Column("added_at", DateTime, nullable=False),
            Column("dag_id", String(250), nullable=False),
            Column("run_id", String(250), nullable=False),
        )
        self.legal_holds = Table(
            f"{prefix}legal_holds",
            m,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("email_normalized", String(320)),
            Column("table_name", String(64)),
            Column("record_key", BigInteger),
            Column("reason", Text, nullable=False),
            Column("until", Date),
            Column("created_at", DateTime, nullable=False),
            Column("lifted_at", DateTime),
            Column("placed_by", Text),  # who placed and who lifted the hold: operators, never a subject
            Column("lifted_by", Text),
            Column("lift_reason", Text),
        )

        # The whole audit trail, one row per audited record (a view; not part of `metadata`).
        self.audit_trail = Table(
            f"{prefix}audit_trail",
            MetaData(schema=schema),
            *(Column(c.name, c.type) for c in self.audit_events.columns if c.name != "id"),
        )

    def qualified(self, table: Table) -> str:
        return f"{table.schema}.{table.name}" if table.schema else table.name

    def with_scratch_candidates(self) -> LifecycleTables:
        """These tables, `candidates` being a temporary table of the same columns and no key: a dry
        run's decisions, written without a log or an index, seen by its own session only."""
        scratch = copy.copy(self)
        columns = (Column(c.name, c.type, nullable=c.nullable) for c in self.candidates.columns)
        scratch.candidates = Table("lifecycle_dry_run_candidates", MetaData(), *columns, prefixes=["TEMPORARY"])
        return scratch


@cache
def _tables_for(schema: str | None) -> LifecycleTables:
    return LifecycleTables(schema)


def lifecycle_tables(engine: Engine) -> LifecycleTables:
    return _tables_for(POSTGRES_SCHEMA if engine.dialect.name == "postgresql" else None)


def ensure_lifecycle_tables(engine: Engine) -> LifecycleTables:
    """Create the pipeline's tables where missing (idempotent; never touches application tables), one
    run at a time: runs starting together on a database never run before would create them twice."""
    tables = lifecycle_tables(engine)
    with exclusive(engine, "lifecycle-create-tables", CREATE_WAIT_SECONDS) as alone:
        if not alone:
            raise TimeoutError(f"another run has been creating the pipeline's tables for {CREATE_WAIT_SECONDS} s")
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(CreateSchema(POSTGRES_SCHEMA, if_not_exists=True))
            tables.metadata.create_all(connection, checkfirst=True)
            _add_missing_columns(connection, tables)
            if not inspect(connection).has_table(tables.audit_trail.name, schema=tables.audit_trail.schema):
                connection.exec_driver_sql(render(engine, AUDIT_TRAIL_VIEW, t=_qualified_names(tables)))
    return tables


def _qualified_names(tables: LifecycleTables) -> dict[str, str]:
    names = ("selections", "candidates", "erasures", "audit_events", "archived_records", "archive_batches")
    names += ("audit_trail",)
    return {name: tables.qualified(getattr(tables, name)) for name in names}


def _add_missing_columns(connection, tables: LifecycleTables) -> None:
    """Tables made by an earlier version get the nullable columns added since (no other migration)."""
    inspector = inspect(connection)
    for table in tables.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name, schema=table.schema)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=connection.dialect)
                name = connection.dialect.identifier_preparer.quote(column.name)
                connection.exec_driver_sql(f"ALTER TABLE {tables.qualified(table)} ADD COLUMN {name} {kind}")


def make_engine(url: str) -> Engine:
    """An engine for the application database; SQLite gets foreign keys and a busy timeout. MariaDB
    reads committed rows, as PostgreSQL does: under its default (repeatable read) the select step's
    INSERT ... SELECT would lock every row it reads, and the application would wait on them."""
    from sqlalchemy import create_engine

    options = {"isolation_level": "READ COMMITTED"} if url.startswith("mysql") else {}
    engine = create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url), **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _connect_args(url: str) -> dict:
    """Every session reads and writes instants in UTC. PostgreSQL's JIT compilation is off: it costs
    each erase transaction's statement tens of milliseconds, more than the statement itself."""
    if url.startswith("sqlite"):
        return {"timeout": 30}
    if url.startswith("postgresql"):
        return {"options": "-c timezone=UTC -c jit=off"}
    if url.startswith("mysql"):
        return {"init_command": "SET time_zone = '+00:00'"}
    return {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    from lifecycle import sqlite_functions

    sqlite_functions.register(dbapi_connection)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

AUDIT_TRAIL_VIEW = """\
{# The audit trail, one row per audited record: the per-row events (rows erased or pseudonymised
   with a smicer, purges); the records each verified archive batch holds (run, rule, policy version
   from the batch); and the records each erase transaction erased (the due candidates of its key
   range it did not leave in place; run, rule, table and policy version from their selection; the
   archive batch holding their copy, if any). Queried by table and key; no personal data. #}
CREATE VIEW {{ t.audit_trail }} AS
SELECT recorded_at, dag_id, run_id, rule, action, table_name, record_key, policy_version, archive_batch, as_of
  FROM {{ t.audit_events }}
UNION ALL
SELECT ab.verified_at, ab.dag_id, ab.run_id, ab.rule, 'archived', ar.table_name, ar.record_key, ab.policy_version,
       ab.batch_key, ab.as_of
  FROM {{ t.archived_records }} ar
  JOIN {{ t.archive_batches }} ab ON ab.batch_key = ar.batch_key
 WHERE ab.verified_at IS NOT NULL
UNION ALL
SELECT e.recorded_at, s.dag_id, s.run_id, s.rule, 'erased', s.table_name, c.record_key, s.policy_version,
       ar.batch_key, s.as_of
  FROM {{ t.erasures }} e
  JOIN {{ t.selections }} s ON s.id = e.selection_id
  JOIN {{ t.candidates }} c
    ON c.selection_id = e.selection_id AND c.record_key >= e.key_from AND c.record_key < e.key_to
  LEFT JOIN {{ t.archived_records }} ar ON ar.table_name = s.table_name AND ar.record_key = c.record_key
 WHERE e.recorded_at IS NOT NULL AND c.decision = 'due' AND c.state = 'pending'
"""
