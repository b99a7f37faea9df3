"""Where a run acts, read the Airflow way (CONTRACTS.md), with the embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL

APP_CONN_ID = "smice_app"
ARCHIVE_VARIABLE = "lifecycle_archive_uri"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DRIVERS = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql"}


def data_dir() -> Path:
    """The local data folder of the embedded defaults (demo database, archive, reports)."""
    return Path(os.environ.get("LIFECYCLE_DATA_DIR", PROJECT_ROOT / "data")).resolve()


def default_app_url() -> str:
    return f"sqlite:///{data_dir() / 'smice_demo.db'}"


def app_database_url() -> str:
    """The application database: connection `smice_app`, else the demo SQLite file."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(APP_CONN_ID)
    except AirflowNotFoundException:
        return default_app_url()
    return connection_url(connection.conn_type, connection.host, connection.port, connection.login,
                          connection.password, connection.schema)


def connection_url(conn_type: str, host: str | None, port: int | None, login: str | None,
                   password: str | None, schema: str | None) -> str:
    if conn_type == "sqlite":
        path = host or schema
        if not path:
            raise ValueError(f"connection {APP_CONN_ID}: a sqlite connection needs the database file's path")
        return f"sqlite:///{path}"
    driver = DRIVERS.get(conn_type)
    if driver is None:
        raise ValueError(f"connection {APP_CONN_ID}: type {conn_type!r} is not supported (postgres, mysql, sqlite)")
    query = {"charset": "utf8mb4"} if driver.startswith("mysql") else {}
    url = URL.create(driver, username=login or None, password=password or None, host=host, port=port,
                     database=schema or None, query=query)
    return url.render_as_string(hide_password=False)


def archive_uri() -> str:
    from airflow.sdk import Variable

    return Variable.get(ARCHIVE_VARIABLE, default=None) or (data_dir() / "archive").as_uri()


def policy_path() -> str | None:
    """Another company's policy is another file: named by LIFECYCLE_POLICY_PATH, read at parse time too."""
    return os.environ.get("LIFECYCLE_POLICY_PATH")


def reports_dir() -> Path:
    return data_dir() / "reports"
