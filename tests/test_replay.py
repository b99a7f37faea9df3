"""The erasure ledger and its replay after a database restore, on SQLite and PostgreSQL: the real rules
erase and pseudonymise, each erase step writes its ledger to the archive, the database is restored
from a copy taken before (SQLite: the file; PostgreSQL: a database made from it as a template), and
the replay erases again exactly what the ledger names and the restore brought back, leaving what a
hold placed since keeps; a dry run changes nothing. Through Airflow, on S3 (moto's server), and with
a ledger object that fails its check. No personal data reaches the ledger or the report."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from lifecycle.appschema import create_app_schema
from lifecycle.erasing import erase_due
from lifecycle.holds import place_hold
from lifecycle.ledger import LEDGER_PREFIX, read_ledger
from lifecycle.replay import ReplayError, parse_since, replay_erasures, write_replay_report
from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine
from lifecycle.stores import ArchiveError, open_archive_store
from s3_fixtures import s3_options
from tests.lifecycle_helpers import CANARY, POLICY, add, fingerprint, make_run, run_rules, utc

PROJECT = Path(__file__).resolve().parents[1]
AS_OF = utc(2026, 5, 1)
RULES = ["account-closed", "connection-logs", "prospects"]
CANARY_EMAIL = "zebulon.quintessenza@canary-mail.example"
CANARY_VALUES = [CANARY_EMAIL, *CANARY.values()]
APP_TABLES = ("smicers", "connection_logs", "browsing_events", "test_applications", "missions", "prospects")
# Per table and action: in the ledger, present again, held, done again (the hold keeps smicer `held`'s bundle).
EXPECTED = {
    "connection_logs": {"erased": {"in_ledger": 4, "present_again": 4, "held": 1, "erased_again": 3}},
    "browsing_events": {"erased": {"in_ledger": 1, "present_again": 1, "held": 0, "erased_again": 1}},
    "test_applications": {"erased": {"in_ledger": 1, "present_again": 1, "held": 0, "erased_again": 1}},
    "missions": {"pseudonymised": {"in_ledger": 3, "present_again": 3, "held": 1, "pseudonymised_again": 2}},
    "smicers": {"erased": {"in_ledger": 2, "present_again": 2, "held": 1, "erased_again": 1}},
    "prospects": {"erased": {"in_ledger": 1, "present_again": 1, "held": 0, "erased_again": 1}},
}


@dataclass
class Seeded:
    closed: int  # a closed account carrying the canary data: erased with its bundle
    held: int  # a closed account, erased, then held after the restore
    active: int  # an active account: only its old connection log is erased
    old_prospect: int
    new_prospect: int
    missions: dict[str, list[int]]
    logs: dict[str, list[int]]


def seed(engine: Engine) -> Seeded:
    closed_at = datetime(2025, 6, 1)
    closed = add(engine, "smicers", email=CANARY_EMAIL, closed_at=closed_at, **CANARY)
    held = add(engine, "smicers", closed_at=closed_at)
    active = add(engine, "smicers", last_login_at=datetime(2026, 4, 20))
    logs = {
        "closed": [add(engine, "connection_logs", smicer_id=closed, connected_at=datetime(2026, 4, d)) for d in (1, 2)],
        "held": [add(engine, "connection_logs", smicer_id=held, connected_at=datetime(2026, 4, 1))],
        "active_old": [add(engine, "connection_logs", smicer_id=active, connected_at=datetime(2025, 1, 1))],
        "active_new": [add(engine, "connection_logs", smicer_id=active, connected_at=datetime(2026, 4, 1))],
    }
    add(engine, "browsing_events", smicer_id=closed, occurred_at=datetime(2026, 4, 1), ip_address="198.51.100.7")
    add(engine, "test_applications", smicer_id=closed)
    client = add(engine, "clients")
    missions = {
        owner: [add(engine, "missions", smicer_id=smicer, client_id=client) for _ in range(count)]
        for owner, smicer, count in (("closed", closed, 2), ("held", held, 1), ("active", active, 1))
    }
    old_prospect = add(engine, "prospects", email="old.prospect@example.org", created_at=datetime(2020, 1, 1))
    new_prospect = add(engine, "prospects", email="new.prospect@example.org", created_at=datetime(2025, 1, 1))
    return Seeded(closed, held, active, old_prospect, new_prospect, missions, logs)


class Database:
    """The test's application database, with a backup taken and restored the way its server does it."""

    def __init__(self, url: str, backup):
        self.url = url
        self.engine = make_engine(url)
        self._backup = backup
        create_app_schema(self.engine)
        ensure_lifecycle_tables(self.engine)

    def take_backup(self) -> None:
        self.engine.dispose()
        self._backup.take()

    def restore(self) -> None:
        self.engine.dispose()
        self._backup.restore()


class SqliteBackup:
    def __init__(self, path: Path):
        self.path = path
        self.copy = path.with_name("backup.db")

    def take(self) -> None:
        with sqlite3.connect(self.path) as source, sqlite3.connect(self.copy) as target:
            source.backup(target)

    def restore(self) -> None:
        for leftover in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(self.copy, self.path)


class PostgresqlBackup:
    def __init__(self, database):
        self.database = database
        self.copy = f"{database.name}_backup"

    def _admin(self, *statements: str) -> None:
        with self.database.admin_engine.connect() as connection:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(name)s",
                {"name": self.database.name},
            )
            for sql in statements:
                connection.exec_driver_sql(sql)

    def take(self) -> None:
        self._admin(
            f"DROP DATABASE IF EXISTS {self.copy}", f"CREATE DATABASE {self.copy} TEMPLATE {self.database.name}"
        )

    def restore(self) -> None:
        name = self.database.name
        self._admin(f"DROP DATABASE {name} WITH (FORCE)", f"CREATE DATABASE {name} TEMPLATE {self.copy}")

    def drop(self) -> None:
        with self.database.admin_engine.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.copy}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        backup = SqliteBackup(path)
        url = f"sqlite:///{path}"
    else:
        server = request.getfixturevalue("postgresql_session_database")
        server.reset()
        backup = PostgresqlBackup(server)
        url = server.url.render_as_string(hide_password=False)
    db = Database(url, backup)
    yield db
    db.engine.dispose()
    if isinstance(backup, PostgresqlBackup):
        backup.drop()


def rows(engine: Engine, table: str) -> dict[int, tuple]:
    with engine.connect() as connection:
        return {row[0]: tuple(row) for row in connection.execute(text(f"SELECT * FROM {table} ORDER BY id"))}


def snapshot(engine: Engine) -> dict[str, dict[int, tuple]]:
    return {table: rows(engine, table) for table in APP_TABLES}


def replay_events(engine: Engine) -> list[tuple]:
    audit = lifecycle_tables(engine).audit_events
    query = select(audit.c.action, audit.c.table_name, audit.c.record_key).where(audit.c.rule == "replay")
    with engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(query.order_by(audit.c.id)))


def ledger_records(store, scratch: Path) -> list[dict]:
    """Every column of every ledger object, read back from the archive."""
    import pyarrow.parquet as pq

    records = []
    for index, key in enumerate(store.ledger_keys(LEDGER_PREFIX)):
        local = scratch / f"ledger-{index}.parquet"
        store.fetch_ledger(key, local)
        records += pq.read_table(local).to_pylist()
    return records


def erase_and_restore(db: Database, tmp_path: Path, **run) -> tuple[Seeded, dict, date]:
    """Seed, back up, erase with the real rules, then restore the backup: the seed, the database as the
    rules left it, and the first day of the ledger."""
    seeded = seed(db.engine)
    db.take_backup()
    started = datetime.now(UTC).date()
    run_rules(db.engine, AS_OF, tmp_path, RULES, **run)
    erased = snapshot(db.engine)
    db.restore()
    return seeded, erased, started


def test_a_restore_is_erased_again_from_the_ledger(database, tmp_path):
    db = database
    seeded, erased, started = erase_and_restore(db, tmp_path)
    store = open_archive_store((tmp_path / "archive").as_uri())

    keys = store.ledger_keys(LEDGER_PREFIX)
    assert [key.rsplit("/", 1)[-1] for key in keys] == sorted(f"{rule}.parquet" for rule in RULES)
    assert all(key >= f"{LEDGER_PREFIX}{started.isoformat()}/test_dag/" for key in keys)
    assert not any(key.startswith(LEDGER_PREFIX) for key in store.batch_keys()), "ledger mistaken for a batch"
    restored = snapshot(db.engine)
    assert set(restored["smicers"]) == {seeded.closed, seeded.held, seeded.active}, "the restore brought them back"
    assert replay_events(db.engine) == []
    place_hold(db.engine, POLICY, table="smicers", key=seeded.held, reason="litigation 2026-17")
    before = fingerprint(db.engine)

    would = replay_erasures(db.engine, POLICY, store, started, dry_run=True)

    assert fingerprint(db.engine) == before, "a dry run changes nothing"
    assert (would["dry_run"], would["ledger_objects"], would["records_in_ledger"]) == (True, 3, 12)
    assert would["tables"] == EXPECTED

    done = replay_erasures(db.engine, POLICY, store, started, dry_run=False)

    assert done["tables"] == EXPECTED
    assert done["totals"] == {
        "in_ledger": 12,
        "present_again": 12,
        "held": 3,
        "erased_again": 7,
        "pseudonymised_again": 2,
    }
    after = snapshot(db.engine)
    kept = {
        "smicers": [seeded.held],
        "connection_logs": seeded.logs["held"],
        "missions": seeded.missions["held"],
    }
    for table in APP_TABLES:
        assert set(after[table]) == set(erased[table]) | set(kept.get(table, [])), table
    for table, keys in kept.items():
        assert {key: after[table][key] for key in keys} == {key: restored[table][key] for key in keys}, table
    untouched = {
        "smicers": [seeded.active],
        "connection_logs": seeded.logs["active_new"],
        "missions": seeded.missions["active"],
        "prospects": [seeded.new_prospect],
    }
    for table, keys in untouched.items():
        assert {key: after[table][key] for key in keys} == {key: restored[table][key] for key in keys}, table
    unlinked = seeded.missions["closed"]
    assert {key: after["missions"][key] for key in unlinked} == {key: erased["missions"][key] for key in unlinked}
    with db.engine.connect() as connection:
        links = dict(connection.execute(text("SELECT id, smicer_id FROM missions")).all())
    assert [links[key] for key in unlinked] == [None, None]
    events = replay_events(db.engine)
    assert len(events) == 9
    assert {(action, table) for action, table, _ in events} == {
        ("erased", table) for table in ("smicers", "connection_logs", "browsing_events", "test_applications")
    } | {("erased", "prospects"), ("pseudonymised", "missions")}
    assert ("erased", "smicers", seeded.closed) in events and ("erased", "smicers", seeded.held) not in events

    again = replay_erasures(db.engine, POLICY, store, started, dry_run=False)
    assert again["totals"] == {
        "in_ledger": 12,
        "present_again": 3,
        "held": 3,
        "erased_again": 0,
        "pseudonymised_again": 0,
    }
    assert len(replay_events(db.engine)) == 9

    report = write_replay_report(tmp_path / "report", done)
    ledger = ledger_records(store, tmp_path)
    assert {record["rule"] for record in ledger} == set(RULES)
    assert sorted(ledger[0]) == sorted(
        ["dag_id", "run_id", "rule", "action", "table_name", "record_key", "policy_version", "recorded_at"]
    )
    seen = json.dumps(ledger, default=str) + "".join(p.read_text() for p in report.iterdir()) + json.dumps(done)
    for value in [*CANARY_VALUES, "old.prospect@example.org", "198.51.100.7"]:
        assert value.lower() not in seen.lower(), value


def test_a_ledger_is_written_once_per_rule_and_run_and_never_in_a_dry_run(sqlite_engine, tmp_path):
    seed(sqlite_engine)
    run_rules(sqlite_engine, AS_OF, tmp_path, ["account-closed"], dry_run=True)
    store = open_archive_store((tmp_path / "archive").as_uri())
    assert store.ledger_keys(LEDGER_PREFIX) == []

    run_rules(sqlite_engine, AS_OF, tmp_path, ["account-closed", "browsing-events"])
    [key] = store.ledger_keys(LEDGER_PREFIX)  # browsing-events erased nothing: no object
    first = (store.root / key).read_bytes()
    erase_due(make_run(sqlite_engine, AS_OF, tmp_path), POLICY.rule("account-closed"))  # a retried erase step

    assert store.ledger_keys(LEDGER_PREFIX) == [key]
    assert (store.root / key).read_bytes() == first
    _, records = read_ledger(store, date(2000, 1, 1))
    assert records.num_rows == 10  # 2 smicers, 3 logs, 1 browsing event, 1 application, 3 missions


def test_archive_expiry_purges_batches_and_leaves_the_ledger(sqlite_engine, tmp_path):
    seed(sqlite_engine)
    run_rules(sqlite_engine, AS_OF, tmp_path, ["account-closed"])
    store = open_archive_store((tmp_path / "archive").as_uri())
    ledger, batches = store.ledger_keys(LEDGER_PREFIX), store.batch_keys()
    assert ledger and batches

    summary = run_rules(sqlite_engine, utc(2040, 1, 1), tmp_path, ["archive-expiry"], run_id="expiry")

    assert summary["rules"]["archive-expiry"]["purged"] == len(batches)
    assert store.batch_keys() == []
    assert store.ledger_keys(LEDGER_PREFIX) == ledger
    assert read_ledger(store, date(2000, 1, 1))[1].num_rows == 10


def test_a_ledger_object_failing_its_check_stops_the_replay_before_any_change(sqlite_engine, tmp_path):
    seed(sqlite_engine)
    database = Path(sqlite_engine.url.database)
    sqlite_engine.dispose()
    shutil.copyfile(database, tmp_path / "before.db")  # no WAL left open: the engine is disposed
    run_rules(sqlite_engine, AS_OF, tmp_path, ["prospects"])
    sqlite_engine.dispose()
    for leftover in (Path(f"{database}-wal"), Path(f"{database}-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "before.db", database)
    store = open_archive_store((tmp_path / "archive").as_uri())
    [key] = store.ledger_keys(LEDGER_PREFIX)
    (store.root / key).write_bytes((store.root / key).read_bytes()[:-8] + b"tampered")
    before = fingerprint(sqlite_engine)

    with pytest.raises(ArchiveError, match=f"ledger object {key} .* does not match its SHA-256"):
        replay_erasures(sqlite_engine, POLICY, store, date(2000, 1, 1), dry_run=False)

    assert fingerprint(sqlite_engine) == before


@pytest.mark.parametrize(
    ("since", "message"),
    [("2026-13-01", "is not a date"), ("yesterday", "is not a date"), ("2999-01-01", "is after today")],
)
def test_a_malformed_since_is_refused(since, message):
    with pytest.raises(ReplayError, match=message):
        parse_since(since)


def replay_command(*args: str, environment: dict) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.replay", *args],
        cwd=PROJECT,
        env=env | environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_replays_from_the_archive_variable(sqlite_url, tmp_path):
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    db = Database(sqlite_url, SqliteBackup(path))
    seeded, erased, started = erase_and_restore(db, tmp_path)
    before = fingerprint(db.engine)
    db.engine.dispose()
    environment = {
        "AIRFLOW_CONN_SMICE_APP": sqlite_url,
        "AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI": (tmp_path / "archive").as_uri(),
    }

    refused = replay_command("--since", "01/05/2026", environment=environment)
    dry = replay_command("--since", started.isoformat(), "--dry-run", environment=environment)

    assert (refused.returncode, refused.stdout) == (2, "")
    assert "erasure replay refused: since '01/05/2026' is not a date (YYYY-MM-DD)" in refused.stderr
    assert dry.returncode == 0, dry.stderr
    assert "**Dry run" in dry.stdout and "| smicers | erased | 2 | 2 | 0 | 2 |  |" in dry.stdout
    assert fingerprint(db.engine) == before

    done = replay_command("--since", started.isoformat(), environment=environment)

    assert done.returncode == 0, done.stderr
    assert "| missions | pseudonymised | 3 | 3 | 0 |  | 3 |" in done.stdout
    assert snapshot(db.engine) == erased
    for value in CANARY_VALUES:
        assert value.lower() not in (dry.stdout + done.stdout + done.stderr).lower()
    db.engine.dispose()


def test_the_replay_reads_the_ledger_from_s3(sqlite_url, tmp_path, s3, locked_bucket, moto_endpoint):
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    db = Database(sqlite_url, SqliteBackup(path))
    uri = f"s3://{locked_bucket}/evidence"
    options = s3_options(moto_endpoint)
    seeded, erased, started = erase_and_restore(db, tmp_path, archive_uri=uri, s3_options=options)
    store = open_archive_store(uri, options)

    keys = store.ledger_keys(LEDGER_PREFIX)
    assert len(keys) == 3
    for key in keys:
        head = s3.head_object(Bucket=locked_bucket, Key=f"evidence/{key}", ChecksumMode="ENABLED")
        assert head.get("StorageClass", "STANDARD") == "STANDARD" and head["ChecksumSHA256"]
    parts = s3.list_objects_v2(Bucket=locked_bucket, Prefix="evidence/smicers/")["Contents"]
    assert {part.get("StorageClass") for part in parts if part["Key"].endswith(".parquet")} == {"DEEP_ARCHIVE"}
    assert store.ledger_keys(LEDGER_PREFIX, start_after=f"{LEDGER_PREFIX}2999-01-01") == []

    done = replay_erasures(db.engine, POLICY, store, started, dry_run=False)

    assert done["totals"] == {
        "in_ledger": 12,
        "present_again": 12,
        "held": 0,
        "erased_again": 9,
        "pseudonymised_again": 3,
    }
    assert snapshot(db.engine) == erased
    db.engine.dispose()


@pytest.mark.airflow
def test_the_dag_replays_and_reports(tmp_path, monkeypatch, airflow_home):
    from airflow.sdk.exceptions import ParamValidationError

    from airflow_harness import dag_bag, run_dag, run_log, task_logs, task_states, xcoms
    from lifecycle.report_paths import run_report_dir

    path = tmp_path / "app.db"
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", f"sqlite:///{path}")
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    db = Database(f"sqlite:///{path}", SqliteBackup(path))
    archive = (tmp_path / "data" / "archive").as_uri()
    seeded, erased, started = erase_and_restore(db, tmp_path, archive_uri=archive)
    dag = dag_bag().get_dag("erasure_replay")
    assert dag.schedule is None and dag.params.get_param("dry_run").value is True
    since = dag.params.get_param("since")
    assert (since.schema["type"], since.schema["format"], since.schema["title"]) == ("string", "date", "Since")
    assert not since.has_value, "since is required"
    before = fingerprint(db.engine)

    with pytest.raises(ParamValidationError, match="param since: '2026-5-1x' is not a 'date'"):
        run_dag("erasure_replay", "2026-05-02", conf={"since": "2026-5-1x"}, retries=0)
    refused, refusing = run_dag("erasure_replay", "2026-05-02", conf={"since": "2999-01-01"}, retries=0)
    dry, dry_run = run_dag("erasure_replay", "2026-05-03", conf={"since": started.isoformat()}, retries=0)

    assert (refused, dry) == ("failed", "success"), (task_states(refusing), task_states(dry_run))
    assert "since (2999-01-01) is after today" in task_logs(refusing)["replay"]
    assert fingerprint(db.engine) == before
    assert xcoms(dry_run)["replay"]["return_value"]["totals"]["erased_again"] == 9

    state, dag_run = run_dag(
        "erasure_replay", "2026-05-04", conf={"since": started.isoformat(), "dry_run": False}, retries=0
    )

    assert state == "success", task_states(dag_run)
    counts = xcoms(dag_run)["replay"]["return_value"]
    assert (counts["dry_run"], counts["totals"]["erased_again"], counts["totals"]["pseudonymised_again"]) == (
        False,
        9,
        3,
    )
    assert snapshot(db.engine) == erased
    folder = run_report_dir(tmp_path / "data" / "reports", "erasure_replay", dag_run.run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json", "report.md"]
    assert json.loads((folder / "report.json").read_text())["tables"] == counts["tables"]
    seen = "".join(p.read_text() for p in folder.iterdir()) + run_log(dag_run) + json.dumps(xcoms(dag_run))
    for value in CANARY_VALUES:
        assert value.lower() not in seen.lower(), value
    db.engine.dispose()
