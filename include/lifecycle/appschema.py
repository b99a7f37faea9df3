"""Create and drop the reference application schema (vendored `app_schema.sql`) on any supported dialect."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, text

APP_SCHEMA_SQL = Path(__file__).resolve().parents[1] / "app_schema" / "app_schema.sql"

APP_TABLES = (
    "smicers",
    "connection_logs",
    "browsing_events",
    "clients",
    "client_contacts",
    "missions",
    "prospects",
    "newsletter_subscriptions",
    "contact_requests",
    "test_applications",
    "rights_requests",
    "identity_documents",
    "prospecting_objections",
)

# The schema says "read TIMESTAMPTZ as a UTC TIMESTAMP" outside PostgreSQL. On MariaDB/MySQL that is
# DATETIME(6): their TIMESTAMP auto-updates on row changes and ends in 2038.
_TIMESTAMPTZ_BY_DIALECT = {"sqlite": "TIMESTAMP", "mysql": "DATETIME(6)", "mariadb": "DATETIME(6)"}

_STRING_LITERAL = r"'(?:[^']|'')*'"
_COMMENT_OR_LITERAL = re.compile(rf"({_STRING_LITERAL})|--[^\n]*")
_STATEMENT = re.compile(rf"(?:{_STRING_LITERAL}|[^;'])+")


def app_schema_statements(dialect_name: str) -> list[str]:
    """The DDL statements of the vendored schema, adapted to `dialect_name`."""
    sql = _COMMENT_OR_LITERAL.sub(lambda match: match.group(1) or "", APP_SCHEMA_SQL.read_text("utf-8"))
    timestamptz = _TIMESTAMPTZ_BY_DIALECT.get(dialect_name)
    if timestamptz:
        sql = re.sub(r"\bTIMESTAMPTZ\b", timestamptz, sql)
    statements = (statement.strip() for statement in _STATEMENT.findall(sql))
    return [statement for statement in statements if statement]


def create_app_schema(engine: Engine) -> None:
    with engine.begin() as connection:
        for statement in app_schema_statements(engine.dialect.name):
            # text() escapes a "%" (say in a LIKE check) for the pyformat drivers; raw SQL would not.
            connection.execute(text(statement))


def drop_app_schema(engine: Engine) -> None:
    """Drop the application tables that exist, dependants first."""
    with engine.begin() as connection:
        for table_name in reversed(APP_TABLES):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table_name}")
