"""The suppression list: keyed digests of erased and objecting addresses, on real databases; the check
command run as an operator runs it, its outputs and exit codes; and that the address reaches neither
the list nor any output."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import inspect, select

from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine
from lifecycle.suppression import (
    SuppressionError,
    SuppressionKeyMissing,
    checked_key,
    key_id,
    normalized,
    suppress,
    suppression_digest,
    suppression_of,
)

CANARY_EMAIL = "Zebulon.Quintessenza@Canary-Mail.example"
OBJECTING_EMAIL = "Ophelia.Quintessenza@Canary-Mail.example"
CANARY_MARK = "quintessenza"
KEY = "k3y/with:odd@chars#" + "0123456789abcdef" * 2  # characters a URI must percent-encode
OTHER_KEY = "another-secret-key-" + "fedcba9876543210" * 2
PROJECT = Path(__file__).resolve().parents[1]
ENVIRONMENT_NAMES = (
    "AIRFLOW_CONN_SMICE_APP",
    "AIRFLOW_CONN_LIFECYCLE_SUPPRESSION",
    "AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY",
)
KEY_ADVICE = (
    "lifecycle_suppression",
    "lifecycle_suppression_key",
    "AIRFLOW_CONN_LIFECYCLE_SUPPRESSION",
    "AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY",
)


def test_the_digest_is_keyed_and_compares_addresses_as_the_project_does():
    digest = suppression_digest(CANARY_EMAIL, KEY)

    expected = hmac.new(KEY.encode(), CANARY_EMAIL.lower().encode(), hashlib.sha256).hexdigest()
    assert digest == expected
    assert normalized(f" \t{CANARY_EMAIL.upper()}\n") == CANARY_EMAIL.lower()
    assert suppression_digest(f"  {CANARY_EMAIL.upper()} ", KEY) == digest
    assert suppression_digest(CANARY_EMAIL, OTHER_KEY) != digest
    assert suppression_digest(OBJECTING_EMAIL, KEY) != digest
    assert digest != hashlib.sha256(CANARY_EMAIL.lower().encode()).hexdigest(), "not a plain hash anyone can redo"
    assert re.fullmatch("[0-9a-f]{16}", key_id(KEY))
    assert key_id(KEY) != key_id(OTHER_KEY) and key_id(f" {KEY}\n") == key_id(KEY)
    assert key_id(KEY) not in KEY and key_id(KEY) not in digest


@pytest.mark.parametrize(
    "key", [None, "", "   ", "x" * 31, f"  {'x' * 31}  "], ids=["none", "empty", "blank", "31", "31 padded"]
)
def test_a_key_missing_or_too_short_is_refused_saying_how_to_set_it(sqlite_engine, key):
    tables = lifecycle_tables(sqlite_engine)
    attempts = (
        lambda: suppression_digest(CANARY_EMAIL, key),
        lambda: key_id(key),
        lambda: suppress(connection, tables, CANARY_EMAIL, key, "erased", "subject_request", "run 1"),
        lambda: suppression_of(connection, tables, CANARY_EMAIL, key),
    )
    with sqlite_engine.begin() as connection:
        for attempt in attempts:
            with pytest.raises(SuppressionKeyMissing) as refused:
                attempt()
            message = str(refused.value)
            assert all(advice in message for advice in KEY_ADVICE), message
            assert "32 characters" in message
            assert CANARY_MARK not in message.lower()
            assert not (key and key.strip()) or key.strip() not in message, "the key is never echoed"
    assert stored_entries(sqlite_engine) == []


def test_a_caller_checks_the_key_before_acting_and_says_what_needs_it():
    assert checked_key(f"  {KEY}\n") == KEY
    with pytest.raises(SuppressionKeyMissing) as refused:
        checked_key("x" * 31, "an erasure adds the address to the suppression list")
    assert str(refused.value).startswith(
        "the suppression list's key is shorter than 32 characters (an erasure adds the address to the suppression"
        " list): set a secret of 32 characters or more as the password of the Airflow connection"
        " `lifecycle_suppression` (AIRFLOW_CONN_LIFECYCLE_SUPPRESSION in the environment), or as the Airflow"
        " variable `lifecycle_suppression_key` (AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY)"
    )


def test_suppress_keeps_the_first_entry_and_matches_only_its_key(engine):
    tables = lifecycle_tables(engine)
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)  # MariaDB keeps whole seconds
    with engine.begin() as connection:
        first = suppress(connection, tables, f"  {CANARY_EMAIL} ", KEY, "erased", "subject_request", "run 1")
        again = suppress(connection, tables, CANARY_EMAIL.upper(), KEY, "objection", "subject_request", "run 2")
        objecting = suppress(connection, tables, OBJECTING_EMAIL, KEY, "objection", "subject_request", "run 3")

    assert (first, again, objecting) == (True, False, True)
    with engine.connect() as connection:
        entry = suppression_of(connection, tables, CANARY_EMAIL.lower(), KEY)
        assert entry["reason"] == "erased" and before <= entry["added_at"] <= datetime.now(UTC).replace(tzinfo=None)
        assert suppression_of(connection, tables, f"\t{OBJECTING_EMAIL.upper()}", KEY)["reason"] == "objection"
        assert suppression_of(connection, tables, CANARY_EMAIL, OTHER_KEY) is None
        assert suppression_of(connection, tables, "someone.else@canary-mail.example", KEY) is None
    entries = stored_entries(engine)
    assert [(e["digest"], e["key_id"], e["reason"], e["run_id"]) for e in entries] == sorted(
        [
            (suppression_digest(CANARY_EMAIL, KEY), key_id(KEY), "erased", "run 1"),
            (suppression_digest(OBJECTING_EMAIL, KEY), key_id(KEY), "objection", "run 3"),
        ]
    )
    assert_no_address_in(json.dumps(entries, default=str))


def test_suppress_belongs_to_the_callers_transaction(engine):
    tables = lifecycle_tables(engine)
    with engine.connect() as connection:
        with connection.begin() as transaction:
            assert suppress(connection, tables, CANARY_EMAIL, KEY, "erased", "subject_request", "run 1")
            transaction.rollback()
        assert suppression_of(connection, tables, CANARY_EMAIL, KEY) is None
    assert stored_entries(engine) == []


REFUSED = {
    "unknown reason": ({"reason": "unsubscribed"}, "reason is one of: erased, objection"),
    "blank address": ({"email": "  "}, "the email is blank"),
    "no address": ({"email": None}, "the email is blank"),
    "no run": ({"run_id": None}, "run_id is a name of 1 to 250 characters"),
    "blank dag": ({"dag_id": " "}, "dag_id is a name of 1 to 250 characters"),
    "dag too long": ({"dag_id": "d" * 251}, "dag_id is a name of 1 to 250 characters"),
}


@pytest.mark.parametrize("fault", REFUSED.values(), ids=REFUSED.keys())
def test_a_suppression_at_fault_is_refused_naming_the_fault_never_the_address(sqlite_engine, fault):
    fields, message = fault
    request = {"email": CANARY_EMAIL, "key": KEY, "reason": "erased", "dag_id": "subject_request", "run_id": "r"}
    with sqlite_engine.begin() as connection, pytest.raises(SuppressionError, match=message) as refused:
        suppress(connection, lifecycle_tables(sqlite_engine), **(request | fields))
    assert CANARY_MARK not in str(refused.value).lower()
    assert stored_entries(sqlite_engine) == []


@pytest.fixture(params=["sqlite", "postgresql"])
def listed_url(request, tmp_path) -> str:
    """A database whose suppression list holds CANARY_EMAIL (erased) and OBJECTING_EMAIL (objection)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'listed.db'}"
    else:
        database = request.getfixturevalue("postgresql_session_database")
        database.reset()
        url = database.url.set(drivername="postgresql").render_as_string(hide_password=False)  # as Airflow has it
    engine = make_engine(url)
    tables = ensure_lifecycle_tables(engine)
    with engine.begin() as connection:
        suppress(connection, tables, CANARY_EMAIL, KEY, "erased", "subject_request", "erasure 1")
        suppress(connection, tables, OBJECTING_EMAIL, KEY, "objection", "subject_request", "objection 1")
    engine.dispose()
    return url


def test_the_command_checks_an_address(listed_url):
    today = datetime.now(UTC).date().isoformat()
    json_connection = {"AIRFLOW_CONN_LIFECYCLE_SUPPRESSION": json.dumps({"conn_type": "generic", "password": KEY})}
    uri_connection = {"AIRFLOW_CONN_LIFECYCLE_SUPPRESSION": f"generic://:{quote(KEY, safe='')}@"}
    variable = {"AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY": KEY}
    database = {"AIRFLOW_CONN_SMICE_APP": listed_url}

    erased = check("--email", f" {CANARY_EMAIL.upper()} ", environment=database | variable)
    objecting = check("--email", OBJECTING_EMAIL, "--database-url", listed_url, environment=uri_connection)
    from_stdin = check("--email", "-", "--db-url", listed_url, environment=json_connection, stdin=CANARY_EMAIL + "\n")
    absent = check("--email", "someone.else@canary-mail.example", environment=database | json_connection)
    # The connection comes before the variable: here the variable's key would match nothing.
    precedence = check("--email", CANARY_EMAIL, environment=database | uri_connection | wrong_key_variable())
    another_key = check("--email", CANARY_EMAIL, environment=database | wrong_key_variable())

    assert (erased.returncode, erased.stdout) == (1, f"suppressed: erased on {today}; do not import the address\n")
    assert (objecting.returncode, objecting.stdout) == (
        1,
        f"suppressed: objection on {today}; do not import the address\n",
    )
    assert (from_stdin.returncode, from_stdin.stdout) == (1, erased.stdout)
    not_suppressed = "not suppressed: the address is not on the suppression list\n"
    assert (absent.returncode, absent.stdout) == (0, not_suppressed)
    assert (precedence.returncode, precedence.stdout) == (1, erased.stdout)
    assert (another_key.returncode, another_key.stdout) == (0, not_suppressed)
    assert another_key.stderr == (
        f"warning: this key (key id {key_id(OTHER_KEY)}) cannot match 2 entries of the list, made with another key\n"
    )
    assert all(out.stderr == "" for out in (erased, objecting, from_stdin, absent, precedence))
    assert_no_address_in(erased, objecting, from_stdin, absent, precedence, another_key)


def test_the_command_checks_a_csv_file(listed_url, tmp_path):
    today = datetime.now(UTC).date().isoformat()
    environment = {"AIRFLOW_CONN_SMICE_APP": listed_url, "AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY": KEY}
    prospects = tmp_path / "prospects.csv"
    prospects.write_text(
        "\ufeffname,Email,source\n"  # the byte order mark a spreadsheet writes
        "Alice,alice@example.org,fair\n"
        f"Zebulon,  {CANARY_EMAIL.upper()} ,fair\n"
        "\n"
        f'"Ophelia\nQ.",{OBJECTING_EMAIL},list\n'  # a record over two lines: named by its first
        "Nobody,,fair\n"
        f"Zebulon again,{CANARY_EMAIL},list\n",
        encoding="utf-8",
    )
    # Past one query's batch of digests: 2,500 addresses, two on the list far apart.
    purchased = tmp_path / "purchased.csv"
    rows = [f"p{n}@example.org;{n}" for n in range(2500)]
    rows[1499], rows[2399] = f"{OBJECTING_EMAIL};1499", f"{CANARY_EMAIL};2399"
    purchased.write_text("contact;id\n" + "\n".join(rows) + "\n", encoding="utf-8")
    clean = tmp_path / "clean.csv"
    clean.write_text(f"who,mail\nAlice,alice@example.org\n{CANARY_EMAIL},bob@example.org\n", encoding="utf-8")

    found = check("--csv", str(prospects), environment=environment)
    by_column = check("--csv", str(purchased), "--column", "CONTACT", "--delimiter", ";", environment=environment)
    first_column = check("--csv", str(purchased), "--delimiter", ";", environment=environment)
    none_found = check("--csv", str(clean), "--column", "mail", environment=environment)

    assert found.returncode == 1
    assert found.stdout.splitlines() == [
        f"line 3: suppressed (erased on {today})",
        f"line 5: suppressed (objection on {today})",
        f"line 8: suppressed (erased on {today})",
        f"3 of 4 addresses in {prospects} suppressed",
    ]
    assert by_column.returncode == 1
    assert by_column.stdout.splitlines() == [
        f"line 1501: suppressed (objection on {today})",
        f"line 2401: suppressed (erased on {today})",
        f"2 of 2500 addresses in {purchased} suppressed",
    ]
    assert (first_column.returncode, first_column.stdout) == (1, by_column.stdout)
    assert (none_found.returncode, none_found.stdout) == (0, f"0 of 2 addresses in {clean} suppressed\n")
    assert all(out.stderr == "" for out in (found, by_column, first_column, none_found))
    assert_no_address_in(found, by_column, first_column, none_found)


def test_the_command_refuses_what_it_cannot_check(tmp_path):
    url = f"sqlite:///{tmp_path / 'listed.db'}"
    engine = make_engine(url)
    ensure_lifecycle_tables(engine)
    engine.dispose()
    environment = {"AIRFLOW_CONN_SMICE_APP": url, "AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY": KEY}
    short_key = "short-key-" + CANARY_MARK
    files = {
        "unterminated.csv": f'email\nalice@example.org\n"{CANARY_EMAIL}\n',
        "short.csv": f"name,email\nAlice,alice@example.org\n{CANARY_EMAIL}\n",
        "latin1.csv": "name,email\nAlice,alice@example.org\nJos\xe9,jose@example.org\n",
        "headless.csv": f"{CANARY_EMAIL},1\nalice@example.org,2\n",
        "empty.csv": "",
    }
    for name, text in files.items():
        (tmp_path / name).write_bytes(text.encode("latin-1" if name == "latin1.csv" else "utf-8"))
    refused = {
        "no key": (check("--email", CANARY_EMAIL, environment={"AIRFLOW_CONN_SMICE_APP": url}), "is not set"),
        "short key": (
            check("--email", CANARY_EMAIL, environment={"AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY": short_key}),
            "is shorter than 32 characters",
        ),
        "connection not JSON": (
            check("--email", CANARY_EMAIL, environment={"AIRFLOW_CONN_LIFECYCLE_SUPPRESSION": "{" + short_key}),
            "AIRFLOW_CONN_LIFECYCLE_SUPPRESSION is neither a URI nor a JSON object",
        ),
        "blank address": (check("--email", " ", environment=environment), "the email is blank"),
        "unterminated quote": (
            check("--csv", str(tmp_path / "unterminated.csv"), environment=environment),
            f"{tmp_path / 'unterminated.csv'}, line 3: malformed CSV",
        ),
        "short line": (
            check("--csv", str(tmp_path / "short.csv"), environment=environment),
            f"{tmp_path / 'short.csv'}, line 3: 1 fields, the addresses are in field 2",
        ),
        "not UTF-8": (
            check("--csv", str(tmp_path / "latin1.csv"), environment=environment),
            f"{tmp_path / 'latin1.csv'}, line 3: not UTF-8 text",
        ),
        "no such column": (
            check("--csv", str(tmp_path / "headless.csv"), "--column", "email", environment=environment),
            f"{tmp_path / 'headless.csv'}, line 1: the header has no column of the name given by --column",
        ),
        "empty file": (
            check("--csv", str(tmp_path / "empty.csv"), environment=environment),
            f"{tmp_path / 'empty.csv'}: the file is empty, it has no header line",
        ),
        "no file": (
            check("--csv", str(tmp_path / "missing.csv"), environment=environment),
            f"{tmp_path / 'missing.csv'} cannot be read: No such file or directory",
        ),
        "no list": (
            check("--email", CANARY_EMAIL, "--db-url", f"sqlite:///{tmp_path / 'other.db'}", environment=environment),
            "the database has no suppression list (table lifecycle_suppressions)",
        ),
    }
    refused["connection of another type"] = (
        check("--email", CANARY_EMAIL, environment=environment | {"AIRFLOW_CONN_SMICE_APP": "oracle://db/app"}),
        "AIRFLOW_CONN_SMICE_APP cannot be read: connection smice_app: type 'oracle' is not supported",
    )
    unreachable = check(
        "--email", CANARY_EMAIL, "--db-url", "postgresql://nobody@127.0.0.1:1/app", environment=environment
    )
    for case, (out, message) in refused.items():
        assert out.returncode == 2, case
        assert out.stderr.startswith("suppression check refused: ") and message in out.stderr, (case, out.stderr)
        assert out.stdout == "", case
    assert (unreachable.returncode, unreachable.stdout) == (2, "")
    assert unreachable.stderr.startswith("suppression check failed: the database could not be read (")
    for advice in KEY_ADVICE:
        assert advice in refused["no key"][0].stderr
    usage = {
        "nothing to check": check(environment=environment),
        "both": check("--email", CANARY_EMAIL, "--csv", str(tmp_path / "short.csv"), environment=environment),
        "column without csv": check("--email", CANARY_EMAIL, "--column", "email", environment=environment),
        "long delimiter": check("--csv", str(tmp_path / "short.csv"), "--delimiter", ";;", environment=environment),
    }
    for case, out in usage.items():
        assert (out.returncode, "usage: python -m lifecycle.suppression check" in out.stderr) == (2, True), case
    assert_no_address_in(*(out for out, _ in refused.values()), *usage.values(), unreachable)
    assert stored_names(f"sqlite:///{tmp_path / 'other.db'}") == [], "a check creates nothing"


def check(*args: str, environment: dict, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in ENVIRONMENT_NAMES}
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.suppression", "check", *args],
        cwd=PROJECT,
        env=env | environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wrong_key_variable() -> dict:
    return {"AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY": OTHER_KEY}


def stored_entries(engine) -> list[dict]:
    """Every column of every entry of the list."""
    suppressions = lifecycle_tables(engine).suppressions
    with engine.connect() as connection:
        query = select(suppressions).order_by(suppressions.c.digest)
        return [dict(row) for row in connection.execute(query).mappings()]


def stored_names(url: str) -> list[str]:
    engine = make_engine(url)
    names = inspect(engine).get_table_names()
    engine.dispose()
    return names


def assert_no_address_in(*outputs) -> None:
    for output in outputs:
        text = output if isinstance(output, str) else output.stdout + output.stderr
        assert CANARY_MARK not in text.lower(), text
        assert hashlib.sha256(CANARY_EMAIL.lower().encode()).hexdigest() not in text
