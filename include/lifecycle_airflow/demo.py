"""The demo: a fresh SQLite application database full of synthetic smicers, every retention DAG
run for one as-of date through `airflow dags test`, and what each rule did.

    scripts/demo [--as-of YYYY-MM-DD] [--size N] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
from lifecycle.policy import load_policy
from lifecycle.reporting import COLUMNS
from lifecycle.store import make_engine
from lifecycle_airflow import config



def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    as_of = datetime.combine(args.as_of, datetime.min.time(), tzinfo=UTC)
    data = config.data_dir()
    _fresh_data_folder(data)
    seeded = _seed(as_of, args.size, args.seed, data)
    print(f"Seeded {sum(seeded.values())} rows ({args.size} smicers, seed {args.seed}) into {config.default_app_url()}")
    log = data / "airflow-dags-test.log"
    failed = [dag_id for dag_id in _dag_ids() if not _run_dag(dag_id, args.as_of.isoformat(), log)]
    _print_summary(data / "reports")
    print(f"\nArchive: {data / 'archive'}\nReports: {data / 'reports'}\nAirflow output: {log}")
    if failed:
        print(f"\nFailed runs: {', '.join(failed)} (see {log})")
    return 1 if failed else 0


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--as-of", type=lambda s: datetime.strptime(s, "%Y-%m-%d").date(),
                        default=datetime.now(UTC).date(), help="the runs' logical date (default: today, UTC)")
    parser.add_argument("--size", type=int, default=200, help="number of smicers (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the synthetic data (default 7)")
    return parser.parse_args(argv)


def _fresh_data_folder(data: Path) -> None:
    """The demo owns data/: it starts from nothing each time."""
    for name in ("smice_demo.db", "smice_demo.db-wal", "smice_demo.db-shm"):
        (data / name).unlink(missing_ok=True)
    for name in ("archive", "reports", "documents"):
        shutil.rmtree(data / name, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)


def _seed(as_of: datetime, size: int, seed: int, data: Path) -> dict[str, int]:
    engine = make_engine(config.default_app_url())
    create_app_schema(engine)
    seeded = seed_demo(engine, as_of, size=size, seed=seed, documents_dir=data / "documents")
    engine.dispose()
    return seeded


def _dag_ids() -> list[str]:
    return [purpose.dag_id for purpose in load_policy(config.policy_path()).purposes]


def _run_dag(dag_id: str, as_of: str, log: Path) -> bool:
    started = time.monotonic()
    with log.open("a", encoding="utf-8") as output:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "dags", "test", dag_id, as_of],
            stdout=output, stderr=subprocess.STDOUT, check=False,
        )
    outcome = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    print(f"  airflow dags test {dag_id} {as_of}: {outcome} in {time.monotonic() - started:.0f} s")
    return result.returncode == 0


def _print_summary(reports: Path) -> None:
    print(f"\n{'rule':<24}" + "".join(f"{column:>14}" for column in COLUMNS))
    for report_file in sorted(reports.glob("*/*/report.json")):
        report = json.loads(report_file.read_text(encoding="utf-8"))
        for outcome in report["rules"]:
            print(f"{outcome['rule']:<24}" + "".join(f"{outcome.get(column, 0):>14}" for column in COLUMNS))


if __name__ == "__main__":
    sys.exit(main())
