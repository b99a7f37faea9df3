"""Every DAG of CONTRACTS.md parses without import errors, the way Airflow users expect it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from airflow_harness import PROJECT, dag_bag
from lifecycle.pipeline import MODULES

CONTRACT_DAG_IDS = {
    "retention_account_services",
    "retention_customers_prospects",
    "retention_newsletters",
    "retention_information_requests",
    "retention_test_applications",
    "retention_rights_requests",
    "retention_archive_expiry",
}
# Triggered on demand, with parameters from the trigger form.
ON_DEMAND_DAG_IDS = {"archive_restore", "erasure_replay", "legal_holds", "subject_request"}
HEAVY_MODULES = ("great_expectations", "boto3", "botocore", "pyarrow", "pandas", "faker")
# Each step of a rule lives in its module; a DAG file's parse loads none, nor what they share.
STEP_MODULES = (*sorted(set(MODULES.values())), "lifecycle.preview", "lifecycle.decide")


@pytest.fixture(scope="module")
def bag(airflow_home):
    return dag_bag()


def test_no_import_errors_and_every_contract_dag_present(bag):
    assert bag.import_errors == {}
    assert CONTRACT_DAG_IDS | ON_DEMAND_DAG_IDS <= set(bag.dag_ids)


@pytest.mark.parametrize("dag_id", sorted(CONTRACT_DAG_IDS))
def test_dag_is_nightly_documented_tagged_and_retried(bag, dag_id):
    dag = bag.get_dag(dag_id)
    assert dag.tags and "retention" in dag.tags
    assert dag.max_active_runs == 1
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 0 * * *", "UTC")
    assert "Legal basis" in dag.doc_md and "Seed reference" in dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.owner == "data-protection"
    destructive = [t for t in dag.tasks if t.task_id.endswith((".erase", ".purge"))]
    assert all(t.retries >= 2 for t in destructive)


def test_every_rule_has_its_steps_in_order(bag):
    dag = bag.get_dag("retention_account_services")
    chain = ["select", "gate", "approve", "key_ranges", "archive", "verify_archive", "erase", "verify_erase"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert f"account-closed.{upstream}" in dag.get_task(f"account-closed.{downstream}").upstream_task_ids
    assert dag.get_task("account-closed.approve").task_type == "VolumeApproval"
    for shared in ("archive", "erase"):
        assert dag.get_task(f"account-closed.{shared}").is_mapped
    assert not dag.get_task("account-closed.verify_erase").is_mapped
    assert dag.get_task("report").is_teardown
    assert "account-closed.verify_erase" in dag.get_task("account-inactive.select").upstream_task_ids
    assert "account-inactive.verify_erase" in dag.get_task("account-inactive.notify").upstream_task_ids


def test_parsing_imports_no_heavy_sdk_and_no_step_code():
    probe = (
        "import runpy, sys; runpy.run_path('dags/retention_dags.py'); "
        f"print(','.join(m for m in {HEAVY_MODULES + STEP_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
