"""A data subject's requests carried out on three databases (lifecycle.subject): the subject's records
spread over every table among other people's; erasure through the retention pipeline's own steps,
refused under a hold, its certificate without personal data; objection, withdrawal of consent,
restriction and its lift, honoured by the nightly rules; the rights_requests row closed; the dry run
changing nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime

import pytest
from sqlalchemy import select

from lifecycle.holds import place_hold
from lifecycle.subject import (
    DONE,
    NOTHING_FOUND,
    PARTLY_REFUSED,
    REFUSED,
    Destinations,
    RequestRefused,
    SubjectRequest,
    carry_out,
)
from lifecycle.suppression import SuppressionKeyMissing, suppression_of
from tests.lifecycle_helpers import CANARY, POLICY, add, exists, fingerprint, make_run, run_rules, scalar, utc

AS_OF = utc(2026, 5, 1, 9, 30)
# The address as the operator types it, and as the application stored it: case and spaces differ.
TYPED = "  Zebulon.Quintessenza@Canary-Mail.example "
STORED = "zebulon.QUINTESSENZA@canary-mail.example  "
CANARY_MARKS = ("quintessenza", "zebulon", CANARY["iban"], CANARY["phone"])
SUPPRESSION_KEY = "k" * 40


def seed(engine) -> dict[str, list[int]]:
    """The subject's records in every table, a neighbour's with a look-alike address beside each."""
    client = add(engine, "clients")
    keys: dict[str, list[int]] = {}

    def record(table: str, mine: bool, **values) -> None:
        key = add(engine, table, **values)
        if mine:
            keys.setdefault(table, []).append(key)

    for mine, address in ((True, STORED), (False, "zebulon.quintessenza@canary-mail.example.org")):
        smicer = add(engine, "smicers", email=address, locale="nl", **CANARY)
        if mine:
            keys["smicers"] = [smicer]
        record("connection_logs", mine, smicer_id=smicer, connected_at=datetime(2026, 4, 1))
        record("connection_logs", mine, smicer_id=smicer, connected_at=datetime(2026, 4, 2))
        record("browsing_events", mine, smicer_id=smicer, occurred_at=datetime(2026, 4, 1))
        record("test_applications", mine, smicer_id=smicer, test_date=date(2026, 1, 5))
        record("missions", mine, smicer_id=smicer, client_id=client)
        record("client_contacts", mine, client_id=client, email=address)
        record("prospects", mine, email=address)
        record("newsletter_subscriptions", mine, email=address, consented_at=datetime(2026, 1, 1))
        record("newsletter_subscriptions", mine, email=address, withdrawn_at=datetime(2026, 2, 1))
        record("contact_requests", mine, email=address, message="please call Zebulon")
        record("prospecting_objections", mine, email=address)
        record("rights_requests", mine, email=address, kind="erasure", received_at=datetime(2026, 4, 20))
    return keys


def subject_run(engine, tmp_path, request: SubjectRequest, run_id: str = "manual__subject"):
    run = make_run(engine, AS_OF, tmp_path, dag_id="subject_request", run_id=run_id)
    return replace(run, dry_run=request.dry_run, subject_email=request.email)


def ask(engine, tmp_path, key: str | None = SUPPRESSION_KEY, run_id: str = "manual__subject", **params) -> dict:
    request = SubjectRequest.from_params({"email": TYPED} | params)
    destinations = Destinations((tmp_path / "exports").as_uri(), None, key)
    return carry_out(subject_run(engine, tmp_path, request, run_id), request, destinations)


def present(engine, keys: dict[str, list[int]]) -> dict[str, list[int]]:
    return {table: [k for k in table_keys if exists(engine, table, k)] for table, table_keys in keys.items()}


def no_personal_data(*documents) -> None:
    seen = json.dumps(documents, default=str).lower()
    for mark in CANARY_MARKS:
        assert mark.lower() not in seen


def test_erasure_erases_the_subject_keeps_evidence_and_certifies_it(engine, tmp_path):
    mine = seed(engine)
    request_id = mine["rights_requests"][0]

    answer = ask(engine, tmp_path, kind="erasure", dry_run=False, request_id=request_id)

    kept = {"rights_requests", "prospecting_objections", "missions"}
    assert {table: keys for table, keys in present(engine, mine).items() if keys} == {
        table: mine[table] for table in kept
    }
    # Missions stay as the client's deliverables, no longer linked to the smicer.
    assert scalar(engine, "SELECT COUNT(*) FROM missions WHERE smicer_id IS NOT NULL") == 1
    # Nobody else's record was touched: every neighbour's row is still there.
    assert scalar(engine, "SELECT COUNT(*) FROM smicers") == 1
    assert scalar(engine, "SELECT COUNT(*) FROM connection_logs") == 2
    assert answer["outcome"] == DONE and answer["reason"] is None
    tables = answer["tables"]
    assert (tables["smicers"]["erased"], tables["connection_logs"]["erased"]) == (1, 2)
    assert (tables["missions"]["pseudonymised"], tables["missions"]["kept"]) == (1, 0)
    assert tables["prospecting_objections"]["kept"] == 1 and tables["prospecting_objections"]["why_kept"]
    assert tables["newsletter_subscriptions"] == {"erased": 2, "why_kept": {}, "kept": 0}
    batches = {batch["key"].split("/")[0] for batch in answer["archive_batches"]}
    assert batches == {"smicers", "connection_logs", "browsing_events", "test_applications"}
    assert all(batch["retain_until"] == "2031-05-01" for batch in answer["archive_batches"])
    # The request is answered, recorded with its certificate, and its address suppressed.
    assert scalar(engine, "SELECT status FROM rights_requests WHERE id = :k", k=request_id) == "done"
    recorded = _recorded(engine)
    assert (recorded["outcome"], recorded["request_id"]) == (DONE, request_id)
    assert json.loads(recorded["certificate"])["tables"] == json.loads(json.dumps(tables))
    with engine.connect() as connection:
        entry = suppression_of(connection, _tables(engine), TYPED, SUPPRESSION_KEY)
    assert entry["reason"] == "erased"
    no_personal_data(answer, recorded, _audit_trail(engine))


def test_an_erasure_is_a_dry_run_unless_told_otherwise_and_a_dry_run_changes_nothing(engine, tmp_path):
    seed(engine)
    before = fingerprint(engine)

    answer = ask(engine, tmp_path, key=None, kind="erasure")

    assert answer["dry_run"] is True
    assert fingerprint(engine) == before
    assert answer["tables"]["smicers"]["erased"] == 1
    assert answer["tables"]["connection_logs"]["erased"] == 2
    assert answer["tables"]["missions"]["pseudonymised"] == 1


def test_erasure_is_refused_under_a_restriction_and_the_answer_says_why(engine, tmp_path):
    mine = seed(engine)
    restriction = ask(engine, tmp_path, kind="restriction", run_id="manual__restrict")
    request_id = mine["rights_requests"][0]

    answer = ask(engine, tmp_path, kind="erasure", dry_run=False, request_id=request_id)

    assert restriction["outcome"] == DONE
    assert answer["outcome"] == REFUSED
    assert "restriction request" in answer["reason"]
    assert present(engine, mine) == mine
    assert scalar(engine, "SELECT status FROM rights_requests WHERE id = :k", k=request_id) == "open"
    assert _recorded(engine, "manual__subject")["reason"] == answer["reason"]


def test_a_legal_hold_on_one_record_keeps_it_and_the_rest_is_erased(engine, tmp_path):
    mine = seed(engine)
    held = mine["prospects"][0]
    place_hold(engine, POLICY, table="prospects", key=held, reason="litigation 2026-17")

    answer = ask(engine, tmp_path, kind="erasure", dry_run=False)

    assert answer["outcome"] == PARTLY_REFUSED
    assert exists(engine, "prospects", held) and not exists(engine, "smicers", mine["smicers"][0])
    assert answer["tables"]["prospects"] == {"erased": 0, "why_kept": {"held": 1}, "kept": 1}


def test_an_objection_erases_prospecting_records_and_is_recorded(engine, tmp_path):
    mine = seed(engine)

    answer = ask(engine, tmp_path, kind="objection")

    left = present(engine, mine)
    assert left["prospects"] == [] and left["newsletter_subscriptions"] == []
    assert left["smicers"] == mine["smicers"] and left["contact_requests"] == mine["contact_requests"]
    objections = "SELECT COUNT(*) FROM prospecting_objections WHERE LOWER(TRIM(email)) = :e"
    assert scalar(engine, objections, e=TYPED.strip().lower()) == 2
    assert answer["outcome"] == DONE and answer["tables"]["prospecting_objections"]["objection recorded"] == 1
    with engine.connect() as connection:
        assert suppression_of(connection, _tables(engine), TYPED, SUPPRESSION_KEY)["reason"] == "objection"
    # The same request again: the objection of the day is not recorded twice.
    again = ask(engine, tmp_path, kind="objection", run_id="manual__again")
    assert again["outcome"] == NOTHING_FOUND


def test_an_objection_keeps_a_held_prospect_and_is_recorded_all_the_same(engine, tmp_path):
    mine = seed(engine)
    held = mine["prospects"][0]
    place_hold(engine, POLICY, table="prospects", key=held, reason="litigation 2026-17")

    answer = ask(engine, tmp_path, kind="objection")

    assert answer["outcome"] == PARTLY_REFUSED and "1 record(s) kept" in answer["reason"]
    assert exists(engine, "prospects", held)
    assert answer["tables"]["prospects"] == {"erased": 0, "why_kept": {"held": 1}, "kept": 1}
    assert answer["tables"]["prospecting_objections"]["objection recorded"] == 1


def test_withdrawn_consent_lets_the_newsletter_rule_erase_the_subscriptions(engine, tmp_path):
    mine = seed(engine)

    answer = ask(engine, tmp_path, kind="withdraw_consent")
    run_rules(engine, utc(2026, 5, 2), tmp_path, ["newsletter"])

    assert answer["tables"]["newsletter_subscriptions"]["consent withdrawn"] == 1
    assert present(engine, mine)["newsletter_subscriptions"] == []
    # The neighbour's subscription still in force (their withdrawn one went with the rule, as it should).
    assert scalar(engine, "SELECT COUNT(*) FROM newsletter_subscriptions WHERE withdrawn_at IS NULL") == 1


def test_a_restriction_holds_the_nightly_rules_until_lifted(engine, tmp_path):
    mine = seed(engine)
    logs = mine["connection_logs"]
    later = utc(2027, 6, 1)  # every connection log of 2026 is then a year old

    opened = ask(engine, tmp_path, kind="restriction", run_id="manual__restrict")
    again = ask(engine, tmp_path, kind="restriction", run_id="manual__restrict_again")
    run_rules(engine, later, tmp_path, ["connection-logs"], run_id="nightly_1")
    held = present(engine, {"connection_logs": logs})
    lifted = ask(engine, tmp_path, kind="lift_restriction", run_id="manual__lift")
    lift_again = ask(engine, tmp_path, kind="lift_restriction", run_id="manual__lift_again")
    run_rules(engine, later, tmp_path, ["connection-logs"], run_id="nightly_2")

    assert opened["tables"]["rights_requests"]["restriction opened"] == 1
    assert again["tables"]["rights_requests"]["restriction opened"] == 0
    assert "already in force" in again["reason"]
    assert held == {"connection_logs": logs}
    assert lifted["tables"]["rights_requests"]["restrictions lifted"] == 1
    assert (lift_again["outcome"], lift_again["reason"]) == (
        NOTHING_FOUND,
        "no restriction in force for this address; nothing changed",
    )
    assert present(engine, {"connection_logs": logs}) == {"connection_logs": []}


def test_an_address_with_no_records_is_answered_with_nothing_found(engine, tmp_path):
    seed(engine)

    answer = ask(engine, tmp_path, kind="erasure", dry_run=False, email="nobody@canary-mail.example")

    assert answer["outcome"] == NOTHING_FOUND


REFUSALS = {
    "malformed email": ({"email": "zebulon.quintessenza@nowhere", "kind": "access"}, "not an email address"),
    "missing email": ({"email": "  ", "kind": "access"}, "email: missing"),
    "unknown kind": ({"email": TYPED, "kind": "forget-me"}, "kind: not one of"),
    "dry_run not a flag": ({"email": TYPED, "kind": "erasure", "dry_run": "no"}, "dry_run: true or false"),
}


@pytest.mark.parametrize("params, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_malformed_request_is_refused_without_naming_the_address(params, message):
    with pytest.raises(RequestRefused, match=message) as refused:
        SubjectRequest.from_params(params)
    no_personal_data(str(refused.value))


def test_a_request_row_of_another_address_or_kind_is_refused_before_any_work(engine, tmp_path):
    mine = seed(engine)
    theirs = scalar(engine, "SELECT MAX(id) FROM rights_requests")
    before = fingerprint(engine)

    for request_id, message in ((theirs, "another address"), (mine["rights_requests"][0], "of kind 'erasure'")):
        with pytest.raises(RequestRefused, match=message):
            ask(engine, tmp_path, kind="objection", request_id=request_id)
    with pytest.raises(RequestRefused, match="no such"):
        ask(engine, tmp_path, kind="erasure", dry_run=False, request_id=10**9)
    with pytest.raises(SuppressionKeyMissing):
        ask(engine, tmp_path, key=None, kind="erasure", dry_run=False)
    assert fingerprint(engine) == before


def _tables(engine):
    from lifecycle.store import lifecycle_tables

    return lifecycle_tables(engine)


def _recorded(engine, run_id: str = "manual__subject") -> dict:
    requests = _tables(engine).subject_requests
    with engine.connect() as connection:
        return dict(connection.execute(select(requests).where(requests.c.run_id == run_id)).mappings().one())


def _audit_trail(engine) -> list[dict]:
    trail = _tables(engine).audit_trail
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(select(trail)).mappings()]
