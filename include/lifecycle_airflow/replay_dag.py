"""The on-demand DAG `erasure_replay`: after the application database is restored from a backup,
the erasures made since the backup are made again from the erasure ledger in the archive
(lifecycle.replay). Its one task replays (or, by default, only counts in a dry run), returns the
counts as XCom and writes the run's report; tables and numbers only, never a record's data."""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from lifecycle_airflow import config, tasks
from lifecycle_airflow.factory import on_demand_dag

DAG_ID = "erasure_replay"

DOC = """# Erasure replay

Restoring the application database from a backup brings back the records erased since the backup
was taken, and rolls their audit trail back with it. Every erase step also writes what it erased
and pseudonymised to the erasure ledger in the evidence archive (`ledger/<day>/...`), which the
restore does not touch. This DAG reads the ledger from `since` on and erases again what is present
again: rows erased are deleted, missions pseudonymised are unlinked from their smicer again, each
with an audit event of rule `replay`. A record under a legal hold now is left in place and counted.

- **since**: the day (UTC) the backup was taken; in doubt, the day before (erasures the backup
  already held find nothing to erase again).
- **dry_run** (default on): count what would be erased again, change nothing.

The counts are the task's XCom and the run's report. The same from a shell:
`python -m lifecycle.replay --since YYYY-MM-DD [--dry-run]` (README, "Erasure replay").
"""


def build_replay_dag() -> DAG:
    with on_demand_dag(
        DAG_ID,
        "Erase again, after a database restore, what the erasure ledger records since a day",
        DOC,
        ["gdpr", "erasure", "restore"],
        {
            "since": Param(
                type="string",
                format="date",
                title="Since",
                description="The day (UTC, YYYY-MM-DD) the restored backup was taken, or the day before if in "
                "doubt: the ledger is read from it on.",
            ),
            "dry_run": Param(
                True,
                type=["null", "boolean"],
                title="Dry run",
                description="On: count what would be erased again, change nothing. Switch it off to erase again.",
            ),
        },
    ) as dag:
        replay()
    return dag


@task(task_id="replay")
def replay(params=None, dag_run=None) -> dict:
    """The replay; a malformed `since` or a doubtful ledger fails the task without retry, nothing changed."""
    from airflow.sdk.exceptions import AirflowFailException

    from lifecycle.replay import ReplayError, parse_since, replay_erasures, write_replay_report
    from lifecycle.report_paths import run_report_dir
    from lifecycle.stores import ArchiveError, open_archive_store

    try:
        since = parse_since(params.get("since"))
        uri = config.archive_uri()
        store = open_archive_store(uri, config.archive_s3_options(uri))
        engine = tasks._engine(config.app_database_url())
        policy = tasks._policy(config.policy_path())
        dry_run = params.get("dry_run") is not False  # only an explicit false erases
        counts = replay_erasures(engine, policy, store, since, dry_run, dag_id=dag_run.dag_id, run_id=dag_run.run_id)
    except (ReplayError, ArchiveError) as error:
        raise AirflowFailException(str(error)) from None
    folder = run_report_dir(config.reports_dir(), dag_run.dag_id, dag_run.run_id)
    write_replay_report(folder, counts | {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "archive": uri})
    print(f"erasure replay since {since.isoformat()}: {counts['totals']}")
    return counts
