"""Crash safety on PostgreSQL: a run killed (SIGKILL) at every step boundary and in the middle of every
batched step of an erase-only rule, an archiving rule and the smicer bundle is completed by the next
run, the same run retried or the next night's. Right after the kill as after that run: nothing is
erased without a verified archive copy, every erased record has exactly one erase event, no archive
batch is duplicated and no bundle is half-erased; and at the end every due record is erased.

A kill in the middle of a step lands while one of the step's statements waits on a lock this test
holds (found in pg_stat_activity): the engine has no hook, and the kill lands there every time."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from lifecycle.appschema import create_app_schema
from lifecycle.pipeline import run_step, steps_for
from lifecycle.store import ensure_lifecycle_tables, make_engine
from tests.lifecycle_helpers import POLICY, make_run, utc

AS_OF = utc(2026, 11, 25)
BATCH_SIZE = 50
VICTIM = "crash-matrix-victim"  # the killed worker's application_name in pg_stat_activity
KILLED_RUN = "killed"
WAIT_SECONDS = 120
RULES = ("connection-logs", "applications-rejected", "account-closed")

# Set-based seeds: 12 erase ranges of BATCH_SIZE records (8 of smicers), 10 archive batches of applications or
# 4 x 4 of the bundle's tables (one per table and retain_until); every 8th or 10th row is not due.
FEW_SMICERS = """INSERT INTO smicers (id, email, created_at)
                 SELECT g, 'smicer' || g || '@example.org', '2020-01-01' FROM generate_series(1, 20) g"""
SEEDS = {
    "connection-logs": [
        FEW_SMICERS,
        """INSERT INTO connection_logs (id, smicer_id, connected_at, succeeded)
           SELECT g, 1 + g % 20, CASE WHEN g % 8 = 0 THEN timestamptz '2026-10-01'
                                      ELSE timestamptz '2025-01-01' + g * interval '1 hour' END, true
             FROM generate_series(1, 640) g""",
    ],
    "applications-rejected": [
        FEW_SMICERS,
        """INSERT INTO test_applications (id, smicer_id, test_date, decision, decided_at)
           SELECT g, 1 + g % 20, date '2024-01-01' + g % 10, CASE WHEN g % 8 = 0 THEN 'pending' ELSE 'rejected' END,
                  CASE WHEN g % 8 = 0 THEN NULL ELSE timestamptz '2024-03-01' END
             FROM generate_series(1, 640) g""",
    ],
    "account-closed": [
        "INSERT INTO clients (id, company_name, contract_start) VALUES (1, 'Client', '2019-01-01')",
        """INSERT INTO smicers (id, email, created_at, last_login_at, closed_at)
           SELECT g, 'smicer' || g || '@example.org', '2020-01-01', '2024-12-01',
                  CASE WHEN g % 10 <> 0 THEN timestamptz '2025-01-01' + g % 4 * interval '1 day' END
             FROM generate_series(1, 440) g""",
        """INSERT INTO connection_logs (id, smicer_id, connected_at, succeeded)
           SELECT g, (g + 1) / 2, '2024-12-01', true FROM generate_series(1, 880) g""",
        """INSERT INTO browsing_events (id, smicer_id, occurred_at)
           SELECT g, g, '2024-12-01' FROM generate_series(1, 440) g""",
        """INSERT INTO test_applications (id, smicer_id, test_date, decision, decided_at)
           SELECT g, g, '2024-06-01', 'accepted', '2024-06-05' FROM generate_series(1, 440) g""",
        """INSERT INTO missions (id, smicer_id, client_id, store_name, visited_at, reward_cents)
           SELECT g, g, 1, 'Store', '2024-06-01', 1500 FROM generate_series(1, 440) g""",
    ],
}
# The records each rule must erase, as seeded.
DUE = {
    "connection-logs": "SELECT id FROM connection_logs WHERE connected_at < '2026-01-01'",
    "applications-rejected": "SELECT id FROM test_applications WHERE decision = 'rejected'",
    "account-closed": "SELECT id FROM smicers WHERE closed_at IS NOT NULL",
}
# What retain_until derives from: a due record of the last one the archive step writes comes first.
ARCHIVED_FROM = {"applications-rejected": "test_date", "account-closed": "closed_at"}
BUNDLE = {m.table: m.action for m in POLICY.bundles["smicer"].members}


def small_batches(rule_id: str):
    return replace(POLICY.rule(rule_id), batch_size=BATCH_SIZE)


def kill_points(rule_id: str) -> list[str]:
    rule = POLICY.rule(rule_id)
    steps = steps_for(rule)
    middles = ["select", *(["archive"] if rule.archives else []), "erase", *(["pseudonymise"] if rule.bundle else [])]
    return [f"after-{name}" for name in steps[:-1]] + [f"mid-{name}" for name in middles]


def case(rule_id: str, point: str, next_run: str):
    return pytest.param(rule_id, point, next_run, id=f"{rule_id}-{point}-{next_run}")


CASES = [
    case(rule_id, point, next_run)
    for rule_id in RULES
    for point in kill_points(rule_id)
    for next_run in ("retry", "next-night")
]


@dataclass(frozen=True)
class Seeded:
    due: dict[str, set[int]]  # per table, the rows the rule must erase (a due smicer's bundle members too)
    kept: dict[str, set[int]]  # per table, the rows it must leave
    bundles: dict[int, dict[str, set[tuple[int, int]]]]  # due smicer -> member table -> {(row, smicer)}


@pytest.fixture
def database(postgresql_session_database):
    """A fresh PostgreSQL database, its URL and an engine with the application's and the pipeline's tables."""
    postgresql_session_database.reset()
    url = postgresql_session_database.url
    engine = make_engine(url.render_as_string(hide_password=False))
    create_app_schema(engine)
    ensure_lifecycle_tables(engine)
    yield url, engine
    engine.dispose()


@pytest.mark.parametrize(("rule_id", "kill_point", "next_run"), CASES)
def test_a_run_killed_anywhere_is_completed_by_the_next_and_leaves_no_broken_state(
    database, workers, tmp_path, rule_id, kill_point, next_run
):
    url, engine = database
    rule = small_batches(rule_id)
    seeded = seed(engine, rule_id)
    victim_url = url.update_query_dict({"application_name": VICTIM}).render_as_string(hide_password=False)

    resume_at = kill(workers, engine, victim_url, tmp_path, rule, kill_point)
    assert_invariants(engine, tmp_path / "archive", rule, seeded, complete=False)

    if next_run == "retry":
        # Airflow retries the task whose worker died: the step that was running, or at a boundary the
        # step that could not record its success.
        run = make_run(engine, AS_OF, tmp_path, run_id=KILLED_RUN, volume_approved=True)
        steps = steps_for(rule)[resume_at:]
    else:
        run = make_run(engine, AS_OF + timedelta(days=1), tmp_path, run_id="next-night", volume_approved=True)
        steps = steps_for(rule)
    for step in steps:
        run_step(run, rule, step)
    assert_invariants(engine, tmp_path / "archive", rule, seeded, complete=True)


def seed(engine, rule_id: str) -> Seeded:
    with engine.begin() as connection:
        for statement in SEEDS[rule_id]:
            connection.execute(text(statement))
    table = POLICY.rule(rule_id).table
    due = {table: set(rows(engine, DUE[rule_id]))}
    kept = {table: set(rows(engine, f"SELECT id FROM {table}")) - due[table]}
    bundles = {}
    if POLICY.rule(rule_id).bundle:
        bundles = {smicer: {member: set() for member in BUNDLE} for smicer in due[table]}
        for member, action in BUNDLE.items():
            links = rows(engine, f"SELECT id, smicer_id FROM {member}")
            for row, smicer in links:
                if smicer in bundles:
                    bundles[smicer][member].add((row, smicer))
            if action == "erase":
                due[member] = {row for row, smicer in links if smicer in bundles}
                kept[member] = {row for row, smicer in links if smicer not in bundles}
    return Seeded(due, kept, bundles)


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as connection:
        result = connection.execute(text(sql), params)
        return list(result.scalars()) if len(result.keys()) == 1 else [tuple(row) for row in result]


# The killed worker.


def victim(url: str, folder: str, rule_id: str, last_step: int | None) -> None:
    """Run the rule (the steps up to `last_step`, then die; every step when the test kills it)."""
    tempfile.tempdir = str(Path(folder) / "scratch")  # where a dead archive step leaves its Parquet scratch
    Path(tempfile.tempdir).mkdir(exist_ok=True)
    try:
        run = make_run(make_engine(url), AS_OF, Path(folder), run_id=KILLED_RUN, volume_approved=True)
        rule = small_batches(rule_id)
        steps = steps_for(rule)
        for step in steps if last_step is None else steps[: last_step + 1]:
            run_step(run, rule, step)
    except BaseException:
        (Path(folder) / "victim-error.txt").write_text(traceback.format_exc())
        raise
    if last_step is not None:
        os.kill(os.getpid(), signal.SIGKILL)


def kill(workers, engine, url: str, folder: Path, rule, point: str) -> int:
    """Kill a run of `rule` at `point`; return the index of the step a retry starts with."""
    names = steps_for(rule)
    when, name = point.split("-", 1)
    started = []

    def start(last_step: int | None = None):
        worker = workers.Process(target=victim, args=(url, str(folder), rule.id, last_step))
        worker.start()
        started.append(worker)
        return worker

    try:
        if when == "after":
            worker = start(names.index(name))
            worker.join(WAIT_SECONDS)
            assert_killed(worker, folder)
        else:
            with engine.connect() as holder, holder.begin() as locks:
                MIDDLES[name](engine, holder, start, folder, rule)
                locks.rollback()
    finally:
        for worker in started:  # one a failed assertion left running
            worker.kill()
            worker.join()
    wait_until_gone(engine)
    return names.index("erase" if name == "pseudonymise" else name)


def assert_killed(worker, folder: Path) -> None:
    error = folder / "victim-error.txt"
    assert worker.exitcode == -signal.SIGKILL, error.read_text() if error.exists() else worker.exitcode


def kill_mid_select(engine, holder, start, folder, rule) -> None:
    # The select step's one statement reads the rule's table.
    holder.exec_driver_sql(f"LOCK TABLE {rule.table} IN ACCESS EXCLUSIVE MODE")
    worker = start()
    statement = kill_when_waiting(engine, worker, folder)
    assert statement.startswith("INSERT INTO lifecycle.candidates"), statement
    assert rows(engine, "SELECT stage FROM lifecycle.selections") == ["selecting"]


def kill_mid_archive(engine, holder, start, folder, rule) -> None:
    # An index entry not yet committed for a record of the last retain_until: the step cannot finish.
    last = rows(engine, f"{DUE[rule.id]} ORDER BY {ARCHIVED_FROM[rule.id]} DESC LIMIT 1")[0]
    holder.execute(
        text("INSERT INTO lifecycle.archived_records (table_name, record_key, batch_key) VALUES (:t, :k, 'held')"),
        {"t": rule.table, "k": last},
    )
    worker = start()
    recorded = "SELECT COUNT(*) FROM lifecycle.archive_batches"
    wait_for(lambda: rows(engine, recorded)[0] > 0 or not worker.is_alive(), "a first archive batch recorded")
    # Usually the batch being written then waits to be recorded, its parts and manifest in the archive.
    holder.exec_driver_sql("LOCK TABLE lifecycle.archive_batches IN SHARE ROW EXCLUSIVE MODE")
    statement = kill_when_waiting(engine, worker, folder)
    assert statement.startswith(("DELETE FROM lifecycle.archive_batches", "INSERT INTO lifecycle.archived_records")), (
        statement
    )
    assert rows(engine, recorded)[0] > 0, "killed with a batch recorded and one not"


def kill_mid_erase(engine, holder, start, folder, rule, member: str = "connection_logs") -> str:
    """Lock a row in the middle key range: the ranges before it commit, its transaction waits."""
    due = sorted(rows(engine, DUE[rule.id]))
    root = due[len(due) // 2]
    table, column = (member, "smicer_id") if rule.bundle else (rule.table, "id")
    holder.exec_driver_sql(f"SELECT 1 FROM {table} WHERE {column} = {int(root)} FOR UPDATE")
    worker = start()
    statement = kill_when_waiting(engine, worker, folder)
    done, planned = rows(engine, "SELECT COUNT(recorded_at), COUNT(*) FROM lifecycle.erasures")[0]
    assert 0 < done < planned, f"{done} of {planned} key ranges erased when killed ({statement})"
    return statement


def kill_mid_pseudonymise(engine, holder, start, folder, rule) -> None:
    statement = kill_mid_erase(engine, holder, start, folder, rule, member="missions")
    assert statement.startswith("UPDATE missions AS t SET smicer_id = NULL"), statement


MIDDLES = {
    "select": kill_mid_select,
    "archive": kill_mid_archive,
    "erase": kill_mid_erase,
    "pseudonymise": kill_mid_pseudonymise,
}


def kill_when_waiting(engine, worker, folder: Path) -> str:
    """SIGKILL the worker once one of its statements waits on a lock (which it does until the test
    releases it); return that statement."""
    wait_for(lambda: waiting_statement(engine) or not worker.is_alive(), "the worker to wait on a lock")
    statement = waiting_statement(engine)
    worker.kill()
    worker.join(WAIT_SECONDS)
    assert_killed(worker, folder)
    assert statement, "the worker ended without waiting on the lock"
    return statement


def waiting_statement(engine) -> str | None:
    waiting = rows(
        engine,
        "SELECT query FROM pg_stat_activity"
        " WHERE application_name = :name AND datname = current_database() AND wait_event_type = 'Lock'",
        name=VICTIM,
    )
    return waiting[0].strip() if waiting else None


def wait_until_gone(engine) -> None:
    """The dead worker's sessions end once their statement (no longer blocked) finds the client gone."""
    sessions = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = :name"
    wait_for(lambda: rows(engine, sessions, name=VICTIM)[0] == 0, "the killed worker's sessions to end")


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# The invariants.


def assert_invariants(engine, archive: Path, rule, seeded: Seeded, *, complete: bool) -> None:
    present = {table: set(rows(engine, f"SELECT id FROM {table}")) for table in seeded.due}
    erased = {table: seeded.due[table] - present[table] for table in seeded.due}
    if complete:
        assert erased == seeded.due, "every due record is erased"
    assert all(seeded.kept[table] <= present[table] for table in seeded.kept), "only due records are erased"
    if rule.archives:
        assert_archived_before_erased(engine, archive, erased)
    assert_one_erase_event_each(engine, erased)
    if rule.bundle:
        assert_no_half_erased_bundle(engine, seeded)
    assert_no_duplicate_batch(engine, archive)


def assert_archived_before_erased(engine, archive: Path, erased: dict[str, set[int]]) -> None:
    """1. Every erased record has its copy in a verified batch, whose Parquet parts hold it."""
    copies = rows(
        engine,
        "SELECT ar.table_name, ar.record_key, ab.batch_key, ab.verified_at IS NOT NULL"
        " FROM lifecycle.archived_records ar JOIN lifecycle.archive_batches ab ON ab.batch_key = ar.batch_key",
    )
    verified = {(table, key): batch for table, key, batch, is_verified in copies if is_verified}
    unarchived = [(table, key) for table in erased for key in erased[table] if (table, key) not in verified]
    assert not unarchived, f"erased without a verified archive copy: {sorted(unarchived)[:5]}"
    for batch in {verified[(table, key)] for table in erased for key in erased[table]}:
        held = set(batch_records(archive, json.loads((archive / batch / "manifest.json").read_text())))
        in_batch = {(table, key) for table in erased for key in erased[table] if verified[(table, key)] == batch}
        assert in_batch <= held, f"batch {batch} lacks records indexed in it"


def batch_records(archive: Path, manifest: dict) -> list[tuple[str, int]]:
    keys = []
    for part in manifest["files"]:
        keys += pq.read_table(archive / part["key"], columns=[manifest["key_column"]]).column(0).to_pylist()
    return [(manifest["table"], key) for key in keys]


def assert_one_erase_event_each(engine, erased: dict[str, set[int]]) -> None:
    """2. Exactly one erase event per erased record, and none for a record still there."""
    events = rows(engine, "SELECT table_name, record_key FROM lifecycle.audit_trail WHERE action = 'erased'")
    expected = {(table, key): 1 for table in erased for key in erased[table]}
    counted = Counter(events)
    wrong = {record: count for record, count in counted.items() if expected.get(record) != count}
    missing = expected.keys() - counted.keys()
    assert not wrong and not missing, f"erase events: wrong {sorted(wrong.items())[:5]}, missing {sorted(missing)[:5]}"


def assert_no_duplicate_batch(engine, archive: Path) -> None:
    """3. No record in two batches, no two batches (rows or manifests) of the same records."""
    same_records = rows(
        engine,
        "SELECT table_name, retain_until, records_digest, COUNT(*) FROM lifecycle.archive_batches"
        " GROUP BY table_name, retain_until, records_digest HAVING COUNT(*) > 1",
    )
    assert not same_records, f"archive_batches rows with the same records: {same_records}"
    manifests = [json.loads(path.read_text()) for path in archive.rglob("manifest.json")]
    digests = Counter((m["table"], m["retain_until"], m["records_digest"]) for m in manifests)
    assert all(count == 1 for count in digests.values()), f"manifests with the same records: {digests}"
    records = Counter(record for manifest in manifests for record in batch_records(archive, manifest))
    twice = [record for record, count in records.items() if count > 1]
    assert not twice, f"records in two archive batches: {sorted(twice)[:5]}"


def assert_no_half_erased_bundle(engine, seeded: Seeded) -> None:
    """4. Each due smicer's bundle is whole, or gone with its missions kept and unlinked."""
    links = {table: dict(rows(engine, f"SELECT id, smicer_id FROM {table}")) for table in BUNDLE}
    smicers = set(rows(engine, "SELECT id FROM smicers"))
    half = []
    for smicer, bundle in seeded.bundles.items():
        state = {
            table: {(row, links[table][row]) for row, _ in bundle[table] if row in links[table]} for table in BUNDLE
        }
        whole = smicer in smicers and state == bundle
        gone = smicer not in smicers and state == {
            table: {(row, None) for row, _ in bundle[table]} if action == "pseudonymise" else set()
            for table, action in BUNDLE.items()
        }
        if not (whole or gone):
            half.append(smicer)
    assert not half, f"smicers with a half-erased bundle: {half[:5]}"
