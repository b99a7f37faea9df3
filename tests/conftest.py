"""Database fixtures shared by every test: SQLite, PostgreSQL and MariaDB, each empty and fresh per test.

The servers are the local ones (PostgreSQL on 127.0.0.1:5432, MariaDB on 127.0.0.1:3306). A server that
cannot be reached skips its tests, or fails them when CI is "true".
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from lifecycle.appschema import create_app_schema
from lifecycle.store import ensure_lifecycle_tables, make_engine

# Sets up a throwaway Airflow home before anything imports Airflow (see airflow_fixtures.py);
# s3_fixtures.py starts moto's S3 server, smtp_fixtures.py an SMTP server, for the tests that ask.
pytest_plugins = ["airflow_fixtures", "s3_fixtures", "smtp_fixtures"]

POSTGRESQL_USERS = ("postgres", "root")
CONNECT_TIMEOUT_SECONDS = 5
USER_SCHEMAS = "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"


@dataclass(frozen=True)
class DatabaseServer:
    label: str
    base_url: URL  # no database selected: the server's maintenance database

    @property
    def address(self) -> str:
        return f"{self.base_url.host}:{self.base_url.port}"


POSTGRESQL = DatabaseServer(
    "PostgreSQL", URL.create("postgresql+psycopg2", host="127.0.0.1", port=5432, database="postgres")
)
MARIADB = DatabaseServer(
    "MariaDB",
    URL.create(
        "mysql+pymysql", username="root", password="", host="127.0.0.1", port=3306, query={"charset": "utf8mb4"}
    ),
)


def _unreachable(server: DatabaseServer, error: Exception) -> None:
    message = f"{server.label} not reachable at {server.address}: {getattr(error, 'orig', error)}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _admin_engine(url: URL) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS})


def _connect_postgresql_admin() -> Engine:
    """An engine on the maintenance database, as `postgres` or else as `root`."""
    last_error: Exception | None = None
    for user in POSTGRESQL_USERS:
        engine = _admin_engine(POSTGRESQL.base_url.set(username=user))
        try:
            engine.connect().close()
            return engine
        except Exception as error:  # any failure to connect means "not reachable as this user"
            engine.dispose()
            last_error = error
    _unreachable(POSTGRESQL, last_error)


def _connect_mariadb_admin() -> Engine:
    engine = _admin_engine(MARIADB.base_url)
    try:
        engine.connect().close()
    except Exception as error:
        engine.dispose()
        _unreachable(MARIADB, error)
    return engine


class SessionDatabase:
    """One database per test session on a server, emptied before each test and dropped at the end."""

    def __init__(self, admin_engine: Engine):
        self.admin_engine = admin_engine
        self.name = f"lifecycle_test_{secrets.token_hex(4)}"
        self.url = admin_engine.url.set(database=self.name)
        self._create()

    @property
    def dialect(self) -> str:
        return self.admin_engine.dialect.name

    def _create(self) -> None:
        with self.admin_engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {self.name}")

    def reset(self) -> None:
        """Empty the database: every table, view, sequence and schema any test left behind goes."""
        self._end_leftover_sessions()
        if self.dialect == "postgresql":
            # Recreating a PostgreSQL database takes about half a second; dropping its schemas is quick.
            engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
            with engine.connect() as connection:
                for schema in connection.execute(text(USER_SCHEMAS)).scalars().all():
                    connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                connection.exec_driver_sql("CREATE SCHEMA public")
            engine.dispose()
        else:
            with self.admin_engine.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE {self.name}")
            self._create()

    def _end_leftover_sessions(self) -> None:
        # A connection an earlier test left inside a transaction would block the drop below forever.
        with self.admin_engine.connect() as connection:
            if self.dialect == "postgresql":
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %(name)s AND pid <> pg_backend_pid()",
                    {"name": self.name},
                )
            else:
                session_ids = connection.exec_driver_sql(
                    "SELECT id FROM information_schema.processlist WHERE db = %(name)s", {"name": self.name}
                ).scalars()
                for session_id in session_ids.all():
                    try:
                        connection.exec_driver_sql(f"KILL {int(session_id)}")
                    except OperationalError:  # the session ended by itself meanwhile
                        pass

    def drop(self) -> None:
        force = " WITH (FORCE)" if self.dialect == "postgresql" else ""
        with self.admin_engine.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {self.name}{force}")
        self.admin_engine.dispose()


@pytest.fixture(scope="session")
def postgresql_session_database() -> Iterator[SessionDatabase]:
    database = SessionDatabase(_connect_postgresql_admin())
    yield database
    database.drop()


@pytest.fixture(scope="session")
def mariadb_session_database() -> Iterator[SessionDatabase]:
    database = SessionDatabase(_connect_mariadb_admin())
    yield database
    database.drop()


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, empty SQLite database file."""
    return _sqlite_url(tmp_path / "sqlite_url.db")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"], ids=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty, fresh database on each of the three dialects."""
    if request.param == "sqlite":
        return _sqlite_url(request.getfixturevalue("tmp_path") / "db_url.db")
    database: SessionDatabase = request.getfixturevalue(f"{request.param}_session_database")
    database.reset()
    return database.url.render_as_string(hide_password=False)


@pytest.fixture
def app_engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url` with the application schema created."""
    engine = create_engine(make_url(db_url))
    create_app_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine as the pipeline makes it, on `db_url`, with the application schema and the pipeline's tables."""
    yield from _pipeline_engine(db_url)


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """The same on SQLite only, for tests whose subject is not the database."""
    yield from _pipeline_engine(sqlite_url)


def _pipeline_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    create_app_schema(engine)
    ensure_lifecycle_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def workers():
    """A multiprocessing context whose processes (runs, or workers killed mid-step) fork from a server that
    imported the engine and Great Expectations once (seconds)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["great_expectations", "pyarrow.parquet", "lifecycle.pipeline", "tests.lifecycle_helpers"]
    )
    return context
