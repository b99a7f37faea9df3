"""A data subject's package (lifecycle.subject_export), on SQLite and PostgreSQL, with the subject's
records spread over every table among other people's, some of whose addresses look like theirs: the
package holds every record of the subject and no one else's, its JSON and CSV agree, its README is
in the subject's language and names each table; an S3 destination on moto's server; refused
destinations; and the address in nothing but the package's records."""

from __future__ import annotations

import csv
import json
import re
import threading
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, insert, select, text

from lifecycle import subject_export
from lifecycle.appschema import APP_TABLES
from lifecycle.periods import to_utc
from lifecycle.subject_export import (
    SubjectPackageError,
    count_subject_records,
    export_subject,
    subject_tables,
)
from s3_fixtures import REGION, free_port, new_bucket, plain_client, s3_options
from tests.lifecycle_helpers import CANARY, POLICY, add

# The subject, as given with the request, and as stored in their rows: case and surrounding spaces vary.
REQUESTED = "  zebulon.QUINTESSENZA@canary-mail.example\t"
STORED = (
    "Zebulon.Quintessenza@Canary-Mail.example",
    "  zebulon.quintessenza@canary-mail.EXAMPLE ",
    "ZEBULON.QUINTESSENZA@CANARY-MAIL.EXAMPLE",
)
# Other people whose addresses look like the subject's: none of their records may be in the package.
LOOKALIKES = (
    "zebulon.quintessenza@canary-mail.example.org",
    "zebulon.quintessenza2@canary-mail.example",
    "zebulon_quintessenza@canary-mail.example",
    "x.zebulon.quintessenza@canary-mail.example",
)
PERSONAL = ("quintessenza", "zebulon", "canary-mail", *CANARY.values())
FOLDER = "manual__2026-05-01T10:00:00+00:00"  # a run id
# Every table of the reference schema but clients, which holds no person's data.
ALL_TABLES = [name for name in APP_TABLES if name != "clients"]
README_TITLES = {"en": "# Your personal data", "fr": "# Vos données personnelles", "nl": "# Uw persoonsgegevens"}

both_databases = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


def seed_person(engine, stored: tuple[str, ...], locale: str = "fr", name: str = "Zebulon") -> dict[str, list[int]]:
    """A smicer with a record in every table that can hold one, the address stored as `stored`
    (taken in turn); returns their keys by table."""
    keys: dict[str, list[int]] = {}
    variants = iter(stored * 10)

    def record(table: str, **values) -> int:
        key = add(engine, table, **values)
        keys.setdefault(table, []).append(key)
        return key

    smicer = record(
        "smicers",
        email=next(variants),
        locale=locale,
        **(CANARY | {"first_name": name}),
        last_login_at=datetime(2024, 3, 1, 8, 30, 15, 123456),
    )
    for day in (1, 2):
        record("connection_logs", smicer_id=smicer, connected_at=datetime(2025, 1, day, 9), succeeded=day == 1)
        record("browsing_events", smicer_id=smicer, occurred_at=datetime(2025, 1, day, 10), maid=None)
    client = add(engine, "clients", contract_end=date(2026, 12, 31))
    record("client_contacts", client_id=client, email=next(variants), last_name=CANARY["last_name"])
    record("missions", smicer_id=smicer, client_id=client, report="clean store", paid_at=None)
    record("missions", smicer_id=smicer, client_id=client, paid_at=datetime(2021, 2, 1, 12))
    record("prospects", email=next(variants), last_contact_at=datetime(2023, 6, 1))
    record("newsletter_subscriptions", email=next(variants), audience="smicer")
    record(
        "contact_requests",
        email=next(variants),
        full_name=f"{name} {CANARY['last_name']}",
        message='He wrote "hi",\nthen; left',
    )
    record("test_applications", smicer_id=smicer, test_date=date(2024, 5, 2), answers="yes", score=17)
    for _ in range(2):
        request = record("rights_requests", email=next(variants), kind="access")
        record("identity_documents", rights_request_id=request, storage_uri="s3://scans/identity.pdf")
    record("prospecting_objections", email=next(variants))
    return keys


@pytest.fixture
def people(app_engine) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """The subject's keys by table, and everyone else's (look-alikes, and a visitor without an account)."""
    subject = seed_person(app_engine, STORED)
    others: dict[str, list[int]] = {}
    for i, address in enumerate(LOOKALIKES):
        for table, keys in seed_person(app_engine, (address,), name=f"Other{i}").items():
            others.setdefault(table, []).extend(keys)
    others["browsing_events"].append(
        add(app_engine, "browsing_events", smicer_id=None, occurred_at=datetime(2025, 1, 3))
    )
    return subject, others


def package_files(folder: Path) -> dict[str, tuple[list[dict], list[list[str]]]]:
    """Each table's JSON rows and CSV lines (header first)."""
    tables = {}
    for path in sorted(folder.glob("*.json")):
        rows = json.loads(path.read_text("utf-8"))
        with path.with_suffix(".csv").open(encoding="utf-8", newline="") as handle:
            tables[path.stem] = (rows, list(csv.reader(handle)))
    return tables


def database_rows(engine, table_name: str, keys: list[int]) -> dict[int, dict]:
    """The rows as the database holds them, read through SQLAlchemy's reflected types."""
    table = Table(table_name, MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = connection.execute(select(table).where(table.c.id.in_(keys))).mappings()
        return {row["id"]: dict(row) for row in rows}


def same_value(in_json, in_database) -> bool:
    if isinstance(in_database, datetime):
        return in_json.endswith("+00:00") and datetime.fromisoformat(in_json) == to_utc(in_database)
    if isinstance(in_database, date):
        return in_json == in_database.isoformat()
    return in_json == in_database and type(in_json) is type(in_database)


def csv_field(value) -> str:
    return "" if value is None else ("true" if value else "false") if isinstance(value, bool) else str(value)


def assert_no_personal_data(text_: str) -> None:
    found = [mark for mark in PERSONAL if mark.lower() in text_.lower()]
    assert not found, f"personal data found: {found}"


# The package's records


def test_the_tables_a_package_may_hold_are_read_from_the_policy_in_its_order():
    # clients carries no address and is no bundle's member nor a rule's child of a table that does.
    assert subject_tables(POLICY) == ALL_TABLES


@both_databases
def test_the_package_holds_every_record_of_the_subject_and_no_one_elses(app_engine, people, tmp_path):
    subject, others = people
    destination = tmp_path / "packages"

    result = export_subject(app_engine, POLICY, REQUESTED, destination.as_uri(), FOLDER)

    folder = destination / FOLDER
    expected_counts = {table: len(subject[table]) for table in ALL_TABLES}
    assert result == {"location": folder.as_uri(), "tables": expected_counts, "language": "fr"}
    assert list(result["tables"]) == ALL_TABLES
    assert count_subject_records(app_engine, POLICY, REQUESTED) == expected_counts
    assert [path.name for path in destination.iterdir()] == [FOLDER], "nothing staged is left behind"
    expected_files = {f"{table}.{kind}" for table in ALL_TABLES for kind in ("json", "csv")} | {"README.md"}
    assert {path.name for path in folder.iterdir()} == expected_files

    files = package_files(folder)
    for table in ALL_TABLES:
        rows, lines = files[table]
        keys = [row["id"] for row in rows]
        assert keys == sorted(subject[table]), f"{table}: every record of the subject, in key order"
        assert not set(keys) & set(others[table]), f"{table}: another person's record"
        held = database_rows(app_engine, table, keys)
        for row in rows:
            assert list(row) == list(held[row["id"]]), f"{table}: the columns as in the database"
            for name, value in row.items():
                assert same_value(value, held[row["id"]][name]), f"{table}.{name} of {row['id']}: {value!r}"
        assert lines[0] == list(rows[0]), f"{table}: the CSV header is the column names"
        assert lines[1:] == [[csv_field(value) for value in row.values()] for row in rows], f"{table}: CSV = JSON"
    assert_no_personal_data(json.dumps(result))


@both_databases
def test_the_readme_is_in_the_smicers_language_and_names_each_table(app_engine, tmp_path):
    for stored, locale in ((STORED[0], "nl-BE"), ("zebulon.fr@canary-mail.example", "fr"), (LOOKALIKES[0], "de")):
        seed_person(app_engine, (stored,), locale=locale)
    visitor = "  Zebulon.Visitor@Canary-Mail.example"
    for table in ("prospects", "contact_requests"):
        add(app_engine, table, email=visitor)
    exports = {
        "nl": export_subject(app_engine, POLICY, REQUESTED, tmp_path.as_uri(), "nl"),
        "fr": export_subject(app_engine, POLICY, "zebulon.fr@canary-mail.example", tmp_path.as_uri(), "fr"),
        "de": export_subject(app_engine, POLICY, LOOKALIKES[0], tmp_path.as_uri(), "de"),
        "visitor": export_subject(app_engine, POLICY, visitor.upper(), tmp_path.as_uri(), "visitor"),
    }

    assert {name: result["language"] for name, result in exports.items()} == {
        "nl": "nl",
        "fr": "fr",
        "de": "en",
        "visitor": "en",
    }
    assert list(exports["visitor"]["tables"]) == ["prospects", "contact_requests"]
    for name, result in exports.items():
        readme = (tmp_path / name / "README.md").read_text("utf-8")
        assert readme.startswith(README_TITLES[result["language"]] + "\n")
        named = set(re.findall(r"^### `(\w+)`", readme, flags=re.MULTILINE))
        assert named == set(result["tables"]), name
        assert_no_personal_data(readme)
    nl = (tmp_path / "nl" / "README.md").read_text("utf-8")
    assert "Doel: **Onze diensten aanbieden via uw account**" in nl, "the purpose's Dutch title"
    assert "Gewist 1 jaar na de datum `connected_at`." in nl
    fr = (tmp_path / "fr" / "README.md").read_text("utf-8")
    assert "Base juridique : Notre intérêt légitime à répondre à vos demandes." in fr
    assert "Effacés 3 ans après la date `last_contact_at` (à défaut, `received_at`)." in fr
    visitor_readme = (tmp_path / "visitor" / "README.md").read_text("utf-8")
    assert "Purpose: **Building a file of clients and prospects**" in visitor_readme
    assert "Erased 3 years after `last_contact_at` (or, when empty, `created_at`)." in visitor_readme


def test_a_purpose_without_a_translation_is_written_in_the_policys_english(tmp_path, monkeypatch):
    monkeypatch.setattr(subject_export, "_translations", lambda: {})
    readme = subject_export.render_readme(POLICY, {"prospects": 1}, "fr")
    assert "Finalité : **Building a file of clients and prospects**." in readme
    assert "Base juridique : Our legitimate interest in developing and promoting our activity." in readme


def test_an_address_without_records_writes_nothing(sqlite_engine, tmp_path):
    seed_person(sqlite_engine, LOOKALIKES)
    destination = tmp_path / "packages"

    result = export_subject(sqlite_engine, POLICY, REQUESTED, destination.as_uri(), FOLDER)

    assert result == {"location": None, "tables": {}, "language": "en"}
    assert count_subject_records(sqlite_engine, POLICY, REQUESTED) == {}
    assert list(destination.iterdir()) == []


def test_a_second_export_replaces_the_first(sqlite_engine, tmp_path):
    subject = seed_person(sqlite_engine, STORED)
    export_subject(sqlite_engine, POLICY, REQUESTED, tmp_path.as_uri(), FOLDER)
    with sqlite_engine.begin() as connection:
        connection.execute(text("DELETE FROM prospecting_objections"))

    result = export_subject(sqlite_engine, POLICY, REQUESTED, tmp_path.as_uri(), FOLDER)

    assert "prospecting_objections" not in result["tables"]
    assert not (tmp_path / FOLDER / "prospecting_objections.json").exists()
    assert len(json.loads((tmp_path / FOLDER / "smicers.json").read_text("utf-8"))) == len(subject["smicers"])


@both_databases
def test_a_large_bundle_is_streamed_whole_into_both_files(app_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(subject_export, "FETCH_ROWS", 100)
    smicer = seed_person(app_engine, STORED)["smicers"][0]
    logs = Table("connection_logs", MetaData(), autoload_with=app_engine)
    keys = list(range(10_000_000, 10_002_500))
    rows = [{"id": key, "smicer_id": smicer, "connected_at": datetime(2025, 2, 1), "succeeded": True} for key in keys]
    with app_engine.begin() as connection:
        connection.execute(insert(logs), rows)

    result = export_subject(app_engine, POLICY, REQUESTED, tmp_path.as_uri(), FOLDER)

    json_rows, lines = package_files(tmp_path / FOLDER)["connection_logs"]
    assert result["tables"]["connection_logs"] == len(json_rows) == len(lines) - 1 == 2502
    assert [row["id"] for row in json_rows][2:] == keys


# Destinations


@both_databases
def test_an_s3_destination_gets_standard_encrypted_objects(app_engine, people, s3, moto_endpoint, tmp_path):
    bucket = new_bucket(s3, object_lock=False)
    stale = f"packages/{FOLDER}/left-by-an-earlier-try.json"
    s3.put_object(Bucket=bucket, Key=stale, Body=b"[]")

    result = export_subject(
        app_engine, POLICY, REQUESTED, f"s3://{bucket}/packages/", FOLDER, s3_options=s3_options(moto_endpoint)
    )
    on_disk = export_subject(app_engine, POLICY, REQUESTED, tmp_path.as_uri(), FOLDER)

    assert result == on_disk | {"location": f"s3://{bucket}/packages/{FOLDER}"}
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="packages/")["Contents"]
    local = sorted((tmp_path / FOLDER).iterdir())
    assert sorted(item["Key"] for item in listed) == [f"packages/{FOLDER}/{path.name}" for path in local]
    for path in local:
        key = f"packages/{FOLDER}/{path.name}"
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("StorageClass", "STANDARD") == "STANDARD"
        assert head["ServerSideEncryption"] == "AES256"
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()


def test_a_bucket_outside_the_eea_is_refused_unless_allowed(sqlite_engine, moto_endpoint):
    seed_person(sqlite_engine, STORED)
    s3 = plain_client(moto_endpoint, region="us-east-1")
    bucket = new_bucket(s3, region="us-east-1", object_lock=False)
    uri = f"s3://{bucket}/packages"

    with pytest.raises(SubjectPackageError, match="outside the EU/EEA") as refused:
        export_subject(sqlite_engine, POLICY, REQUESTED, uri, FOLDER, s3_options=s3_options(moto_endpoint))
    assert_no_personal_data(str(refused.value))
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    allowed = s3_options(moto_endpoint, allow_outside_eea=True)
    assert export_subject(sqlite_engine, POLICY, REQUESTED, uri, FOLDER, s3_options=allowed)["location"]


@pytest.fixture
def put_refusing_endpoint():
    """An S3 endpoint that tells a bucket's region (eu-west-3) and answers every other request 500."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "GET" and self.path.endswith("?location"):
                status, body = 200, f"<LocationConstraint>{REGION}</LocationConstraint>"
            else:
                status, body = 500, "<Error><Code>InternalError</Code><Message>refused</Message></Error>"
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_a_failed_upload_raises_naming_the_object(sqlite_engine, put_refusing_endpoint):
    seed_person(sqlite_engine, STORED)
    assert plain_client(put_refusing_endpoint).get_bucket_location(Bucket="packages")["LocationConstraint"] == REGION

    with pytest.raises(SubjectPackageError) as failed:
        export_subject(sqlite_engine, POLICY, REQUESTED, "s3://packages/out", FOLDER, s3_options(put_refusing_endpoint))
    message = str(failed.value)
    assert f"cannot write object out/{FOLDER}/browsing_events.csv" in message
    assert "InternalError (HTTP 500)" in message
    assert_no_personal_data(message)


@pytest.mark.parametrize(
    "uri", ["ftp://host/packages", "file://relative/packages", "file:relative/packages", "/packages", "s3:///packages"]
)
def test_an_unsupported_destination_is_refused_naming_it(sqlite_engine, uri):
    with pytest.raises(ValueError, match=re.escape(repr(uri))) as refused:
        export_subject(sqlite_engine, POLICY, REQUESTED, uri, FOLDER)
    assert_no_personal_data(str(refused.value))


@pytest.mark.parametrize("folder", ["../escape", "a/b", "", ".hidden", "name\n", STORED[0]])
def test_a_folder_that_is_not_one_plain_name_is_refused_without_repeating_it(sqlite_engine, tmp_path, folder):
    with pytest.raises(ValueError, match="folder must be one name") as refused:
        export_subject(sqlite_engine, POLICY, REQUESTED, (tmp_path / "packages").as_uri(), folder)
    assert_no_personal_data(str(refused.value))
    assert not (tmp_path / "packages").exists()


@pytest.mark.parametrize("email", ["", "   ", None])
def test_an_empty_address_is_refused(sqlite_engine, tmp_path, email):
    with pytest.raises(ValueError, match="address is empty"):
        export_subject(sqlite_engine, POLICY, email, tmp_path.as_uri(), FOLDER)
    with pytest.raises(ValueError, match="address is empty"):
        count_subject_records(sqlite_engine, POLICY, email)
