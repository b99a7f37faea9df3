"""Where a run acts, read the Airflow way (CONTRACTS.md), with the embedded defaults."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lifecycle.app_database import APP_CONN_ID, connection_url, data_dir, default_app_url

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from lifecycle.stores.s3 import S3Options

AWS_CONN_ID = "aws_default"
ARCHIVE_VARIABLE = "lifecycle_archive_uri"
EXPORT_VARIABLE = "lifecycle_export_uri"
REPORTS_VARIABLE = "lifecycle_reports_uri"
ROWS_PER_TASK_VARIABLE = "lifecycle_rows_per_task"
ROWS_PER_TASK = 1_000_000


def app_database_url() -> str:
    """The application database: connection `smice_app`, else the demo SQLite file."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(APP_CONN_ID)
    except AirflowNotFoundException:
        return default_app_url()
    return connection_url(
        connection.conn_type, connection.host, connection.port, connection.login, connection.password, connection.schema
    )


def archive_uri() -> str:
    from airflow.sdk import Variable

    return Variable.get(ARCHIVE_VARIABLE, default=None) or (data_dir() / "archive").as_uri()


def export_uri() -> str:
    """Where subject packages (access, portability) are written: file:///abs/dir or s3://bucket/prefix."""
    from airflow.sdk import Variable

    return Variable.get(EXPORT_VARIABLE, default=None) or (data_dir() / "exports").as_uri()


def suppression_key() -> str | None:
    """The secret key of the suppression list's keyed hashes: the password of the Airflow connection
    `lifecycle_suppression`, else the variable `lifecycle_suppression_key`; None when neither is set."""
    from airflow.sdk import Connection, Variable
    from airflow.sdk.exceptions import AirflowNotFoundException

    from lifecycle.suppression import SUPPRESSION_CONN_ID, SUPPRESSION_VARIABLE

    try:
        password = Connection.get(SUPPRESSION_CONN_ID).password
    except AirflowNotFoundException:
        password = None
    return password or Variable.get(SUPPRESSION_VARIABLE, default=None) or None


def _flag(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError("expected true or false")
    return text.strip().lower() == "true"


def _mebibytes(text: str) -> int:
    return int(text) << 20


# Airflow variable -> (S3Options field, reading of its text). An unset variable keeps S3Options' default.
S3_VARIABLES = {
    "lifecycle_s3_storage_class": ("storage_class", str),
    "lifecycle_s3_encryption": ("encryption", str),
    "lifecycle_s3_kms_key_id": ("kms_key_id", str),
    "lifecycle_s3_allow_outside_eea": ("allow_outside_eea", _flag),
    "lifecycle_s3_multipart_threshold_mb": ("multipart_threshold", _mebibytes),
    "lifecycle_s3_multipart_chunk_mb": ("multipart_chunk_size", _mebibytes),
    "lifecycle_s3_max_attempts": ("max_attempts", int),
}


def archive_s3_options(uri: str) -> S3Options:
    """For an s3:// archive, its options from the variables of S3_VARIABLES; for any archive, the client
    of the connection `aws_default` (it also erases identity-document scans stored on S3)."""
    from airflow.sdk import Variable

    from lifecycle.stores.s3 import S3Options

    if not uri.startswith("s3://"):
        return S3Options(client_factory=s3_client)

    options = {}
    for variable, (name, read) in S3_VARIABLES.items():
        text = Variable.get(variable, default=None)
        if text not in (None, ""):
            try:
                options[name] = read(str(text))
            except ValueError:
                raise ValueError(f"Airflow variable {variable}: {text!r} cannot be read") from None
    return S3Options(client_factory=s3_client, **options)


def s3_client(botocore_config):
    """A boto3 S3 client from the Amazon provider's S3Hook on `aws_default` (credentials, region and
    endpoint_url in its extras; region eu-west-3 when it names none). The archive's bounded retries
    apply unless the connection's `config_kwargs` set their own. get_client_type is what get_conn()
    calls, here with that merged botocore config."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from lifecycle.stores.s3 import DEFAULT_REGION

    hook = S3Hook(aws_conn_id=AWS_CONN_ID)
    return hook.get_client_type(
        region_name=hook.region_name or DEFAULT_REGION, config=botocore_config.merge(hook.config)
    )


def rows_per_task() -> int:
    """How many due records one task archives or erases at most: a rule with more spreads those steps
    over several tasks (and workers) by key range. The variable `lifecycle_rows_per_task`, else 1,000,000."""
    from airflow.sdk import Variable

    text = Variable.get(ROWS_PER_TASK_VARIABLE, default=None)
    if text in (None, ""):
        return ROWS_PER_TASK
    if not str(text).strip().isdigit() or int(text) == 0:
        raise ValueError(f"Airflow variable {ROWS_PER_TASK_VARIABLE}: {text!r} is not a whole number of rows above 0")
    return int(text)


def policy_path() -> str | None:
    """Another company's policy is another file: named by LIFECYCLE_POLICY_PATH, read at parse time too."""
    return os.environ.get("LIFECYCLE_POLICY_PATH")


def reports_dir() -> ObjectStoragePath:
    """Where runs keep their reports and validation results, one folder per DAG and run: the variable
    `lifecycle_reports_uri` (file:///abs/dir, or s3://bucket/prefix through `aws_default`), else the
    local data folder's reports/. Workers write there and the api-server's report view reads there,
    so on several machines it must be a location they all reach."""
    from airflow.sdk import ObjectStoragePath, Variable

    uri = Variable.get(REPORTS_VARIABLE, default=None) or (data_dir() / "reports").as_uri()
    return ObjectStoragePath(uri, conn_id=AWS_CONN_ID if uri.startswith("s3://") else None)
