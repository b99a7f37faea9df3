"""Holds, invalid records, bundles, gates, reruns, backfills and crashes, on three databases."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import insert, text

from lifecycle.appschema import create_app_schema
from lifecycle.erasing import ErasureRefused
from lifecycle.expectations import GateFailed
from lifecycle.holds import place_hold
from lifecycle.pipeline import APPROVE, ARCHIVE, ERASE, GATE, SELECT, VERIFY_ARCHIVE, run_step
from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine
from lifecycle.stores import ArchiveError
from tests.lifecycle_helpers import POLICY, add, exists, make_run, run_rules, scalar, utc

AS_OF = utc(2026, 11, 25)


def lifecycle(engine, name: str) -> str:
    return f"lifecycle.{name}" if engine.dialect.name == "postgresql" else f"lifecycle_{name}"


def closed_smicer_with_bundle(engine, email="closed@example.org", closed_at=datetime(2025, 6, 1)) -> dict:
    smicer = add(
        engine,
        "smicers",
        email=email,
        created_at=datetime(2020, 1, 1),
        last_login_at=datetime(2025, 5, 1),
        closed_at=closed_at,
    )
    return {
        "smicer": smicer,
        "logs": [add(engine, "connection_logs", smicer_id=smicer, connected_at=datetime(2025, 5, d)) for d in (1, 2)],
        "events": [add(engine, "browsing_events", smicer_id=smicer, occurred_at=datetime(2025, 5, 3))],
        "applications": [
            add(
                engine,
                "test_applications",
                smicer_id=smicer,
                test_date=date(2024, 1, 1),
                decision="accepted",
                decided_at=datetime(2024, 1, 5),
            )
        ],
        "missions": [
            add(engine, "missions", smicer_id=smicer, client_id=add(engine, "clients"), visited_at=datetime(2025, 4, 1))
        ],
    }


def test_a_closed_smicers_bundle_is_archived_and_erased_together_missions_pseudonymised(engine, tmp_path):
    bundle = closed_smicer_with_bundle(engine)
    summary = run_rules(engine, AS_OF, tmp_path, ["account-closed"])

    outcome = summary["rules"]["account-closed"]
    assert (outcome["due"], outcome["archived"], outcome["pseudonymised"]) == (1, 5, 1)
    assert not exists(engine, "smicers", bundle["smicer"])
    for table in ("connection_logs", "browsing_events", "test_applications"):
        assert scalar(engine, f"SELECT COUNT(*) FROM {table} WHERE smicer_id = :s", s=bundle["smicer"]) == 0
    mission = bundle["missions"][0]
    assert exists(engine, "missions", mission)
    assert scalar(engine, "SELECT smicer_id FROM missions WHERE id = :m", m=mission) is None

    archived = archived_rows(tmp_path / "archive")
    assert sorted(archived["smicers"]) == [bundle["smicer"]]
    assert sorted(archived["connection_logs"]) == bundle["logs"]
    assert sorted(archived["test_applications"]) == bundle["applications"]
    manifests = list((tmp_path / "archive").rglob("manifest.json"))
    assert {json.loads(m.read_text())["retain_until"] for m in manifests} == {"2030-06-01"}
    actions = scalar(engine, f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')} WHERE action = 'erased'")
    assert actions == 1 + 2 + 1 + 1


def archived_rows(archive: Path) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for manifest_path in archive.rglob("manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        for part in manifest["files"]:
            keys = pq.read_table(archive / part["key"], columns=[manifest["key_column"]]).column(0).to_pylist()
            rows.setdefault(manifest["table"], []).extend(keys)
    return rows


def test_an_open_restriction_holds_the_bundle_and_every_record_of_the_email(engine, tmp_path):
    bundle = closed_smicer_with_bundle(engine, email="alice.held@example.org")
    prospect = add(engine, "prospects", email="ALICE.held@Example.org", created_at=datetime(2019, 1, 1))
    add(engine, "rights_requests", email="  Alice.Held@EXAMPLE.ORG ", kind="restriction", status="open")

    summary = run_rules(engine, AS_OF, tmp_path, ["account-closed", "connection-logs", "prospects"])

    assert exists(engine, "smicers", bundle["smicer"]) and exists(engine, "prospects", prospect)
    assert all(exists(engine, "connection_logs", log) for log in bundle["logs"])
    assert summary["rules"]["account-closed"]["held"] == 1
    assert summary["rules"]["connection-logs"]["held"] == 2
    assert summary["rules"]["prospects"]["held"] == 1
    assert not (tmp_path / "archive").exists() or not list((tmp_path / "archive").rglob("*.parquet"))


def test_lifting_the_restriction_lets_the_rule_act_on_the_next_run(engine, tmp_path):
    bundle = closed_smicer_with_bundle(engine, email="bob@example.org")
    request = add(engine, "rights_requests", email="bob@example.org", kind="restriction", status="open")
    run_rules(engine, AS_OF, tmp_path, ["account-closed"], run_id="first")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE rights_requests SET status = 'done' WHERE id = {int(request)}")
    run_rules(engine, AS_OF, tmp_path, ["account-closed"], run_id="second")
    assert not exists(engine, "smicers", bundle["smicer"])


def test_invalid_records_are_skipped_and_named_by_table_and_key(engine, tmp_path):
    future_log = add(engine, "connection_logs", smicer_id=add(engine, "smicers"), connected_at=datetime(2027, 1, 1))
    closed_before_created = add(engine, "smicers", created_at=datetime(2024, 1, 1), closed_at=datetime(2023, 1, 1))
    undecided = add(
        engine,
        "test_applications",
        smicer_id=add(engine, "smicers"),
        decision="accepted",
        decided_at=None,
        test_date=date(2026, 1, 1),
    )

    summary = run_rules(engine, AS_OF, tmp_path, ["connection-logs", "account-closed", "applications-accepted"])

    for rule, table, key in (
        ("connection-logs", "connection_logs", future_log),
        ("account-closed", "smicers", closed_before_created),
        ("applications-accepted", "test_applications", undecided),
    ):
        assert summary["rules"][rule]["invalid"] == 1
        assert exists(engine, table, key)
    report = json.loads(Path(summary["report"]).with_suffix(".json").read_text())
    named = {(r["table"], r["key"]) for o in report["rules"] for r in o["invalid_records"]}
    assert named == {
        ("connection_logs", future_log),
        ("smicers", closed_before_created),
        ("test_applications", undecided),
    }


def test_above_the_volume_ceiling_nothing_is_erased_without_approval(engine, tmp_path):
    smicer = add(engine, "smicers")
    logs = [add(engine, "connection_logs", smicer_id=smicer, connected_at=datetime(2024, 1, 1)) for _ in range(60)]
    logs += [add(engine, "connection_logs", smicer_id=smicer, connected_at=datetime(2026, 11, 1)) for _ in range(40)]

    with pytest.raises(GateFailed) as failure:
        run_rules(engine, AS_OF, tmp_path, ["connection-logs"])

    assert str(failure.value) == (
        "gate connection-logs/volume failed: at most 50 candidates without approval (volume ceiling): "
        "observed_value=60, element_count=100"
    )
    assert scalar(engine, "SELECT COUNT(*) FROM connection_logs") == 100
    approved = run_rules(engine, AS_OF, tmp_path, ["connection-logs"], run_id="approved", volume_approved=True)
    assert approved["rules"]["connection-logs"]["erased"] == 60


def test_the_same_date_run_twice_changes_nothing_the_second_time(engine, tmp_path):
    closed_smicer_with_bundle(engine)
    add(engine, "prospects", created_at=datetime(2019, 1, 1))
    rules = ["account-closed", "prospects"]
    run_rules(engine, AS_OF, tmp_path, rules, run_id="first")
    audit_before = scalar(engine, f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')}")
    files_before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "archive").rglob("*"))

    second = run_rules(engine, AS_OF, tmp_path, rules, run_id="second")

    assert all(second["rules"][rule]["due"] == 0 for rule in rules)
    assert scalar(engine, f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')}") == audit_before
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "archive").rglob("*")) == files_before


def test_a_backfill_leaves_records_with_later_activity_alone(engine, tmp_path):
    smicer = add(engine, "smicers", created_at=datetime(2020, 1, 1), closed_at=datetime(2026, 1, 1))
    add(engine, "connection_logs", smicer_id=smicer, connected_at=datetime(2026, 6, 1))
    prospect = add(engine, "prospects", created_at=datetime(2020, 1, 1), last_contact_at=datetime(2026, 5, 1))

    summary = run_rules(engine, utc(2026, 3, 1), tmp_path, ["account-closed", "prospects"])

    assert exists(engine, "smicers", smicer) and exists(engine, "prospects", prospect)
    assert summary["rules"]["account-closed"]["invalid"] == 1
    assert summary["rules"]["prospects"]["invalid"] == 1


def test_records_changed_after_the_select_step_are_left_in_place_and_the_others_erased(engine, tmp_path):
    # One smicer each: a hold on a row of a smicer's bundle holds every row of it.
    smicers = [add(engine, "smicers", created_at=datetime(2020, 1, 1)) for _ in range(6)]
    logs = [add(engine, "connection_logs", smicer_id=smicer, connected_at=datetime(2025, 5, 1)) for smicer in smicers]
    deleted, recent, held, *untouched = logs
    run = make_run(engine, AS_OF, tmp_path, run_id="changed-meanwhile")
    rule = POLICY.rule("connection-logs")
    for step in (SELECT, GATE, APPROVE):
        run_step(run, rule, step)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM connection_logs WHERE id = :key"), {"key": deleted})
        connection.execute(
            text("UPDATE connection_logs SET connected_at = :at WHERE id = :key"),
            {"at": datetime(2026, 11, 20), "key": recent},
        )
    place_hold(engine, POLICY, table="connection_logs", key=held, reason="dispute")

    erased = run_step(run, rule, ERASE)

    assert erased["erased"] == len(untouched) == 3
    assert erased["skipped:gone before erasure"] == 1 and erased["skipped:no longer due"] == 2
    assert [exists(engine, "connection_logs", key) for key in logs] == [False, True, True, False, False, False]
    trail = scalar(
        engine,
        f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')} WHERE action = 'erased' AND record_key IN "
        f"({', '.join(map(str, untouched))})",
    )
    assert trail == 3
    assert scalar(engine, f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')} WHERE action = 'erased'") == 3


CRASH_AFTER_ARCHIVE = """
import os, signal, sys
from pathlib import Path
from lifecycle.pipeline import ARCHIVE, GATE, SELECT, VERIFY_ARCHIVE, run_step
from lifecycle.store import make_engine
from tests.lifecycle_helpers import POLICY, make_run, utc
run = make_run(make_engine(sys.argv[1]), utc(2026, 11, 25), Path(sys.argv[2]), run_id="killed")
rule = POLICY.rule("account-closed")
for step in (SELECT, GATE, ARCHIVE, VERIFY_ARCHIVE):
    run_step(run, rule, step)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_between_archive_and_erase_is_completed_by_the_next(engine, db_url, tmp_path):
    bundle = closed_smicer_with_bundle(engine)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_ARCHIVE, db_url, str(tmp_path)],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert exists(engine, "smicers", bundle["smicer"])
    parts_after_crash = _archive_parts(tmp_path)

    summary = run_rules(engine, utc(2026, 11, 26), tmp_path, ["account-closed"], run_id="next")

    assert not exists(engine, "smicers", bundle["smicer"])
    assert summary["rules"]["account-closed"]["archived"] == 0, "the killed run's verified copies are reused"
    assert _archive_parts(tmp_path) == parts_after_crash, "no batch written again"
    erased = scalar(
        engine,
        f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')} WHERE action = 'erased' AND table_name = 'smicers'",
    )
    assert erased == 1
    batches = scalar(
        engine,
        f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')} "
        "WHERE action = 'erased' AND archive_batch IS NOT NULL",
    )
    assert batches == 5, "smicer, 2 logs, 1 event, 1 application: each erased with its archive batch"


def test_an_archive_that_cannot_be_written_stops_the_rule_before_any_erase(engine, tmp_path):
    bundle = closed_smicer_with_bundle(engine)
    (tmp_path / "archive").write_text("a file where the archive folder should be")

    with pytest.raises(ArchiveError, match="cannot write"):
        run_rules(engine, AS_OF, tmp_path, ["account-closed"])

    assert exists(engine, "smicers", bundle["smicer"])
    assert all(exists(engine, "connection_logs", log) for log in bundle["logs"])


def test_a_corrupted_archive_part_fails_verification_and_nothing_is_erased(engine, tmp_path):
    bundle = closed_smicer_with_bundle(engine)
    run = make_run(engine, AS_OF, tmp_path)
    rule = POLICY.rule("account-closed")
    for step in (SELECT, GATE, ARCHIVE):
        run_step(run, rule, step)
    part = next((tmp_path / "archive").rglob("*.parquet"))
    part.write_bytes(part.read_bytes()[:-10] + b"corrupted!")

    with pytest.raises(GateFailed, match="account-closed/archive"):
        run_step(run, rule, VERIFY_ARCHIVE)
    with pytest.raises(ErasureRefused, match="no verified archive copy"):
        run_step(run, rule, ERASE)
    assert exists(engine, "smicers", bundle["smicer"])


def test_a_malformed_timestamp_makes_the_record_invalid_not_erased(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    create_app_schema(engine)
    ensure_lifecycle_tables(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO prospects (id, email, created_at, last_contact_at) "
            "VALUES (1, 'p@example.org', '2019-01-01 00:00:00', 'last spring')"
        )
    summary = run_rules(engine, AS_OF, tmp_path, ["prospects"])
    assert summary["rules"]["prospects"]["invalid"] == 1
    assert exists(engine, "prospects", 1)


def test_archive_expiry_purges_due_batches_whole_and_keeps_held_and_later_ones(engine, tmp_path):
    for email, closed_at in (
        ("expired@example.org", datetime(2021, 12, 1)),
        ("later@example.org", datetime(2022, 6, 1)),
        ("held@example.org", datetime(2021, 12, 2)),
    ):
        smicer = add(engine, "smicers", email=email, created_at=datetime(2020, 1, 1), closed_at=closed_at)
        add(engine, "connection_logs", smicer_id=smicer, connected_at=datetime(2021, 11, 1))
    run_rules(engine, utc(2022, 7, 1), tmp_path, ["account-closed"], run_id="archived")
    add(engine, "rights_requests", email=" HELD@example.org", kind="restriction", status="open")
    manifest_paths = (tmp_path / "archive").rglob("manifest.json")
    manifests = {json.loads(p.read_text())["retain_until"]: p.parent for p in manifest_paths}
    assert sorted(manifests) == ["2026-12-01", "2026-12-02", "2027-06-01"]

    run_rules(engine, utc(2026, 12, 2), tmp_path, ["archive-expiry"], run_id="expiry")

    remaining = {json.loads(p.read_text())["retain_until"] for p in (tmp_path / "archive").rglob("manifest.json")}
    assert remaining == {"2026-12-02", "2027-06-01"}, "due purged; held and not yet due kept"
    assert not manifests["2026-12-01"].exists()
    purged = scalar(engine, f"SELECT COUNT(*) FROM {lifecycle(engine, 'audit_trail')} WHERE action = 'purged'")
    assert purged == 2, "the smicers and the connection logs batches of 2026-12-01"


def test_a_legal_hold_on_one_row_of_a_bundle_keeps_the_whole_bundle(engine, tmp_path):
    bundle = closed_smicer_with_bundle(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(lifecycle_tables(engine).legal_holds).values(
                table_name="connection_logs",
                record_key=bundle["logs"][0],
                reason="litigation",
                created_at=datetime(2026, 1, 1),
            )
        )
    summary = run_rules(engine, AS_OF, tmp_path, ["account-closed"])
    assert exists(engine, "smicers", bundle["smicer"])
    assert all(exists(engine, "connection_logs", log) for log in bundle["logs"])
    assert summary["rules"]["account-closed"]["erased"] == 0


def test_a_bundle_row_without_a_verified_copy_keeps_the_whole_bundle(engine, tmp_path):
    bundle = closed_smicer_with_bundle(engine)
    run = make_run(engine, utc(2026, 11, 25), tmp_path, run_id="late-row")
    rule = POLICY.rule("account-closed")
    for step in (SELECT, GATE, ARCHIVE, VERIFY_ARCHIVE):
        run_step(run, rule, step)
    # A row of the bundle that appeared after the archive step, dated before as-of: it has no copy.
    late = add(engine, "connection_logs", smicer_id=bundle["smicer"], connected_at=datetime(2025, 5, 4))

    with pytest.raises(ErasureRefused, match="archive not verified"):
        run_step(run, rule, ERASE)

    assert exists(engine, "smicers", bundle["smicer"]) and exists(engine, "connection_logs", late)
    assert all(exists(engine, "connection_logs", log) for log in bundle["logs"])


def _archive_parts(tmp_path: Path) -> list[Path]:
    """The archive batches' parts (the erasure ledger beside them aside)."""
    archive = tmp_path / "archive"
    return sorted(part for part in archive.rglob("*.parquet") if not part.is_relative_to(archive / "ledger"))
