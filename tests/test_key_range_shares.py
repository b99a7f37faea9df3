"""A rule's archive and erase steps shared by key range (lifecycle.select.KeyRange), as the mapped
tasks of a large rule share them: the ranges cover every due record once, and the shares, done in
any order and done again, leave one rule's work in one run: every due record erased once, with its
verified copy, one audit event each, and the erasure ledger naming each erasure."""

from __future__ import annotations

from itertools import pairwise

from sqlalchemy import func, select

from lifecycle.ledger import read_ledger
from lifecycle.pipeline import APPROVE, ARCHIVE, ERASE, GATE, SELECT, VERIFY_ARCHIVE, VERIFY_ERASE, run_step
from lifecycle.reporting import finish_run, start_run
from lifecycle.select import DUE, Selection
from lifecycle.stores import open_archive_store
from tests.lifecycle_helpers import POLICY, exists, make_run, scalar
from tests.test_retention_safety import AS_OF, closed_smicer_with_bundle, lifecycle

RULE = POLICY.rule("account-closed")


def selected_run(engine, tmp_path, smicers: int):
    bundles = [closed_smicer_with_bundle(engine, email=f"closed{i}@example.org") for i in range(smicers)]
    run = make_run(engine, AS_OF, tmp_path)
    start_run(run)
    for step in (SELECT, GATE, APPROVE):
        run_step(run, RULE, step)
    return run, bundles


def test_the_shares_cover_every_due_record_once_at_most_rows_each(engine, tmp_path):
    run, bundles = selected_run(engine, tmp_path, smicers=5)
    selection = Selection.of(run, RULE)

    shares = selection.task_ranges(2)

    assert len(shares) == 3
    assert shares[0].key_from is None and shares[-1].key_to is None
    assert all(low.key_to == high.key_from for low, high in pairwise(shares))
    candidates = run.tables.candidates
    with engine.connect() as connection:
        due_in = [
            connection.execute(
                select(func.count()).where(
                    candidates.c.selection_id == selection.id,
                    candidates.c.decision == DUE,
                    *share.holds(candidates.c.record_key),
                )
            ).scalar_one()
            for share in shares
        ]
    assert due_in == [2, 2, 1]
    assert selection.task_ranges(5) == selection.task_ranges(1_000_000) == [shares[0].__class__()]


def test_shares_done_out_of_order_and_again_do_one_rules_work(engine, tmp_path):
    run, bundles = selected_run(engine, tmp_path, smicers=5)
    shares = Selection.of(run, RULE).task_ranges(2)

    for share in reversed(shares):
        run_step(run, RULE, ARCHIVE, key_range=share)
    run_step(run, RULE, VERIFY_ARCHIVE)
    erased = [run_step(run, RULE, ERASE, key_range=share)["erased"] for share in (shares[1], shares[0], shares[2])]
    again = run_step(run, RULE, ERASE, key_range=shares[1])
    run_step(run, RULE, VERIFY_ERASE)

    assert erased == [2, 2, 1] and again.get("erased", 0) == 0
    assert not any(exists(engine, "smicers", bundle["smicer"]) for bundle in bundles)
    trail = lifecycle(engine, "audit_trail")
    events = f"SELECT COUNT(*) FROM {trail} WHERE action = 'erased'"
    distinct = f"SELECT COUNT(*) FROM (SELECT DISTINCT table_name, record_key FROM {trail} WHERE action = 'erased') x"
    assert scalar(engine, events) == scalar(engine, distinct) == 5 * 5, "smicer, 2 logs, event, application"
    assert scalar(engine, f"{events} AND archive_batch IS NULL") == 0
    batches = lifecycle(engine, "archive_batches")
    assert scalar(engine, f"SELECT COUNT(*) FROM {batches} WHERE verified_at IS NULL") == 0
    tables = 4  # smicers, connection_logs, browsing_events, test_applications
    assert scalar(engine, f"SELECT COUNT(DISTINCT batch_key) FROM {batches}") == len(shares) * tables

    store = open_archive_store(run.archive_uri)
    keys, ledger = read_ledger(store, AS_OF.date().replace(year=2000))
    assert len(keys) == 3, "one ledger object per share"
    pseudonymised = scalar(engine, f"SELECT COUNT(*) FROM {trail} WHERE action = 'pseudonymised'")
    assert ledger.num_rows == 5 * 5 + pseudonymised

    outcome = finish_run(run, [RULE])["rules"]["account-closed"]
    assert outcome["erased"] == 5
