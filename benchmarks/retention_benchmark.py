"""Speed and memory of the retention rules against the database's own limit, measured in one run.

    scripts/benchmark [--rows 300000 [1000000 ...]] [--due-share 0.3]
                      [--url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]
                      [--mariadb-url mysql+pymysql://root@127.0.0.1:3306/ | --no-mariadb]
                      [--skip APPROACH ...]

For each size given to `--rows` and each approach, a fresh database is filled with that many connection
logs and rejected test applications (and rows // 20 smicers), of which `due-share` are due, then one
process does the approach's work and reports its time and peak memory. On PostgreSQL:

- baseline: one `DELETE ... WHERE connected_at <= cutoff` statement (the database's own limit);
- naive: `pandas.read_sql` of every due row, then a delete per row (what we must not do);
- pipeline: the erase-only `connection-logs` rule (select, gate, erase in batches, verify); meanwhile
  another process, standing for the application, updates single connection logs (one in four due, which
  the rule may be erasing) one at a time in autocommit, and records how long each update took;
- pipeline-tasks: the same rule as Airflow runs it, each step in a process of its own (its peak MB: the
  largest step's);
- dry-run: the `connection-logs` rule as a dry run (each step decides again and counts; nothing is written);
- copy-delete: `COPY (SELECT the due rejected applications) TO STDOUT` into a scratch file, then one
  `DELETE` of the same rows (the database's own limit for keeping a copy, then erasing);
- pipeline-archive: the `applications-rejected` rule (select, gate, archive to Parquet, verify, erase);
- least-staged: the least a design staging each due record pays, in SQL alone: `INSERT ... SELECT` of
  the due keys into a keyed table (as the candidates table is keyed), one `DELETE ... USING` them, and
  `COPY` of the keys out (what the erasure ledger exports);
- least-batch-audit: the least a design staging no due record pays: per key range of RANGE_KEYS keys,
  one `DELETE ... RETURNING` its due rows, their keys aggregated into one audit row of the range;
- least-scratch: the least a dry run staging each record pays: `INSERT ... SELECT` of the due records'
  keys and instants into a temporary table, then one count of them by decision (and the table's rows);
- imports: a process importing what a pipeline's process imports, and nothing else: its peak MB is
  every pipeline's floor.

On MariaDB (unless --no-mariadb), in databases of the same shape: mariadb-baseline, its own one
`DELETE`, and mariadb-pipeline, the `connection-logs` rule.

Every pipeline approach (pipeline, dry-run, pipeline-archive, mariadb-pipeline) also runs three times on
an empty database (the schema, no rows): the shortest of those times is what any run pays whatever its
volume (imports, Great Expectations' context, connections), and its work is the rest.

The table printed for each size:

- approach; rows: the rows it erased (a dry run: would erase);
- seconds: its time on the filled database;
- fixed start-up s: a pipeline approach's shortest time on the empty database;
- rows/s: rows / (seconds - fixed start-up s);
- x baseline: rows/s against its baseline's in the same run: copy-delete for pipeline-archive,
  mariadb-baseline for mariadb-pipeline, baseline for the others;
- peak MB: the peak resident memory of the approach's process, or of the largest process it ran (on
  the filled database).

Below each table: how long the updates beside the erase-only pipeline waited (count, maximum, the
maximum on rows not due, 99th percentile, how many over 1 s). At the end, each requirement, over
every size: met, NOT met, or not measured. The script exits 0 whatever the figures: it measures, it
does not judge.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

AS_OF = datetime(2026, 11, 25, tzinfo=UTC)
LOGS_CUTOFF = datetime(2025, 11, 25, tzinfo=UTC)  # connection-logs: one year
APPLICATIONS_CUTOFF = datetime(2026, 8, 25, tzinfo=UTC)  # applications-rejected: three months

# The updates beside the erase-only pipeline: none waits longer than the lock timeout, none runs after
# PROBE_SECONDS, and each is followed by a short pause, as an application's writes would be.
PROBE_SECONDS = 600
PROBE_PAUSE_SECONDS = 0.01
PROBE_TIMEOUTS = {"lock_timeout": "5s", "statement_timeout": "10s"}

RATIO_FLOORS = (
    ("erase-only pipeline >= 0.25 x one DELETE (PostgreSQL)", "pipeline", 0.25),
    ("erase-only pipeline >= 0.25 x one DELETE (MariaDB)", "mariadb-pipeline", 0.25),
    ("archiving pipeline >= 0.20 x COPY ... TO + DELETE", "pipeline-archive", 0.20),
    ("dry run >= 0.50 x one DELETE", "dry-run", 0.50),
)
PEAK_MB = 300
STARTUP_RUNS = 3
PEAK_DRIFT = 0.15
LONGEST_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Server:
    """How a fresh benchmark database is made on one kind of server; `{name}`: the database."""

    create: str
    drop: str
    fill: tuple[str, ...]
    analyze: str


POSTGRESQL = Server(
    create='CREATE DATABASE "{name}"',
    drop='DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
    fill=(
        "INSERT INTO smicers (id, email, first_name, locale, created_at, last_login_at) "
        "SELECT g, 'bench' || g || '@example.org', 'Bench', 'fr', TIMESTAMPTZ '2020-01-01', "
        "TIMESTAMPTZ '2026-11-01' FROM generate_series(1, :smicers) g",
        # Due rows are older than one year; the rest are recent.
        "INSERT INTO connection_logs (id, smicer_id, connected_at, ip_address, user_agent, succeeded) "
        "SELECT g, 1 + g % :smicers, CASE WHEN g <= :due "
        "THEN TIMESTAMPTZ '2025-01-01' + (g % 1000) * INTERVAL '1 minute' "
        "ELSE TIMESTAMPTZ '2026-06-01' + (g % 1000) * INTERVAL '1 minute' END, '192.0.2.1', 'bench agent', true "
        "FROM generate_series(1, :rows) g",
        "INSERT INTO test_applications (id, smicer_id, test_date, test_ended_at, answers, score, decision, "
        "decided_at) SELECT g, 1 + g % :smicers, DATE '2025-01-10', "
        "CASE WHEN g <= :due THEN TIMESTAMPTZ '2025-01-10' ELSE TIMESTAMPTZ '2026-11-20' END, "
        "'answers of the test', 10, 'rejected', TIMESTAMPTZ '2026-11-21' FROM generate_series(1, :rows) g",
    ),
    analyze="ANALYZE",
)

# The same rows on MariaDB. Its sequence tables are named by their length: that integer is the one
# value formatted into the SQL.
MARIADB = Server(
    create="CREATE DATABASE `{name}`",
    drop="DROP DATABASE IF EXISTS `{name}`",
    fill=(
        "INSERT INTO smicers (id, email, first_name, locale, created_at, last_login_at) "
        "SELECT seq, CONCAT('bench', seq, '@example.org'), 'Bench', 'fr', TIMESTAMP '2020-01-01 00:00:00', "
        "TIMESTAMP '2026-11-01 00:00:00' FROM seq_1_to_{smicers}",
        "INSERT INTO connection_logs (id, smicer_id, connected_at, ip_address, user_agent, succeeded) "
        "SELECT seq, 1 + seq % :smicers, CASE WHEN seq <= :due "
        "THEN TIMESTAMP '2025-01-01 00:00:00' + INTERVAL (seq % 1000) MINUTE "
        "ELSE TIMESTAMP '2026-06-01 00:00:00' + INTERVAL (seq % 1000) MINUTE END, '192.0.2.1', 'bench agent', "
        "true FROM seq_1_to_{rows}",
        "INSERT INTO test_applications (id, smicer_id, test_date, test_ended_at, answers, score, decision, "
        "decided_at) SELECT seq, 1 + seq % :smicers, DATE '2025-01-10', "
        "CASE WHEN seq <= :due THEN TIMESTAMP '2025-01-10 00:00:00' ELSE TIMESTAMP '2026-11-20 00:00:00' END, "
        "'answers of the test', 10, 'rejected', TIMESTAMP '2026-11-21 00:00:00' FROM seq_1_to_{rows}",
    ),
    analyze="ANALYZE TABLE smicers, connection_logs, test_applications",
)

SERVERS = {"postgresql": POSTGRESQL, "mysql": MARIADB, "mariadb": MARIADB}


@dataclass(frozen=True)
class Approach:
    name: str
    server: str  # "postgresql" or "mariadb": which --url it runs on
    work: Callable[[str], int]  # does the work in the database at this URL; returns the rows acted on
    against: str | None  # the approach whose rows/s is this one's 1.0; None: no rate (imports)
    pipeline: bool = False  # also timed on an empty database: its fixed start-up
    probe: bool = False  # single-row updates run beside it, their waits measured


def main() -> int:
    args = _arguments()
    admins = {"postgresql": create_engine(args.url, isolation_level="AUTOCOMMIT")}
    if not args.no_mariadb:
        admins["mariadb"] = create_engine(args.mariadb_url, isolation_level="AUTOCOMMIT")
    approaches = [a for a in APPROACHES if a.server in admins and a.name not in args.skip]
    results = {}
    for rows in args.rows:
        due = int(rows * args.due_share)
        results[rows] = {a.name: _measure_both(admins[a.server], a, rows, due) for a in approaches}
        _print_size(results[rows], rows, due)
    _print_requirements(results)
    return 0


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[300_000])
    parser.add_argument("--due-share", type=float, default=0.3)
    parser.add_argument("--url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--mariadb-url", default="mysql+pymysql://root@127.0.0.1:3306/")
    parser.add_argument("--no-mariadb", action="store_true")
    parser.add_argument("--skip", nargs="+", default=[], choices=[a.name for a in APPROACHES], metavar="APPROACH")
    args = parser.parse_args()
    if not all(0 < int(rows * args.due_share) < rows for rows in args.rows):
        parser.error("every size needs rows due and rows not due: check --rows and --due-share")
    return args


def _measure_both(admin, approach: Approach, rows: int, due: int) -> dict:
    """The approach on the filled database, and a pipeline's shortest time on an empty one as its
    start-up: a process's start-up varies by tenths of a second, its shortest is the least flattering."""
    figures = _measure_fresh(admin, approach, rows, due, filled=True)
    if approach.pipeline:
        startups = [_measure_fresh(admin, approach, rows, due, filled=False)["seconds"] for _ in range(STARTUP_RUNS)]
        figures["startup"] = min(startups)
    return figures


def _measure_fresh(admin, approach: Approach, rows: int, due: int, *, filled: bool) -> dict:
    name = f"lifecycle_bench_{approach.name.replace('-', '_')}{'' if filled else '_empty'}"
    url = _fresh_database(admin, name, rows if filled else 0, due)
    try:
        return _measure(approach, url, rows, due)
    finally:
        _drop_database(admin, url)


def _fresh_database(admin, name: str, rows: int, due: int) -> str:
    from lifecycle.appschema import create_app_schema

    server = SERVERS[admin.dialect.name]
    with admin.connect() as connection:
        connection.execute(text(server.drop.format(name=name)))
        connection.execute(text(server.create.format(name=name)))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    create_app_schema(engine)
    if rows:
        _fill(engine, server, rows, due)
    engine.dispose()
    return url


def _fill(engine, server: Server, rows: int, due: int) -> None:
    sizes = {"rows": rows, "due": due, "smicers": max(rows // 20, 1)}
    with engine.begin() as connection:
        for statement in server.fill:
            connection.execute(text(statement.format(**sizes)), sizes)
        connection.execute(text(server.analyze))


def _drop_database(admin, url: str) -> None:
    server = SERVERS[admin.dialect.name]
    with admin.connect() as connection:
        connection.execute(text(server.drop.format(name=make_url(url).database)))


def _measure(approach: Approach, url: str, rows: int, due: int) -> dict:
    """Run one approach in a fresh process so that its peak memory and its imports are its own."""
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", approach.name, url, str(rows), str(due)], capture_output=True, text=True
    )
    if completed.returncode:
        raise RuntimeError(f"{approach.name} failed on {make_url(url).database}:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _worker(name: str, url: str, rows: int, due: int) -> None:
    approach = next(a for a in APPROACHES if a.name == name)
    probe = _Probe(url, rows, due) if approach.probe else None
    started = time.perf_counter()
    affected = approach.work(url)
    seconds = time.perf_counter() - started
    # The process's own peak, or that of the largest process it ran (the steps of pipeline-tasks).
    peak_kb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    peak_mb = peak_kb / 1024
    figures = {"seconds": seconds, "rows": affected, "peak_mb": peak_mb}
    if probe:
        figures["waits"] = probe.finish()
    print(json.dumps(figures))


class _Probe:
    """The application at work beside a run: a process of its own updating single connection logs."""

    def __init__(self, url: str, rows: int, due: int):
        context = multiprocessing.get_context("fork")
        self._stop = context.Event()
        self._summary, sender = context.Pipe(duplex=False)
        # A daemon: should the run fail, the process ends with it instead of updating on for PROBE_SECONDS.
        self._process = context.Process(target=_update_logs, args=(url, rows, due, self._stop, sender), daemon=True)
        self._process.start()
        sender.close()  # the child's end: if the child dies, finish() gets EOFError instead of waiting

    def finish(self) -> dict:
        self._stop.set()
        summary = self._summary.recv()
        self._process.join()
        return summary


def _update_logs(url: str, rows: int, due: int, stop, sender) -> None:
    """Update one connection log at a time in autocommit until told to stop (PROBE_SECONDS at most);
    one in four is due, which the pipeline may hold locked or have erased (the update then finds none)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    choose = random.Random(rows)
    waits = []  # (seconds, whether the row was due)
    deadline = time.monotonic() + PROBE_SECONDS
    with engine.connect() as connection:
        for setting, value in PROBE_TIMEOUTS.items():
            connection.execute(text("SELECT set_config(:setting, :value, false)"), {"setting": setting, "value": value})
        while True:
            due_row = len(waits) % 4 == 3
            key = choose.randint(1, due) if due_row else choose.randint(due + 1, rows)
            waits.append((_timed_update(connection, key), due_row))
            if stop.wait(PROBE_PAUSE_SECONDS) or time.monotonic() > deadline:
                break
    engine.dispose()
    sender.send(_wait_summary(waits))


def _timed_update(connection, key: int) -> float:
    started = time.perf_counter()
    try:
        connection.execute(
            text("UPDATE connection_logs SET user_agent = :agent WHERE id = :id"), {"agent": "updated", "id": key}
        )
    except OperationalError:  # a lock or statement timeout: the wait is what it lasted
        pass
    return time.perf_counter() - started


def _wait_summary(waits: list[tuple[float, bool]]) -> dict:
    ordered = sorted(seconds for seconds, _ in waits)
    return {
        "updates": len(ordered),
        "max": ordered[-1],
        "max_not_due": max(seconds for seconds, due_row in waits if not due_row),
        "p99": ordered[math.ceil(0.99 * len(ordered)) - 1],
        "over_limit": sum(seconds > LONGEST_WAIT_SECONDS for seconds in ordered),
    }


def _delete_logs(url: str) -> int:
    engine = create_engine(url)
    with engine.begin() as connection:
        return connection.execute(
            text("DELETE FROM connection_logs WHERE connected_at <= :cutoff"), {"cutoff": LOGS_CUTOFF}
        ).rowcount


def _naive(url: str) -> int:
    import pandas as pd

    engine = create_engine(url)
    frame = pd.read_sql(
        text("SELECT * FROM connection_logs WHERE connected_at <= :cutoff"), engine, params={"cutoff": LOGS_CUTOFF}
    )
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM connection_logs WHERE id = :id"), [{"id": int(i)} for i in frame["id"]])
    return len(frame)


def _copy_delete(url: str) -> int:
    """COPY the due rejected applications out to a scratch file, then DELETE them, in one transaction."""
    rows = "FROM test_applications WHERE decision = %(decision)s AND test_ended_at <= %(cutoff)s"
    parameters = {"decision": "rejected", "cutoff": APPLICATIONS_CUTOFF}
    engine = create_engine(url)
    with TemporaryDirectory() as scratch, open(Path(scratch) / "copy", "wb") as sink, engine.begin() as connection:
        cursor = connection.connection.cursor()
        cursor.copy_expert(cursor.mogrify(f"COPY (SELECT * {rows}) TO STDOUT", parameters), sink)
        cursor.execute(f"DELETE {rows}", parameters)
        return cursor.rowcount


def _least_staged(url: str) -> int:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(STAGED_KEYS_TABLE))
        connection.execute(text(STAGE_DUE_KEYS), {"cutoff": LOGS_CUTOFF})
        erased = connection.execute(text(DELETE_STAGED), {"cutoff": LOGS_CUTOFF}).rowcount
        cursor = connection.connection.cursor()
        with open(os.devnull, "wb") as sink:
            cursor.copy_expert("COPY (SELECT record_key FROM staged_keys ORDER BY record_key) TO STDOUT", sink)
    return erased


def _least_batch_audit(url: str) -> int:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(BATCH_AUDIT_TABLE))
        first, last = connection.execute(text("SELECT MIN(id), MAX(id) FROM connection_logs")).one()
    erased = 0
    for key_from in range(first, last + 1, RANGE_KEYS):
        bounds = {"key_from": key_from, "key_to": key_from + RANGE_KEYS, "cutoff": LOGS_CUTOFF}
        with engine.begin() as connection:
            erased += connection.execute(text(DELETE_RANGE_AUDITED), bounds).scalar_one()
    return erased


def _least_scratch(url: str) -> int:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(SCRATCH_TABLE))
        connection.execute(text(STAGE_DUE_INSTANTS), {"cutoff": LOGS_CUTOFF})
        counted = connection.execute(text(COUNT_BY_DECISION)).all()
        connection.execute(text("SELECT COUNT(*) FROM connection_logs")).scalar_one()
    return sum(count for _, count, *_ in counted)


def _imports(url: str) -> int:
    import great_expectations  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from lifecycle import archiving, erasing, gating, select  # noqa: F401
    from lifecycle.store import make_engine

    with make_engine(url).connect() as connection:
        connection.execute(text("SELECT 1"))
    return 0


RANGE_KEYS = 100_000
STAGED_KEYS_TABLE = (
    "CREATE TABLE staged_keys (selection_id INTEGER, record_key BIGINT, decision VARCHAR(12), "
    "state VARCHAR(16), PRIMARY KEY (selection_id, record_key))"
)
STAGE_DUE_KEYS = (
    "INSERT INTO staged_keys SELECT 1, id, 'due', 'pending' FROM connection_logs WHERE connected_at <= :cutoff"
)
DELETE_STAGED = (
    "DELETE FROM connection_logs t USING staged_keys s "
    "WHERE s.selection_id = 1 AND s.record_key = t.id AND t.connected_at <= :cutoff"
)
SCRATCH_TABLE = (
    "CREATE TEMPORARY TABLE scratch (record_key BIGINT, decision VARCHAR(12), anchor_epoch BIGINT, due_epoch BIGINT)"
)
STAGE_DUE_INSTANTS = (
    "INSERT INTO scratch SELECT id, 'due', EXTRACT(EPOCH FROM connected_at)::BIGINT, "
    "EXTRACT(EPOCH FROM connected_at + INTERVAL '1 year')::BIGINT FROM connection_logs WHERE connected_at <= :cutoff"
)
COUNT_BY_DECISION = (
    "SELECT decision, COUNT(*), COUNT(DISTINCT record_key), MAX(anchor_epoch), MAX(due_epoch) "
    "FROM scratch GROUP BY decision"
)
BATCH_AUDIT_TABLE = "CREATE TABLE batch_audit (key_from BIGINT, key_to BIGINT, record_keys BIGINT[])"
DELETE_RANGE_AUDITED = (
    "WITH gone AS (DELETE FROM connection_logs WHERE id >= :key_from AND id < :key_to "
    "AND connected_at <= :cutoff RETURNING id), "
    "audited AS (INSERT INTO batch_audit SELECT :key_from, :key_to, array_agg(id ORDER BY id) FROM gone) "
    "SELECT COUNT(*) FROM gone"
)


def _pipeline(rule_id: str, *, dry_run: bool = False) -> Callable[[str], int]:
    def run(url: str) -> int:
        from lifecycle.pipeline import run_rule

        with TemporaryDirectory() as scratch:
            run, rule = _run_context(url, rule_id, scratch, dry_run=dry_run)
            if rule.archives:
                import pyarrow.parquet  # noqa: F401  (loaded by every run that archives; on an empty table too)
            results = run_rule(run, rule)
        return next((r["erased"] for r in results if "erased" in r), 0)

    return run


def _pipeline_tasks(rule_id: str) -> Callable[[str], int]:
    """The rule as Airflow runs it: each step in a process of its own, one after the other."""

    def run(url: str) -> int:
        from lifecycle.pipeline import steps_for
        from lifecycle.policy import load_policy

        erased = 0
        with TemporaryDirectory() as scratch:
            for step in steps_for(load_policy().rule(rule_id)):
                done = subprocess.run(
                    [sys.executable, __file__, "--step", rule_id, step, url, scratch], capture_output=True, text=True
                )
                if done.returncode:
                    raise RuntimeError(f"step {step} of {rule_id} failed:\n{done.stderr[-4000:]}")
                erased += json.loads(done.stdout.strip().splitlines()[-1]).get("erased", 0)
        return erased

    return run


def _step(rule_id: str, step: str, url: str, scratch: str) -> None:
    from lifecycle.pipeline import run_step

    run, rule = _run_context(url, rule_id, scratch)
    print(json.dumps(run_step(run, rule, step), default=str))


def _run_context(url: str, rule_id: str, scratch: str, *, dry_run: bool = False):
    """The run of one rule every step of an approach shares, archiving into `scratch`."""
    from lifecycle.policy import load_policy
    from lifecycle.run import RunContext
    from lifecycle.store import ensure_lifecycle_tables, make_engine

    engine = make_engine(url)
    ensure_lifecycle_tables(engine)
    policy = load_policy()
    run = RunContext(
        engine=engine,
        policy=policy,
        as_of=AS_OF,
        dag_id="benchmark",
        run_id=rule_id,
        archive_uri=(Path(scratch) / "archive").as_uri(),
        reports_dir=Path(scratch) / "reports",
        volume_approved=True,
        dry_run=dry_run,
    )
    return run, policy.rule(rule_id)


APPROACHES = (
    Approach("baseline", "postgresql", _delete_logs, "baseline"),
    Approach("naive", "postgresql", _naive, "baseline"),
    Approach("pipeline", "postgresql", _pipeline("connection-logs"), "baseline", pipeline=True, probe=True),
    Approach("pipeline-tasks", "postgresql", _pipeline_tasks("connection-logs"), "baseline", pipeline=True),
    Approach("dry-run", "postgresql", _pipeline("connection-logs", dry_run=True), "baseline", pipeline=True),
    Approach("copy-delete", "postgresql", _copy_delete, "copy-delete"),
    Approach("pipeline-archive", "postgresql", _pipeline("applications-rejected"), "copy-delete", pipeline=True),
    Approach("least-staged", "postgresql", _least_staged, "baseline"),
    Approach("least-batch-audit", "postgresql", _least_batch_audit, "baseline"),
    Approach("least-scratch", "postgresql", _least_scratch, "baseline"),
    Approach("imports", "postgresql", _imports, None),
    Approach("mariadb-baseline", "mariadb", _delete_logs, "mariadb-baseline"),
    Approach("mariadb-pipeline", "mariadb", _pipeline("connection-logs"), "mariadb-baseline", pipeline=True),
)


def _rate(figures: dict) -> float | None:
    """Rows per second of work: a pipeline's time less its start-up; None without rows, or when that
    time is not positive."""
    work = figures["seconds"] - figures.get("startup", 0.0)
    return figures["rows"] / work if figures["rows"] and work > 0 else None


def _ratio(size_results: dict, approach: Approach) -> float | None:
    if approach.against is None:
        return None
    rate, base = _rate(size_results[approach.name]), _rate(size_results[approach.against])
    return rate / base if rate is not None and base else None


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_size(size_results: dict, rows: int, due: int) -> None:
    print(f"\n{rows} rows a table, {due} due; each ratio against its baseline of this run")
    print(
        f"{'approach':<18}{'rows':>9}{'seconds':>10}{'fixed start-up s':>18}"
        f"{'rows/s':>10}{'x baseline':>12}{'peak MB':>9}"
    )
    for approach in APPROACHES:
        figures = size_results.get(approach.name)
        if figures:
            print(
                f"{approach.name:<18}{figures['rows']:>9}{figures['seconds']:>10.2f}"
                f"{_cell(figures.get('startup'), '.2f'):>18}{_cell(_rate(figures), '.0f'):>10}"
                f"{_cell(_ratio(size_results, approach), '.3f'):>12}{figures['peak_mb']:>9.0f}"
            )
    if "pipeline" not in size_results:
        return
    waits = size_results["pipeline"]["waits"]
    print(
        f"updates beside the erase-only pipeline: {waits['updates']}, longest wait {waits['max']:.3f} s "
        f"(on a row not due: {waits['max_not_due']:.3f} s), 99th percentile {waits['p99']:.3f} s, "
        f"{waits['over_limit']} over {LONGEST_WAIT_SECONDS:g} s"
    )


def _print_requirements(results: dict) -> None:
    print("\nRequirements, over every size:")
    for label, (met, detail) in _requirements(results):
        verdict = "not measured" if met is None else "met" if met else "NOT met"
        print(f"  {label}: {verdict} ({detail})")


def _requirements(results: dict):
    measured = next(iter(results.values()))
    pipelines = [a for a in APPROACHES if a.pipeline and a.name in measured]
    for label, name, floor in RATIO_FLOORS:
        if name in measured:
            yield label, _lowest_ratio(results, next(a for a in APPROACHES if a.name == name), floor)
    if pipelines:
        yield f"peak memory < {PEAK_MB} MB, every pipeline approach", _highest_peak(results, pipelines)
        drift = f"peak memory at the largest size within {PEAK_DRIFT:.0%} of the smallest"
        yield drift, _peak_drift(results, pipelines)
    if "pipeline" in measured:
        yield f"no update waited > {LONGEST_WAIT_SECONDS:g} s beside the erase-only pipeline", _longest_wait(results)


def _lowest_ratio(results: dict, approach: Approach, floor: float) -> tuple[bool | None, str]:
    ratios = {rows: _ratio(size_results, approach) for rows, size_results in results.items()}
    if None in ratios.values():
        return None, "its work was within the noise of its start-up at some size"
    rows, lowest = min(ratios.items(), key=lambda item: item[1])
    return lowest >= floor, f"lowest {lowest:.3f}, at {rows} rows"


def _highest_peak(results: dict, pipelines: list[Approach]) -> tuple[bool, str]:
    peak, name, rows = max((r[a.name]["peak_mb"], a.name, rows) for rows, r in results.items() for a in pipelines)
    return peak < PEAK_MB, f"highest {peak:.0f} MB, {name} at {rows} rows"


def _peak_drift(results: dict, pipelines: list[Approach]) -> tuple[bool | None, str]:
    if len(results) < 2:
        return None, "one size only"
    smallest, largest = results[min(results)], results[max(results)]
    drifts = {a.name: largest[a.name]["peak_mb"] / smallest[a.name]["peak_mb"] - 1 for a in pipelines}
    name = max(drifts, key=lambda n: abs(drifts[n]))
    return abs(drifts[name]) <= PEAK_DRIFT, f"largest change {drifts[name]:+.0%}, {name}"


def _longest_wait(results: dict) -> tuple[bool, str]:
    waits = [size_results["pipeline"]["waits"] for size_results in results.values()]
    longest = max(w["max"] for w in waits)
    updates = sum(w["updates"] for w in waits)
    return longest <= LONGEST_WAIT_SECONDS, f"longest {longest:.3f} s of {updates} updates"


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) == 6 and sys.argv[1] == "--step":
        _step(*sys.argv[2:])
    else:
        sys.exit(main())
