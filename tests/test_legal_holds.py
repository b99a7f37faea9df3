"""Legal holds placed, lifted and listed by an operator, on three databases: what each refuses, that a
hold keeps records from the rules until it is lifted, and that the address reaches no listing, error
or output of the command."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from lifecycle.holds import HoldError, lift_hold, list_holds, place_hold
from lifecycle.store import lifecycle_tables
from tests.lifecycle_helpers import POLICY, add, exists, run_rules, utc

# Recognisable, as lifecycle_helpers.CANARY: found nowhere but in the hold's own row.
CANARY_EMAIL = "Zebulon.Quintessenza@Canary-Mail.example"
CANARY_MARK = "quintessenza"
NORMALISED = CANARY_EMAIL.lower()
TODAY = date(2026, 5, 1)
AS_OF = utc(2026, 5, 1)
PROJECT = Path(__file__).resolve().parents[1]


def place(engine, **request) -> int:
    return place_hold(engine, POLICY, **({"reason": "litigation 2026-17", "today": TODAY} | request))


def stored_holds(engine) -> list[dict]:
    holds = lifecycle_tables(engine).legal_holds
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(select(holds).order_by(holds.c.id)).mappings()]


def test_holds_are_placed_listed_and_lifted(engine):
    by_email = place(engine, email=f"  {CANARY_EMAIL} ", until="2026-06-01", placed_by="dpo")
    by_record = place(engine, table="prospects", key="42", reason="audit of contract 9")

    assert [hold["email_normalized"] for hold in stored_holds(engine)] == [NORMALISED, None]
    email_row, record_row = list_holds(engine, today=TODAY)
    assert email_row | {"created_at": None} == {
        "id": by_email,
        "kind": "email",
        "digest": hashlib.sha256(NORMALISED.encode()).hexdigest()[:12],
        "table": None,
        "key": None,
        "reason": "litigation 2026-17",
        "until": "2026-06-01",
        "created_at": None,
        "lifted_at": None,
        "state": "active",
        "placed_by": "dpo",
        "lifted_by": None,
        "lift_reason": None,
    }
    assert (record_row["kind"], record_row["table"], record_row["key"], record_row["digest"]) == (
        "record",
        "prospects",
        42,
        None,
    )
    assert [row["state"] for row in list_holds(engine, today=date(2026, 6, 1))] == ["expired", "active"]

    lift_hold(engine, by_record, lifted_by="dpo", reason="case closed")

    assert [row["id"] for row in list_holds(engine, today=TODAY)] == [by_email]
    assert CANARY_MARK not in json.dumps(list_holds(engine, include_lifted=True)).lower()
    lifted = list_holds(engine, include_lifted=True, today=TODAY)[1]
    assert (lifted["state"], lifted["lifted_by"], lifted["lift_reason"]) == ("lifted", "dpo", "case closed")
    assert lifted["lifted_at"] is not None


REFUSED = {
    "nothing held": ({}, "needs an email, or a table and a key"),
    "email and record": ({"email": CANARY_EMAIL, "table": "prospects", "key": 1}, "not both"),
    "email and key": ({"email": CANARY_EMAIL, "key": 1}, "not both"),
    "table without key": ({"table": "prospects"}, "needs an email, or a table and a key"),
    "key without table": ({"key": 7}, "needs an email, or a table and a key"),
    "address without domain": ({"email": "zebulon.quintessenza@localhost"}, "not a valid address"),
    "address with space": ({"email": "zebulon quintessenza@canary-mail.example"}, "not a valid address"),
    "two @": ({"email": "zebulon@quintessenza@canary-mail.example"}, "not a valid address"),
    "unknown table": ({"table": "smicer", "key": 1}, "the table is not one of the policy's: .*smicers"),
    "address as table": ({"table": CANARY_EMAIL, "key": 1}, "the table is not one of the policy's"),
    "key not an integer": ({"table": "prospects", "key": "4x"}, "the key must be an integer"),
    "key a float": ({"table": "prospects", "key": 4.5}, "the key must be an integer"),
    "key a boolean": ({"table": "prospects", "key": True}, "the key must be an integer"),
    "no reason": ({"email": CANARY_EMAIL, "reason": None}, "a reason is required"),
    "blank reason": ({"email": CANARY_EMAIL, "reason": "  "}, "a reason is required"),
    "address in the reason": ({"table": "prospects", "key": 1, "reason": f"asked by {CANARY_EMAIL}"}, "personal data"),
    "until today": ({"email": CANARY_EMAIL, "until": TODAY}, r"until \(2026-05-01\) must be after today"),
    "until in the past": ({"email": CANARY_EMAIL, "until": "2026-04-30"}, "must be after today"),
    "until not a date": ({"email": CANARY_EMAIL, "until": "31/12/2026"}, "until is not a date"),
    "until a datetime": ({"email": CANARY_EMAIL, "until": datetime(2026, 12, 31)}, "until must be a date"),
}


@pytest.mark.parametrize("request_", REFUSED.values(), ids=REFUSED.keys())
def test_a_request_at_fault_is_refused_naming_the_fault_never_the_address(sqlite_engine, request_):
    fields, fault = request_
    with pytest.raises(HoldError, match=fault) as refused:
        place(sqlite_engine, **fields)
    assert CANARY_MARK not in str(refused.value).lower()
    assert stored_holds(sqlite_engine) == []


def test_lifting_an_unknown_or_lifted_hold_is_refused(engine):
    hold = place(engine, table="prospects", key=1)
    lift_hold(engine, hold)

    with pytest.raises(HoldError, match=f"legal hold {hold} was already lifted on "):
        lift_hold(engine, hold, reason="again")
    with pytest.raises(HoldError, match=f"there is no legal hold {hold + 1}"):
        lift_hold(engine, hold + 1)
    with pytest.raises(HoldError, match="needs its id"):
        lift_hold(engine, None)
    active = place(engine, table="prospects", key=2)
    with pytest.raises(HoldError, match="personal data") as refused:
        lift_hold(engine, active, reason=f"asked by {CANARY_EMAIL}")
    assert CANARY_MARK not in str(refused.value).lower()
    assert [row["state"] for row in list_holds(engine, include_lifted=True)] == ["lifted", "active"]


def test_holds_keep_records_from_the_rules_until_lifted(engine, tmp_path):
    created = {"created_at": datetime(2020, 1, 1)}
    held_by_email = add(engine, "prospects", email=f" {CANARY_EMAIL.upper()}", **created)
    held_by_key = add(engine, "prospects", **created)
    free = add(engine, "prospects", **created)
    email_hold = place_hold(engine, POLICY, email=CANARY_EMAIL, reason="litigation 2026-17")
    record_hold = place_hold(engine, POLICY, table="prospects", key=held_by_key, reason="audit")

    summary = run_rules(engine, AS_OF, tmp_path, ["prospects"], run_id="held")

    assert (exists(engine, "prospects", held_by_email), exists(engine, "prospects", held_by_key)) == (True, True)
    assert not exists(engine, "prospects", free)
    assert summary["rules"]["prospects"]["held"] == 2

    lift_hold(engine, email_hold)
    lift_hold(engine, record_hold)
    run_rules(engine, AS_OF, tmp_path, ["prospects"], run_id="lifted")

    assert (exists(engine, "prospects", held_by_email), exists(engine, "prospects", held_by_key)) == (False, False)


def test_a_hold_on_a_smicer_or_one_row_of_the_bundle_keeps_the_whole_bundle_from_every_rule(engine, tmp_path):
    old = {"connected_at": datetime(2020, 1, 1)}
    by_smicer, by_row, free = (add(engine, "smicers") for _ in range(3))
    logs = {
        smicer: [add(engine, "connection_logs", smicer_id=smicer, **old) for _ in range(2)]
        for smicer in (by_smicer, by_row, free)
    }
    place_hold(engine, POLICY, table="smicers", key=by_smicer, reason="litigation 2026-17")
    place_hold(engine, POLICY, table="connection_logs", key=logs[by_row][0], reason="audit 9")

    summary = run_rules(engine, AS_OF, tmp_path, ["connection-logs"])

    assert summary["rules"]["connection-logs"]["held"] == 4
    assert all(exists(engine, "connection_logs", key) for key in logs[by_smicer] + logs[by_row])
    assert not any(exists(engine, "connection_logs", key) for key in logs[free])


def test_the_command_places_lists_and_lifts_without_printing_the_address(sqlite_url, tmp_path):
    future = (date.today() + timedelta(days=30)).isoformat()
    database = ("--database-url", sqlite_url)
    request = ("--reason", "litigation 2026-17", "--until", future)
    placed = holds_command("place", "--email", CANARY_EMAIL, *request, *database)
    refused = holds_command("place", "--email", "zebulon.quintessenza@nowhere", "--reason", "x", *database)
    # The environment's connection, as the DAGs read it.
    listed = holds_command("list", environment={"AIRFLOW_CONN_SMICE_APP": sqlite_url})
    lifted = holds_command("lift", "1", "--reason", "case closed", "--by", "dpo", "--db-url", sqlite_url)
    listed_all = holds_command("list", "--all", *database)

    assert (placed.returncode, placed.stdout) == (0, "legal hold 1 placed\n")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "legal hold refused: the email is not a valid address (one @, a local part, a dotted domain, no white space)"
    ]
    digest = hashlib.sha256(NORMALISED.encode()).hexdigest()[:12]
    assert listed.returncode == 0
    assert f"email sha256:{digest}  {future}" in listed.stdout and "litigation 2026-17" in listed.stdout
    assert (lifted.returncode, lifted.stdout.startswith("legal hold 1 lifted")) == (0, True)
    assert "lifted" in listed_all.stdout.splitlines()[1]
    outputs = [placed, refused, listed, lifted, listed_all]
    assert all(CANARY_MARK not in (out.stdout + out.stderr).lower() for out in outputs), "no address in any output"


def holds_command(*args: str, environment: dict | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "AIRFLOW_CONN_SMICE_APP"}
    return subprocess.run(
        [sys.executable, "-m", "lifecycle.holds", *args],
        cwd=PROJECT,
        env=env | (environment or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_holds_table_of_an_earlier_version_gets_the_new_columns(db_url):
    from sqlalchemy import inspect

    from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine

    engine = make_engine(db_url)
    holds = lifecycle_tables(engine).legal_holds
    ensure_lifecycle_tables(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE {lifecycle_tables(engine).qualified(holds)} DROP COLUMN placed_by")

    ensure_lifecycle_tables(engine)

    columns = {c["name"] for c in inspect(engine).get_columns(holds.name, schema=holds.schema)}
    assert "placed_by" in columns
    engine.dispose()
