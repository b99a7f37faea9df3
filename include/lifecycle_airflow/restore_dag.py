"""The on-demand DAG `archive_restore`: archived evidence back out of the cold archive, for a batch
or for one person's records. Its one task is a sensor in reschedule mode: each poke asks S3 to
restore what is still cold and copies what is readable; it holds no worker slot in between."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, BaseSensorOperator, Param

from lifecycle_airflow import tasks
from lifecycle_airflow.factory import KEPT_BY_AIRFLOW, on_demand_dag

DAG_ID = "archive_restore"
POKE_INTERVAL = timedelta(hours=1)
# DEEP_ARCHIVE's Bulk tier takes up to 48 hours.
RESTORE_TIMEOUT = timedelta(days=3)

DOC = """# Restore archived evidence

Trigger with either `batch_key` (a batch of a retention run's report) or `email` (every archived
record of that person, found by the digest of the address; only their rows are copied). Parts in
`DEEP_ARCHIVE` or `GLACIER` are restored first (`tier`: Bulk, Standard or Expedited; `days`: how long
S3 keeps the restored copy); the task waits, rescheduled every hour, then copies the records, each
part checked against its manifest's SHA-256, to `destination` (`file:///abs/dir`; empty: the
local data folder's `restored/`). See docs/s3-archive.md for retrieval times.
"""


class RestoreEvidenceSensor(BaseSensorOperator):
    def poke(self, context):
        return tasks.restore_evidence(context["params"])


def build_restore_dag() -> DAG:
    with on_demand_dag(
        DAG_ID,
        "Restore archived evidence for a batch or a person",
        DOC,
        ["gdpr", "archive", "restore"],
        {
            "batch_key": Param(
                None,
                type=["null", "string"],
                title="Batch key",
                description="Restore this batch, its key as in the run reports; or leave it empty and give an email.",
            ),
            "email": Param(
                None,
                type=["null", "string"],
                maxLength=320,
                title="Email address",
                description="Or: restore every archived record of this address (only their rows are copied). "
                + KEPT_BY_AIRFLOW,
            ),
            "destination": Param(
                None,
                type=["null", "string"],
                title="Destination",
                description="Where the records are copied: file:///absolute/folder. Empty: the data folder's "
                "restored/.",
            ),
            "tier": Param(
                "Bulk",
                type="string",
                enum=["Bulk", "Standard", "Expedited"],
                values_display={
                    "Bulk": "Bulk: the cheapest; 5-12 hours from GLACIER, up to 48 from DEEP_ARCHIVE",
                    "Standard": "Standard: 3-5 hours from GLACIER, up to 12 from DEEP_ARCHIVE",
                    "Expedited": "Expedited: 1-5 minutes from GLACIER; not offered for DEEP_ARCHIVE",
                },
                title="Restore tier",
                description="How fast S3 restores the parts in DEEP_ARCHIVE or GLACIER (the faster, the dearer).",
            ),
            "days": Param(
                3,
                type="integer",
                minimum=1,
                title="Days kept",
                description="How many days S3 keeps the restored copy of a cold part.",
            ),
        },
    ) as dag:
        RestoreEvidenceSensor(
            task_id="restore", poke_interval=POKE_INTERVAL, timeout=RESTORE_TIMEOUT, mode="reschedule"
        )
    return dag
