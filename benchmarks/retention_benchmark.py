"""Speed and memory of a retention rule against the database's own limit, measured in one run.

    scripts/benchmark [--rows 300000] [--due-share 0.3] [--url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]

For each approach a fresh PostgreSQL database is filled with `rows` connection logs (and test
applications) of which `due-share` are due, then one process does the work and reports its time
and peak memory:

- baseline: one `DELETE ... WHERE connected_at <= cutoff` statement (the database's own limit);
- naive: `pandas.read_sql` of every due row, then a delete per row (what we must not do);
- pipeline: the `connection-logs` rule (select, gate, erase in batches, verify);
- pipeline-archive: the `applications-rejected` rule (select, gate, archive to Parquet, verify, erase);
- dry-run: the `connection-logs` rule as a dry run (each step decides again and counts; nothing is written).

Figures are printed as rows per second and as ratios to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

AS_OF = datetime(2026, 11, 25, tzinfo=UTC)
APPROACHES = ("baseline", "naive", "pipeline", "pipeline-archive", "dry-run")

FILL = [
    "INSERT INTO smicers (id, email, first_name, locale, created_at, last_login_at) "
    "SELECT g, 'bench' || g || '@example.org', 'Bench', 'fr', TIMESTAMPTZ '2020-01-01', TIMESTAMPTZ '2026-11-01' "
    "FROM generate_series(1, :smicers) g",
    # Due rows are older than one year; the rest are recent.
    "INSERT INTO connection_logs (id, smicer_id, connected_at, ip_address, user_agent, succeeded) "
    "SELECT g, 1 + g % :smicers, CASE WHEN g <= :due THEN TIMESTAMPTZ '2025-01-01' + (g % 1000) * INTERVAL '1 minute' "
    "ELSE TIMESTAMPTZ '2026-06-01' + (g % 1000) * INTERVAL '1 minute' END, '192.0.2.1', 'bench agent', true "
    "FROM generate_series(1, :rows) g",
    "INSERT INTO test_applications (id, smicer_id, test_date, test_ended_at, answers, score, decision, decided_at) "
    "SELECT g, 1 + g % :smicers, DATE '2025-01-10', "
    "CASE WHEN g <= :due THEN TIMESTAMPTZ '2025-01-10' ELSE TIMESTAMPTZ '2026-11-20' END, "
    "'answers of the test', 10, 'rejected', TIMESTAMPTZ '2026-11-21' FROM generate_series(1, :rows) g",
]


def main() -> int:
    args = _arguments()
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    due = int(args.rows * args.due_share)
    results = {}
    for approach in APPROACHES:
        url = _fresh_database(admin, f"lifecycle_bench_{approach.replace('-', '_')}", args.rows, due)
        try:
            results[approach] = _measure(approach, url)
        finally:
            _drop_database(admin, url)
    _print(results, args.rows, due)
    return 0


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--due-share", type=float, default=0.3)
    parser.add_argument("--url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args()


def _fresh_database(admin, name: str, rows: int, due: int) -> str:
    from lifecycle.appschema import create_app_schema

    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin.url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    create_app_schema(engine)
    with engine.begin() as connection:
        for statement in FILL:
            connection.execute(text(statement), {"rows": rows, "due": due, "smicers": max(rows // 20, 1)})
        connection.execute(text("ANALYZE"))
    engine.dispose()
    return url


def _drop_database(admin, url: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


def _measure(approach: str, url: str) -> dict:
    """Run one approach in a fresh process so that its peak memory is its own."""
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", approach, url], capture_output=True, text=True, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _worker(approach: str, url: str) -> None:
    if approach.startswith("pipeline"):
        import great_expectations  # noqa: F401  (a one-time cost of every task process, not of the rule)
    started = time.perf_counter()
    affected = WORKERS[approach](url)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": affected, "peak_mb": peak_mb}))


def _baseline(url: str) -> int:
    engine = create_engine(url)
    with engine.begin() as connection:
        return connection.execute(
            text("DELETE FROM connection_logs WHERE connected_at <= :cutoff"),
            {"cutoff": datetime(2025, 11, 25, tzinfo=UTC)},
        ).rowcount


def _naive(url: str) -> int:
    import pandas as pd

    engine = create_engine(url)
    frame = pd.read_sql(
        text("SELECT * FROM connection_logs WHERE connected_at <= :cutoff"),
        engine,
        params={"cutoff": datetime(2025, 11, 25, tzinfo=UTC)},
    )
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM connection_logs WHERE id = :id"), [{"id": int(i)} for i in frame["id"]])
    return len(frame)


def _pipeline(rule_id: str, *, dry_run: bool = False):
    def run(url: str) -> int:
        from lifecycle.pipeline import run_rule
        from lifecycle.policy import load_policy
        from lifecycle.run import RunContext
        from lifecycle.store import ensure_lifecycle_tables, make_engine

        engine = make_engine(url)
        ensure_lifecycle_tables(engine)
        policy = load_policy()
        with TemporaryDirectory() as scratch:
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
            results = run_rule(run, policy.rule(rule_id))
        return next(r["erased"] for r in results if "erased" in r)

    return run


WORKERS = {
    "baseline": _baseline,
    "naive": _naive,
    "pipeline": _pipeline("connection-logs"),
    "pipeline-archive": _pipeline("applications-rejected"),
    "dry-run": _pipeline("connection-logs", dry_run=True),
}


def _print(results: dict, rows: int, due: int) -> None:
    base = results["baseline"]["rows"] / results["baseline"]["seconds"]
    print(f"{rows} rows a table, {due} due; PostgreSQL; ratios against the one-statement DELETE of this run")
    print(f"{'approach':<18}{'rows':>9}{'seconds':>10}{'rows/s':>10}{'x baseline':>12}{'peak MB':>9}")
    for approach, figures in results.items():
        speed = figures["rows"] / figures["seconds"]
        print(
            f"{approach:<18}{figures['rows']:>9}{figures['seconds']:>10.1f}{speed:>10.0f}"
            f"{speed / base:>12.3f}{figures['peak_mb']:>9.0f}"
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
