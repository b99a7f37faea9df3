"""Helpers for tests of the retention core: rows with sensible defaults, runs, and look-ups."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import column, insert, inspect, table, text

from lifecycle.mail import OutboxMailer
from lifecycle.pipeline import run_rule
from lifecycle.policy import load_policy
from lifecycle.reporting import finish_run, start_run
from lifecycle.run import RunContext
from lifecycle.store import lifecycle_tables

POLICY = load_policy()
# Recognisable personal data of a smicer, for tests proving it reaches no log, report or email.
CANARY = {
    "first_name": "Zebulon",
    "last_name": "Quintessenza",
    "phone": "+33 6 12 34 56 78",
    "iban": "FR7630006000011234567890189",
    "postal_address": "17 rue des Canaris",
    "delivery_address": "4 allée des Mésanges",
}
_ids = itertools.count(1)

DEFAULTS = {
    "smicers": lambda: {
        "email": f"smicer{next(_ids)}@example.org",
        "first_name": "Test",
        "locale": "fr",
        "created_at": datetime(2020, 1, 1),
    },
    "connection_logs": lambda: {"ip_address": "192.0.2.1", "user_agent": "test", "succeeded": True},
    "browsing_events": lambda: {"page": "/", "browser": "test", "os": "test"},
    "clients": lambda: {"company_name": "Client", "contract_start": date(2019, 1, 1)},
    "client_contacts": lambda: {"email": f"contact{next(_ids)}@example.org"},
    "missions": lambda: {"store_name": "Store", "visited_at": datetime(2021, 1, 1), "reward_cents": 1500},
    "prospects": lambda: {"email": f"prospect{next(_ids)}@example.org", "created_at": datetime(2020, 1, 1)},
    "newsletter_subscriptions": lambda: {
        "email": f"news{next(_ids)}@example.org",
        "audience": "prospect",
        "consented_at": datetime(2020, 1, 1),
    },
    "contact_requests": lambda: {"email": f"request{next(_ids)}@example.org", "received_at": datetime(2020, 1, 1)},
    "test_applications": lambda: {"test_date": date(2021, 1, 1), "decision": "pending"},
    "rights_requests": lambda: {
        "email": f"rights{next(_ids)}@example.org",
        "kind": "access",
        "status": "open",
        "received_at": datetime(2020, 1, 1),
    },
    "identity_documents": lambda: {"storage_uri": "file:///nonexistent/scan.pdf", "uploaded_at": datetime(2020, 1, 1)},
    "prospecting_objections": lambda: {
        "email": f"objection{next(_ids)}@example.org",
        "objected_at": datetime(2020, 1, 1),
    },
}


def naive(value):
    return value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) and value.tzinfo else value


def add(engine, table_name: str, **values) -> int:
    """Insert one row with defaults for the NOT NULL columns; returns its id."""
    row = DEFAULTS[table_name]() | {k: naive(v) for k, v in values.items()}
    row.setdefault("id", next(_ids))
    target = table(table_name, *(column(name) for name in row))
    with engine.begin() as connection:
        connection.execute(insert(target).values(**row))
    return row["id"]


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def make_run(
    engine,
    as_of: datetime,
    tmp_path: Path,
    *,
    dag_id: str = "test_dag",
    run_id: str | None = None,
    volume_approved: bool = False,
    archive_uri: str | None = None,
    s3_options=None,
    mailer=None,
    **notices,
) -> RunContext:
    """A run archiving into tmp_path/archive, or into `archive_uri` (with `s3_options` for s3://);
    its notices go to the outbox tmp_path/outbox unless another mailer is given."""
    return RunContext(
        engine=engine,
        policy=POLICY,
        as_of=as_of,
        dag_id=dag_id,
        run_id=run_id or f"test__{as_of:%Y%m%dT%H%M%S}",
        archive_uri=archive_uri or (tmp_path / "archive").as_uri(),
        reports_dir=tmp_path / "reports",
        volume_approved=volume_approved,
        s3_options=s3_options,
        mailer=mailer or OutboxMailer(tmp_path / "outbox"),
        **notices,
    )


def run_rules(engine, as_of: datetime, tmp_path: Path, rule_ids: list[str], **kwargs) -> dict:
    """Run each rule's steps as one run and return the run's report summary."""
    run = make_run(engine, as_of, tmp_path, **kwargs)
    start_run(run)
    rules = [POLICY.rule(rule_id) for rule_id in rule_ids]
    for rule in rules:
        run_rule(run, rule)
    return finish_run(run, rules)


def exists(engine, table_name: str, key: int) -> bool:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT COUNT(*) FROM {table_name} WHERE id = :k"), {"k": key}).scalar() == 1


def scalar(engine, sql: str, **params):
    with engine.connect() as connection:
        return connection.execute(text(sql), params).scalar()


def fingerprint(engine) -> dict[str, str]:
    """A digest of the rows of every table that has any, the pipeline's own included."""
    digests = {}
    with engine.connect() as connection:
        for schema in {None, lifecycle_tables(engine).runs.schema}:
            for name in inspect(engine).get_table_names(schema=schema):
                qualified = f"{schema}.{name}" if schema else name
                rows = sorted(repr(tuple(row)) for row in connection.execute(text(f"SELECT * FROM {qualified}")))
                if rows:
                    digests[qualified] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return digests
