"""The demo: a fresh SQLite application database full of synthetic smicers, every retention DAG
run for one as-of date through Airflow (`dag.test()`, as `airflow dags test` does), and what each rule did.
With --follow-up-days N, one smicer who got a reactivation notice logs in the next day and every DAG
runs again N days later: past the 30-day grace period, the others are erased.

    scripts/demo [--as-of YYYY-MM-DD] [--size N] [--seed N] [--follow-up-days N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from sqlalchemy import column, table

from lifecycle.appschema import create_app_schema
from lifecycle.demo.seed import seed_demo
from lifecycle.policy import load_policy
from lifecycle.reporting import COLUMNS, NOTICE_COLUMNS
from lifecycle.store import lifecycle_tables, make_engine
from lifecycle_airflow import config, mail_config
from lifecycle_airflow.capture import output_to


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    as_of = datetime.combine(args.as_of, datetime.min.time(), tzinfo=UTC)
    data = config.data_dir()
    _fresh_data_folder(data)
    seeded = _seed(as_of, args.size, args.seed, data)
    print(f"Seeded {sum(seeded.values())} rows ({args.size} smicers, seed {args.seed}) into {config.default_app_url()}")
    log = data / "airflow-dag-test.log"
    dag_ids = _dag_ids()
    # Open for the whole demo: Airflow's loggers keep writing to the stream of their first run.
    with log.open("a", encoding="utf-8") as airflow_output:
        failed = _run_pass(dag_ids, as_of, airflow_output, data)
        if args.follow_up_days:
            responder = _log_in_after_notice(as_of)
            if responder is not None:
                login_day = as_of + timedelta(days=1)
                print(f"\nSmicer {responder} logs in on {login_day:%Y-%m-%d}: a response to the notice.")
            # One run doing a month of nightly work is what the volume safeguard stops: approve it.
            failed += _run_pass(
                dag_ids, as_of + timedelta(days=args.follow_up_days), airflow_output, data, volume_approved=True
            )
    print(
        f"\nArchive: {data / 'archive'}\nReports: {data / 'reports'}\nOutbox: {mail_config.outbox_dir()}"
        f"\nAirflow output: {log}"
    )
    if failed:
        print(f"\nFailed runs: {', '.join(failed)} (see {log})")
    return 1 if failed else 0


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--as-of",
        type=lambda s: datetime.strptime(s, "%Y-%m-%d").date(),
        default=datetime.now(UTC).date(),
        help="the runs' logical date (default: today, UTC)",
    )
    parser.add_argument("--size", type=int, default=200, help="number of smicers (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the synthetic data (default 7)")
    parser.add_argument(
        "--follow-up-days",
        type=int,
        default=0,
        help="run every DAG again this many days later (31: past the reactivation grace period)",
    )
    return parser.parse_args(argv)


def _fresh_data_folder(data: Path) -> None:
    """The demo owns data/: it starts from nothing each time."""
    for name in ("smice_demo.db", "smice_demo.db-wal", "smice_demo.db-shm"):
        (data / name).unlink(missing_ok=True)
    for name in ("archive", "reports", "documents", "outbox"):
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


def _run_pass(
    dag_ids: list[str], as_of: datetime, airflow_output: TextIO, data: Path, volume_approved: bool = False
) -> list[str]:
    """Every DAG for one as-of, then what each rule did and the notices it left in the outbox."""
    approval = ", approved for volume" if volume_approved else ""
    print(
        f"\nRunning every retention DAG for as-of {as_of:%Y-%m-%d}{approval} "
        f"(dag.test; Airflow's output in {airflow_output.name})"
    )
    sent_before = set(mail_config.outbox_dir().glob("*.eml"))
    failed = _run_dags(dag_ids, as_of, airflow_output, {"volume_approved": volume_approved})
    _print_summary(data / "reports", dag_ids, as_of)
    _print_notices(sorted(set(mail_config.outbox_dir().glob("*.eml")) - sent_before))
    return failed


def _log_in_after_notice(as_of: datetime) -> int | None:
    """The first smicer emailed logs in the day after the notice (the application would record it)."""
    from sqlalchemy import select, update

    engine = make_engine(config.default_app_url())
    notices = lifecycle_tables(engine).reactivation_notices
    with engine.begin() as connection:
        smicer = connection.execute(
            select(notices.c.record_key).where(notices.c.state == "sent").order_by(notices.c.record_key).limit(1)
        ).scalar()
        if smicer is not None:
            smicers = table("smicers", column("id"), column("last_login_at"))
            login = (as_of + timedelta(days=1, hours=9)).replace(tzinfo=None)
            connection.execute(update(smicers).where(smicers.c.id == smicer).values(last_login_at=login))
    engine.dispose()
    return smicer


def _print_notices(files: list[Path]) -> None:
    """The notices of a pass, by file, language and subject (the recipient's address stays in the file)."""
    from email import message_from_bytes, policy

    print(f"\nReactivation notices in the outbox: {len(files)} new in {mail_config.outbox_dir()}")
    for path in files:
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        print(f"  {path.name}  [{message['Content-Language']}]  {message['Subject']}")


def _run_dags(dag_ids: list[str], as_of: datetime, output: TextIO, conf: dict) -> list[str]:
    """Run each DAG with dag.test() in this process, Airflow's own output going to `output`."""
    from airflow.dag_processing.dagbag import DagBag

    outcomes = []
    with output_to(output):
        bag = DagBag(collect_dags=True)
        for dag_id in dag_ids:
            started = time.monotonic()
            state = bag.dags[dag_id].test(logical_date=as_of, run_conf=conf).state
            outcomes.append((dag_id, state, time.monotonic() - started))
    for dag_id, state, seconds in outcomes:
        print(f"  {dag_id}: {state} in {seconds:.0f} s")
    return [dag_id for dag_id, state, _ in outcomes if state != "success"]


def _print_summary(reports: Path, dag_ids: list[str], as_of: datetime) -> None:
    widths = [max(len(column) + 2, 8) for column in COLUMNS]
    header = f"{'rule':<24}" + "".join(f"{column:>{w}}" for column, w in zip(COLUMNS, widths, strict=True))
    for dag_id in dag_ids:
        for report_file in sorted((reports / dag_id).glob("*/report.json")):
            report = json.loads(report_file.read_text(encoding="utf-8"))
            if report["as_of"] != as_of.isoformat():
                continue
            print(f"\n{dag_id}  (report: {report_file.with_suffix('.md')})\n{header}")
            for outcome in report["rules"]:
                cells = "".join(f"{outcome.get(c, 0):>{w}}" for c, w in zip(COLUMNS, widths, strict=True))
                print(f"{outcome['rule']:<24}{cells}")
                if outcome.get("action") == "reactivate":
                    notices = ", ".join(
                        f"{column.replace('_', ' ')} {outcome.get(column, 0)}" for column in NOTICE_COLUMNS
                    )
                    print(f"{'':<24}notices: {notices}")


if __name__ == "__main__":
    sys.exit(main())
