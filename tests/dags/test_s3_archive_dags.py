"""The S3 archive through Airflow: a retention DAG archives to moto's S3 through the connection
`aws_default` and the lifecycle_s3_* variables, verifies and erases, and keeps its report and
validation results on S3 (`lifecycle_reports_uri`), where the report view reads them;
`archive_restore` brings a batch back; its DAG file parses without importing boto3."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime

import pytest
from dateutil.relativedelta import relativedelta

from airflow_harness import PROJECT, run_dag, task_states, xcoms
from lifecycle.appschema import create_app_schema
from lifecycle.report_paths import safe_run_id
from lifecycle.store import make_engine
from lifecycle.stores import sha256_of_file
from lifecycle_airflow import config
from lifecycle_airflow.report_views import report_page
from s3_fixtures import CREDENTIALS, REGION, new_bucket
from tests.lifecycle_helpers import add, exists

pytestmark = pytest.mark.airflow

TODAY = datetime.now(UTC).date()
AS_OF = datetime.combine(TODAY, datetime.min.time(), tzinfo=UTC)
TEST_DATE = TODAY - relativedelta(years=1)
PREFIX = "evidence"


@pytest.fixture
def application(tmp_path, monkeypatch, airflow_home, moto_endpoint, locked_bucket):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    create_app_schema(engine)
    connection = {
        "conn_type": "aws",
        "login": CREDENTIALS["aws_access_key_id"],
        "password": CREDENTIALS["aws_secret_access_key"],
        "extra": {"endpoint_url": moto_endpoint, "region_name": REGION},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", url)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI", f"s3://{locked_bucket}/{PREFIX}")
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_S3_STORAGE_CLASS", "GLACIER")
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    yield engine
    engine.dispose()


def test_a_retention_dag_archives_to_s3_and_archive_restore_brings_the_batch_back(
    application, s3, locked_bucket, tmp_path
):
    rejected = rejected_application(application)

    state, dag_run = run_dag("retention_test_applications", AS_OF, retries=0)

    assert state == "success", task_states(dag_run)
    assert not exists(application, "test_applications", rejected)
    [manifest_key] = [
        item["Key"]
        for item in s3.list_objects_v2(Bucket=locked_bucket)["Contents"]
        if item["Key"].endswith("/manifest.json")
    ]
    manifest = json.loads(s3.get_object(Bucket=locked_bucket, Key=manifest_key)["Body"].read())
    part = manifest["files"][0]
    stored = s3.head_object(Bucket=locked_bucket, Key=f"{PREFIX}/{part['key']}")
    assert (stored["StorageClass"], stored["ServerSideEncryption"]) == ("GLACIER", "AES256")
    retain_until = date.fromisoformat(manifest["retain_until"])
    assert stored["ObjectLockRetainUntilDate"].astimezone(UTC) == datetime.combine(
        retain_until, datetime.min.time(), tzinfo=UTC
    )

    batch_key = manifest_key[len(PREFIX) + 1 : -len("/manifest.json")]
    destination = tmp_path / "restored"
    state, restore_run = run_dag(
        "archive_restore", AS_OF, conf={"batch_key": batch_key, "destination": destination.as_uri()}, retries=0
    )

    assert state == "success", task_states(restore_run)
    assert xcoms(restore_run)["restore"]["return_value"] == {batch_key: "copied"}
    assert sha256_of_file(destination / batch_key / "part-00000.parquet") == part["sha256"]


def test_a_run_keeps_its_report_and_validation_results_on_s3_where_the_report_view_reads_them(
    application, s3, monkeypatch, tmp_path
):
    reports_bucket = new_bucket(s3, object_lock=False)
    monkeypatch.setenv("AIRFLOW_VAR_LIFECYCLE_REPORTS_URI", f"s3://{reports_bucket}/reports")
    rejected_application(application)

    state, dag_run = run_dag("retention_test_applications", AS_OF, retries=0)

    assert state == "success", task_states(dag_run)
    folder = f"reports/retention_test_applications/{safe_run_id(dag_run.run_id)}"
    stored = {item["Key"] for item in s3.list_objects_v2(Bucket=reports_bucket)["Contents"]}
    assert {f"{folder}/report.{kind}" for kind in ("json", "md", "html")} <= stored
    assert f"{folder}/applications-rejected/gate-candidates.json" in stored
    assert not (tmp_path / "data" / "reports").exists()
    page = report_page(config.reports_dir(), "retention_test_applications", dag_run.run_id)
    assert "applications-rejected" in page


def rejected_application(engine) -> int:
    """A test application rejected a year before the as-of: due for archiving and erasure."""
    smicer = add(engine, "smicers", created_at=datetime(2020, 1, 1))
    return add(
        engine,
        "test_applications",
        smicer_id=smicer,
        test_date=TEST_DATE,
        decision="rejected",
        decided_at=TEST_DATE,
        test_ended_at=TEST_DATE,
    )


def test_the_restore_dag_file_parses_without_heavy_sdks():
    probe = (
        "import runpy, sys; runpy.run_path('dags/archive_restore.py'); "
        "print(','.join(m for m in ('boto3', 'botocore', 'pyarrow', 'pandas', 'great_expectations') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
