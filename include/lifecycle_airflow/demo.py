"""The demo: a fresh SQLite application database full of synthetic smicers, every retention DAG
run for one as-of date through Airflow (`dag.test()`, as `airflow dags test` does), and what each rule did.
With --follow-up-days N, one smicer who got a reactivation notice logs in the next day and every DAG
runs again N days later: past the 30-day grace period, the others are erased. With --prepare-only, the
database is seeded and nothing run: the DAGs are the user's to trigger from the UI.

    scripts/demo [--as-of YYYY-MM-DD] [--size N] [--seed N] [--follow-up-days N | --prepare-only]
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
from lifecycle.report_paths import run_report_dir
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
    dag_ids = _dag_ids()
    if args.prepare_only:
        _print_what_to_trigger(dag_ids, as_of)
        return 0
    log = data / "airflow-dag-test.log"
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
    passes = parser.add_mutually_exclusive_group()
    passes.add_argument(
        "--follow-up-days",
        type=int,
        default=0,
        help="run every DAG again this many days later (31: past the reactivation grace period)",
    )
    passes.add_argument(
        "--prepare-only",
        action="store_true",
        help="seed the database and run nothing: trigger the DAGs from the UI",
    )
    return parser.parse_args(argv)


def _fresh_data_folder(data: Path) -> None:
    """The demo owns data/: a fresh database, archive, documents and outbox each time. The reports stay,
    one folder per run: Airflow keeps the earlier runs, and their Run report tabs show them."""
    for name in ("smice_demo.db", "smice_demo.db-wal", "smice_demo.db-shm"):
        (data / name).unlink(missing_ok=True)
    for name in ("archive", "documents", "outbox"):
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


def _print_what_to_trigger(dag_ids: list[str], as_of: datetime) -> None:
    from lifecycle_airflow import holds_dag, replay_dag, restore_dag, subject_dag

    retention = "".join(f"\n  {dag_id}" for dag_id in dag_ids)
    on_demand = ", ".join(module.DAG_ID for module in (holds_dag, subject_dag, restore_dag, replay_dag))
    print(
        "\nNothing was run: the DAGs are yours to trigger from the Airflow UI.\n"
        "\n  source scripts/env.sh && airflow standalone    # http://127.0.0.1:8080, user admin\n"
        "\nThe admin password is in simple_auth_manager_passwords.json.generated. Unpause and trigger each"
        " retention DAG (dry_run first shows what a run would do; a run triggered now acts as of now, or as of"
        f" the logical date you give it, e.g. {as_of:%Y-%m-%d}):{retention}"
        f"\nand the on-demand DAGs from their forms: {on_demand} (e.g. a legal hold by table and key placed"
        " before a retention run: its report counts the record held)."
    )


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
    runs = _run_dags(dag_ids, as_of, airflow_output, {"volume_approved": volume_approved})
    _print_summary(data / "reports", runs)
    _print_notices(sorted(set(mail_config.outbox_dir().glob("*.eml")) - sent_before))
    return [dag_id for dag_id, (_, state) in runs.items() if state != "success"]


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


def _run_dags(dag_ids: list[str], as_of: datetime, output: TextIO, conf: dict) -> dict[str, tuple[str, str]]:
    """Run each DAG with dag.test() in this process, Airflow's own output going to `output`: each
    DAG's run id and final state."""
    from airflow.dag_processing.dagbag import DagBag

    runs, seconds = {}, {}
    with output_to(output):
        bag = DagBag(collect_dags=True)
        for dag_id in dag_ids:
            started = time.monotonic()
            run = bag.dags[dag_id].test(logical_date=as_of, run_conf=conf)
            seconds[dag_id] = time.monotonic() - started
            _started_when_created(run.id)
            runs[dag_id] = (run.run_id, run.state)
    for dag_id, (_, state) in runs.items():
        print(f"  {dag_id}: {state} in {seconds[dag_id]:.0f} s")
    return runs


def _started_when_created(run_key: int) -> None:
    """dag.test() dates a run's start at its logical date, the as-of: the UI would show a run of a few
    seconds as lasting since that midnight. It started when dag.test() created it, its run_after."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagRun).where(DagRun.id == run_key).values(start_date=DagRun.run_after))


def _print_summary(reports: Path, runs: dict[str, tuple[str, str]]) -> None:
    """What each rule of each DAG's run did, from the run's report."""
    widths = [max(len(column) + 2, 8) for column in COLUMNS]
    header = f"{'rule':<24}" + "".join(f"{column:>{w}}" for column, w in zip(COLUMNS, widths, strict=True))
    for dag_id, (run_id, _) in runs.items():
        report_file = run_report_dir(reports, dag_id, run_id) / "report.json"
        if report_file.is_file():
            report = json.loads(report_file.read_text(encoding="utf-8"))
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
