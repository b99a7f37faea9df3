"""The archive step on its own, on three databases: each batch's rows stream from one statement into
Parquet parts (COPY read by pyarrow.csv on PostgreSQL, a server-side cursor elsewhere), and are
indexed by one statement, the subject's email digest computed by the database. The candidates are
staged here as the select step stages them, so that nothing but the archive is under test."""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import insert, select, text

from lifecycle import archiving, rows
from lifecycle.archiving import archive_due, verify_archive
from lifecycle.rows import _convert, _driver_array, email_digest
from lifecycle.stores import ArchiveError
from tests.lifecycle_helpers import POLICY, add, make_run, utc

AS_OF = utc(2026, 11, 25)
RETAIN_UNTIL = date(2030, 6, 1)
CLOSED = POLICY.rule("account-closed")
REJECTED = POLICY.rule("applications-rejected")


def stage(run, rule, keys: list[int], retain_until: date = RETAIN_UNTIL) -> None:
    """The selection of `rule` in `run`, with `keys` due and pending, as the select step leaves it."""
    tables = run.tables
    with run.engine.begin() as connection:
        selection_id = connection.execute(
            insert(tables.selections).values(
                dag_id=run.dag_id,
                run_id=run.run_id,
                rule=rule.id,
                as_of=run.as_of_naive,
                policy_version=run.policy.version,
                created_at=run.as_of_naive,
                stage="gated",
            )
        ).inserted_primary_key[0]
        connection.execute(
            insert(tables.candidates),
            [
                {
                    "selection_id": selection_id,
                    "record_key": key,
                    "decision": "due",
                    "anchor_epoch": 0,
                    "due_epoch": 0,
                    "retain_until": retain_until,
                    "state": "pending",
                }
                for key in keys
            ],
        )


def closed_smicer(engine, **values) -> int:
    return add(engine, "smicers", **{"closed_at": datetime(2025, 6, 1)} | values)


def manifests(tmp_path: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["table"]: json.loads(p.read_text()) for p in tmp_path.rglob("manifest.json")}


def archived(tmp_path: Path, table: str) -> pa.Table:
    manifest = manifests(tmp_path / "archive")[table]
    return pa.concat_tables(pq.read_table(tmp_path / "archive" / part["key"]) for part in manifest["files"])


def index(run) -> dict[tuple[str, int], tuple[str, str | None]]:
    records = run.tables.archived_records
    with run.engine.connect() as connection:
        found = connection.execute(
            select(records.c.table_name, records.c.record_key, records.c.batch_key, records.c.subject_digest)
        ).all()
    return {(table, key): (batch, digest) for table, key, batch, digest in found}


def test_subject_digests_computed_by_the_database_equal_email_digest(engine, tmp_path):
    emails = ["  Mixed.Case@Example.ORG  ", "\tTab.Case@Example.org\r\n", "\u00a0Élodie@Exemple.FR\u3000", "   ", None]
    smicers = {closed_smicer(engine, email=email): email for email in emails}
    logs = {add(engine, "connection_logs", smicer_id=s, connected_at=datetime(2025, 5, 1)): s for s in smicers}
    applications = {
        add(engine, "test_applications", smicer_id=s, decision="rejected", test_date=date(2025, 1, 1)): s
        for s in smicers
    }
    run = make_run(engine, AS_OF, tmp_path)
    stage(run, CLOSED, list(smicers))
    stage(run, REJECTED, list(applications), date(2030, 1, 1))

    archive_due(run, CLOSED)
    archive_due(run, REJECTED)

    digests = {record: digest for record, (_, digest) in index(run).items()}
    expected = {("smicers", key): email_digest(email) for key, email in smicers.items()}
    expected |= {("connection_logs", key): email_digest(smicers[owner]) for key, owner in logs.items()}
    expected |= {("test_applications", key): email_digest(smicers[owner]) for key, owner in applications.items()}
    assert digests == expected
    assert sum(digest is None for digest in digests.values()) == 6, "blank and missing addresses have none"


def test_the_database_strips_what_str_strip_strips():
    assert sorted(rows.BLANKS) == [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]


def test_rows_stream_in_key_order_into_parts_of_at_most_part_rows(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(archiving, "PART_ROWS", 3)
    monkeypatch.setattr(rows, "CURSOR_ROWS", 2)
    monkeypatch.setattr(rows, "CSV_BLOCK_BYTES", 1024)
    keys = sorted(closed_smicer(engine, postal_address=f"{i} street " * 30) for i in range(7))
    run = make_run(engine, AS_OF, tmp_path)
    stage(run, CLOSED, keys[::-1])

    assert archive_due(run, CLOSED) == {"rule": CLOSED.id, "batches": 1, "rows": 7}

    manifest = manifests(tmp_path / "archive")["smicers"]
    assert [part["row_count"] for part in manifest["files"]] == [3, 3, 1]
    assert manifest["records_digest"] == hashlib.sha256("".join(f"{key}\n" for key in keys).encode()).hexdigest()
    assert archived(tmp_path, "smicers").column("id").to_pylist() == keys
    assert verify_archive(run, CLOSED)["verified_batches"] == 1


def test_values_keep_their_type_and_an_empty_string_is_not_null(engine, tmp_path):
    address = 'line 1\nline "2", with a comma'
    key = closed_smicer(
        engine,
        first_name="",
        last_name=None,
        postal_address=address,
        created_at=datetime(2020, 2, 29, 23, 59, 59, 123456),
        closed_at=datetime(2025, 6, 1, 12, 30),
    )
    run = make_run(engine, AS_OF, tmp_path)
    stage(run, CLOSED, [key])

    archive_due(run, CLOSED)

    table = archived(tmp_path, "smicers")
    row = table.to_pylist()[0]
    assert (row["first_name"], row["last_name"], row["postal_address"]) == ("", None, address)
    assert row["created_at"] == datetime(2020, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    assert row["closed_at"] == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("id").type == pa.int64()


def test_an_unreadable_value_names_table_column_and_key_never_the_value(sqlite_engine, tmp_path):
    with sqlite_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO smicers (id, email, locale, created_at, last_login_at, closed_at) "
                "VALUES (41, 'p@example.org', 'fr', '2019-01-01 00:00:00', 'last spring', '2025-06-01 00:00:00')"
            )
        )
    run = make_run(sqlite_engine, AS_OF, tmp_path)
    stage(run, CLOSED, [41])

    with pytest.raises(ArchiveError, match=r"smicers\.last_login_at of the row with id = 41 cannot be read") as error:
        archive_due(run, CLOSED)

    assert "last spring" not in str(error.value)
    assert not index(run) and not list(tmp_path.rglob("manifest.json"))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_value_the_csv_reader_refuses_is_read_through_a_cursor_from_there_on(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(rows, "CSV_BLOCK_BYTES", 512)
    resumed_after = []
    cursor_batches = rows._cursor_batches

    def spy(engine, query, params, converter):
        resumed_after.append(params["after"])
        return cursor_batches(engine, query, params, converter)

    monkeypatch.setattr(rows, "_cursor_batches", spy)
    keys = [closed_smicer(engine) for _ in range(12)]
    with engine.begin() as connection:
        connection.execute(text("UPDATE smicers SET last_login_at = 'infinity' WHERE id = :key"), {"key": keys[9]})
    run = make_run(engine, AS_OF, tmp_path)
    stage(run, CLOSED, keys)

    archive_due(run, CLOSED)

    assert len(resumed_after) == 1 and keys[0] <= resumed_after[0] < keys[9], "after the rows read from the CSV"
    table = archived(tmp_path, "smicers")
    assert table.column("id").to_pylist() == keys
    assert table.column("last_login_at")[9].as_py() == datetime.max.replace(tzinfo=UTC), "as psycopg2 reads it"


def test_a_rerun_finds_the_complete_batch_and_only_indexes_it_again(engine, tmp_path):
    key = closed_smicer(engine)
    run = make_run(engine, AS_OF, tmp_path)
    stage(run, CLOSED, [key])
    archive_due(run, CLOSED)
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "archive").rglob("*") if path.is_file()}
    with engine.begin() as connection:
        connection.execute(run.tables.archived_records.delete())

    archive_due(run, CLOSED)

    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert list(index(run)) == [("smicers", key)]
    assert verify_archive(run, CLOSED)["verified_batches"] == 1


def test_a_record_already_in_a_verified_batch_is_not_archived_again(engine, tmp_path):
    key = closed_smicer(engine)
    first = make_run(engine, AS_OF, tmp_path, run_id="first")
    stage(first, CLOSED, [key])
    archive_due(first, CLOSED)
    verify_archive(first, CLOSED)
    second = make_run(engine, AS_OF, tmp_path, run_id="second")
    stage(second, CLOSED, [key])

    assert archive_due(second, CLOSED) == {"rule": CLOSED.id, "batches": 0, "rows": 0}


def test_a_row_deleted_since_the_selection_fails_the_batch_before_anything_is_written(engine, tmp_path):
    keys = [closed_smicer(engine) for _ in range(2)]
    run = make_run(engine, AS_OF, tmp_path)
    stage(run, CLOSED, keys)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM smicers WHERE id = :key"), {"key": keys[0]})

    with pytest.raises(ArchiveError, match="1 rows to archive for 2 candidates"):
        archive_due(run, CLOSED)

    assert not index(run) and not list(tmp_path.rglob("manifest.json"))


READ_AS_BEFORE = [
    ("timestamp", [datetime(2025, 1, 1, 12), None]),
    ("timestamp", [datetime(2025, 1, 1, 12, tzinfo=UTC), datetime(2025, 1, 1, 14, tzinfo=UTC)]),
    ("timestamp", ["2025-01-01 12:00:00.000000", "2025-01-01", None]),
    ("timestamp", ["2025-01-01T12:00:00+02:00", "2025-01-01 12:00:00"]),
    ("date", [date(2024, 2, 29), None]),
    ("date", ["2024-02-29", "2024-02-29 00:00:00"]),
    ("bool", [True, False, None]),
    ("bool", [1, 0, 2]),
    ("int", [1, None, 2**40]),
    ("float", [1, 2.5, None]),
    ("text", ["a", "", None]),
    ("text", ["a", 1]),
]


@pytest.mark.parametrize(("kind", "values"), READ_AS_BEFORE)
def test_a_column_converted_at_once_reads_as_value_by_value(kind, values):
    arrow_type = {
        "timestamp": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "text": pa.string(),
    }[kind]
    one_by_one = pa.array([_convert(value, kind) for value in values], type=arrow_type)
    try:
        at_once = _driver_array(tuple(values), kind, arrow_type)
    except (pa.ArrowException, TypeError, ValueError):
        return  # read value by value
    assert at_once.equals(one_by_one)
