from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from sqlalchemy import Date, DateTime, Engine, MetaData, bindparam, create_engine, inspect, select, text

from lifecycle.appschema import APP_TABLES, app_schema_statements, create_app_schema, drop_app_schema
from lifecycle.demo.seed import seed_demo

AS_OF = datetime(2026, 11, 25, tzinfo=timezone.utc)
CUTOFFS = {
    "as_of": AS_OF,
    "as_of_date": AS_OF.date(),
    "three_months_before": datetime(2026, 8, 25, tzinfo=timezone.utc),
    "one_year_before": datetime(2025, 11, 25, tzinfo=timezone.utc),
    "two_years_before": datetime(2024, 11, 25, tzinfo=timezone.utc),
    "three_years_before": datetime(2023, 11, 25, tzinfo=timezone.utc),
}

# rule: (table, SQL counting its due records as of AS_OF); a plain reading of the policy (docs/policy.md) without holds.
RULE_CANDIDATES = {
    "account-closed": ("smicers", "SELECT COUNT(*) FROM smicers WHERE closed_at <= :as_of"),
    "account-inactive": (
        "smicers",
        "SELECT COUNT(*) FROM smicers WHERE closed_at IS NULL AND created_at <= :two_years_before"
        " AND (last_login_at IS NULL OR last_login_at <= :two_years_before)",
    ),
    "connection-logs": (
        "connection_logs",
        "SELECT COUNT(*) FROM connection_logs WHERE connected_at <= :one_year_before",
    ),
    "browsing-events": (
        "browsing_events",
        "SELECT COUNT(*) FROM browsing_events WHERE occurred_at <= :one_year_before",
    ),
    "client-contacts": (
        "client_contacts",
        "SELECT COUNT(*) FROM client_contacts JOIN clients ON clients.id = client_contacts.client_id"
        " WHERE clients.contract_end <= :as_of_date",
    ),
    "prospects": (
        "prospects",
        "SELECT COUNT(*) FROM prospects WHERE COALESCE(last_contact_at, created_at) <= :three_years_before",
    ),
    "newsletter": (
        "newsletter_subscriptions",
        "SELECT COUNT(*) FROM newsletter_subscriptions WHERE withdrawn_at <= :as_of"
        " OR (withdrawn_at IS NULL AND COALESCE(last_contact_at, consented_at) <= :three_years_before)",
    ),
    "info-requests": (
        "contact_requests",
        "SELECT COUNT(*) FROM contact_requests WHERE COALESCE(last_contact_at, received_at) <= :three_years_before",
    ),
    "applications-rejected": (
        "test_applications",
        "SELECT COUNT(*) FROM test_applications WHERE decision = 'rejected'"
        " AND COALESCE(test_ended_at, decided_at) <= :three_months_before",
    ),
    "applications-accepted": (
        "test_applications",
        "SELECT COUNT(*) FROM test_applications WHERE decision = 'accepted' AND decided_at <= :as_of",
    ),
    "identity-documents": (
        "identity_documents",
        "SELECT COUNT(*) FROM identity_documents JOIN rights_requests"
        " ON rights_requests.id = identity_documents.rights_request_id"
        " WHERE COALESCE(rights_requests.identity_verified_at, rights_requests.closed_at) <= :as_of",
    ),
    "objections": (
        "prospecting_objections",
        "SELECT COUNT(*) FROM prospecting_objections WHERE objected_at <= :three_years_before",
    ),
}

INVALID_RECORDS = {
    "closed before created": "SELECT COUNT(*) FROM smicers WHERE closed_at < created_at",
    "prospect contacted after as-of": "SELECT COUNT(*) FROM prospects WHERE last_contact_at > :as_of",
    "connection after as-of": "SELECT COUNT(*) FROM connection_logs WHERE connected_at > :as_of",
    "accepted without decision date": (
        "SELECT COUNT(*) FROM test_applications WHERE decision = 'accepted' AND decided_at IS NULL"
    ),
}

RESTRICTED_CLOSED_SMICERS = (
    "SELECT rights_requests.email, smicers.email FROM rights_requests JOIN smicers"
    " ON LOWER(TRIM(rights_requests.email)) = LOWER(TRIM(smicers.email))"
    " WHERE rights_requests.kind = 'restriction' AND rights_requests.status = 'open'"
    " AND smicers.closed_at >= smicers.created_at"
)


def _count(engine: Engine, sql: str) -> int:
    statement = text(sql)
    for name, value in CUTOFFS.items():
        if re.search(rf":{name}\b", sql):
            value_type = DateTime(timezone=True) if isinstance(value, datetime) else Date()
            statement = statement.bindparams(bindparam(name, value, type_=value_type))
    with engine.connect() as connection:
        return connection.execute(statement).scalar_one()


def _canonical(value):
    """The same value whatever the dialect returned: UTC-naive datetimes, ints for booleans."""
    if isinstance(value, datetime) and value.tzinfo:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    if isinstance(value, bool):
        return int(value)
    return value


def _rows_digest(engine: Engine) -> str:
    metadata = MetaData()
    metadata.reflect(engine, only=APP_TABLES)
    digest = hashlib.sha256()
    with engine.connect() as connection:
        for table_name in APP_TABLES:
            table = metadata.tables[table_name]
            for row in connection.execute(select(table).order_by(table.c.id)):
                digest.update(repr(tuple(_canonical(value) for value in row)).encode())
    return digest.hexdigest()


def _reseed(engine: Engine, seed: int, documents_dir: Path) -> str:
    drop_app_schema(engine)
    create_app_schema(engine)
    seed_demo(engine, AS_OF, size=200, seed=seed, documents_dir=documents_dir)
    return _rows_digest(engine)


@pytest.fixture
def seeded_engine(app_engine: Engine, tmp_path: Path) -> Engine:
    seed_demo(app_engine, AS_OF, size=200, documents_dir=tmp_path / "documents")
    return app_engine


def test_statements_strip_comments_and_adapt_timestamps():
    postgresql, sqlite, mariadb = map(app_schema_statements, ("postgresql", "sqlite", "mariadb"))
    assert len(postgresql) == len(sqlite) == len(mariadb) == 19
    assert not any("--" in statement for statement in postgresql)
    assert "TIMESTAMPTZ" in postgresql[0]
    assert "TIMESTAMPTZ" not in " ".join(sqlite + mariadb)
    assert "created_at       DATETIME(6) NOT NULL" in mariadb[0]


def test_schema_has_every_table_and_drops_cleanly(app_engine: Engine):
    assert set(inspect(app_engine).get_table_names()) == set(APP_TABLES)
    foreign_keys = inspect(app_engine).get_foreign_keys("identity_documents")
    assert [key["referred_table"] for key in foreign_keys] == ["rights_requests"]

    drop_app_schema(app_engine)
    drop_app_schema(app_engine)
    assert inspect(app_engine).get_table_names() == []


def test_same_seed_gives_the_same_rows_and_another_seed_other_rows(sqlite_url: str, tmp_path: Path):
    engine = create_engine(sqlite_url)
    documents_dir = tmp_path / "documents"
    try:
        first = _reseed(engine, 7, documents_dir)
        assert _reseed(engine, 7, documents_dir) == first
        assert _reseed(engine, 8, documents_dir) != first
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_every_dialect_stores_the_same_rows_as_sqlite(app_engine: Engine, tmp_path: Path):
    documents_dir = tmp_path / "documents"
    sqlite_engine = create_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    try:
        assert _reseed(app_engine, 7, documents_dir) == _reseed(sqlite_engine, 7, documents_dir)
    finally:
        sqlite_engine.dispose()


def test_seed_returns_row_counts_and_refuses_a_database_with_rows(app_engine: Engine, tmp_path: Path):
    counts = seed_demo(app_engine, AS_OF, size=200, documents_dir=tmp_path / "documents")
    assert list(counts) == list(APP_TABLES)
    assert counts["smicers"] == 200
    for table_name, expected in counts.items():
        assert _count(app_engine, f"SELECT COUNT(*) FROM {table_name}") == expected
        assert _count(app_engine, f"SELECT MIN(id) FROM {table_name}") == 1
        assert _count(app_engine, f"SELECT MAX(id) FROM {table_name}") == expected

    with pytest.raises(ValueError, match="empty"):
        seed_demo(app_engine, AS_OF, size=200, documents_dir=tmp_path / "documents")


def test_every_rule_has_work_below_the_volume_safeguard(seeded_engine: Engine):
    """Each rule finds due records, fewer than 20 % of its table (the safeguard's default share)."""
    out_of_bounds = {}
    for rule, (table_name, due_sql) in RULE_CANDIDATES.items():
        due = _count(seeded_engine, due_sql)
        total = _count(seeded_engine, f"SELECT COUNT(*) FROM {table_name}")
        if not 0 < due < 0.2 * total:
            out_of_bounds[rule] = f"{due} due of {total}"
    assert out_of_bounds == {}


def test_invalid_records_are_the_deliberate_ones(seeded_engine: Engine):
    assert {name: _count(seeded_engine, sql) for name, sql in INVALID_RECORDS.items()} == dict.fromkeys(
        INVALID_RECORDS, 1
    )
    later = 0
    for table_name in APP_TABLES:
        for timestamp in inspect(seeded_engine).get_columns(table_name):
            if timestamp["name"].endswith("_at"):
                later += _count(seeded_engine, f"SELECT COUNT(*) FROM {table_name} WHERE {timestamp['name']} > :as_of")
    assert later == 2  # the prospect contacted after as-of and the connection after as-of


def test_one_open_restriction_holds_a_closed_smicer(seeded_engine: Engine):
    assert (
        _count(seeded_engine, "SELECT COUNT(*) FROM rights_requests WHERE kind = 'restriction' AND status = 'open'")
        == 1
    )
    with seeded_engine.connect() as connection:
        matches = connection.execute(text(RESTRICTED_CLOSED_SMICERS)).all()
    assert len(matches) == 1
    request_email, smicer_email = matches[0]
    assert request_email != smicer_email
    assert request_email.strip().lower() == smicer_email.strip().lower()


def test_identity_documents_are_real_files(seeded_engine: Engine):
    with seeded_engine.connect() as connection:
        uris = connection.execute(text("SELECT storage_uri FROM identity_documents")).scalars().all()
    assert uris and all(uri.startswith("file:///") for uri in uris)
    assert all(Path(url2pathname(urlparse(uri).path)).is_file() for uri in uris)
