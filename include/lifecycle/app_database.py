"""Which application database a run acts on: the connection `smice_app` (CONTRACTS.md), else the
demo's SQLite file in the local data folder. Shared by the Airflow wiring and the commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.engine import URL

APP_CONN_ID = "smice_app"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DRIVERS = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2", "mysql": "mysql+pymysql"}


def data_dir() -> Path:
    """The local data folder of the embedded defaults (demo database, archive, reports)."""
    return Path(os.environ.get("LIFECYCLE_DATA_DIR", PROJECT_ROOT / "data")).resolve()


def default_app_url() -> str:
    return f"sqlite:///{data_dir() / 'smice_demo.db'}"


def connection_url(
    conn_type: str, host: str | None, port: int | None, login: str | None, password: str | None, schema: str | None
) -> str:
    """The SQLAlchemy URL of an Airflow connection's fields."""
    if conn_type == "sqlite":
        path = host or schema
        if not path:
            raise ValueError(f"connection {APP_CONN_ID}: a sqlite connection needs the database file's path")
        return f"sqlite:///{path}"
    driver = DRIVERS.get(conn_type)
    if driver is None:
        raise ValueError(f"connection {APP_CONN_ID}: type {conn_type!r} is not supported (postgres, mysql, sqlite)")
    query = {"charset": "utf8mb4"} if driver.startswith("mysql") else {}
    url = URL.create(
        driver,
        username=login or None,
        password=password or None,
        host=host,
        port=port,
        database=schema or None,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def environment_database_url() -> str:
    """For commands run outside Airflow: `AIRFLOW_CONN_SMICE_APP` (a URI or Airflow's JSON form), else the demo's."""
    given = os.environ.get(f"AIRFLOW_CONN_{APP_CONN_ID.upper()}", "").strip()
    if not given:
        return default_app_url()
    if given.startswith("{"):
        fields = json.loads(given)
        return connection_url(
            *(fields.get(name) for name in ("conn_type", "host", "port", "login", "password", "schema"))
        )
    url = make_url(given)
    return connection_url(url.drivername, url.host, url.port, url.username, url.password, url.database)
