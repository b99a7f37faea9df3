"""`legal_holds` through Airflow (dag.test): a run places a hold from its conf, another lists it, a
request at fault fails its run with the reason and writes nothing; no address reaches XCom or the
run's log."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from airflow_harness import dag_bag, run_dag, run_log, task_logs, task_states, xcoms
from lifecycle.holds import list_holds
from lifecycle.store import make_engine
from tests.lifecycle_helpers import POLICY

pytestmark = pytest.mark.airflow

CANARY_EMAIL = "Zebulon.Quintessenza@Canary-Mail.example"
CANARY_MARK = "quintessenza"
LOGICAL_DATE = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def application(tmp_path, monkeypatch, airflow_home):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_SMICE_APP", url)
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_the_dag_parses_on_demand_with_its_trigger_form(airflow_home):
    bag = dag_bag()
    assert bag.import_errors == {}
    dag = bag.get_dag("legal_holds")
    assert dag.schedule is None and dag.doc_md.startswith("# Legal holds")
    assert dag.params.get_param("action").schema["enum"] == ["place", "lift", "list"]
    assert dag.params.get_param("table").schema["enum"] == [None, *sorted(POLICY.tables)]
    [task] = dag.tasks
    assert (task.owner, task.retries) == ("data-protection", 2)


def test_a_run_places_a_hold_and_another_lists_it(application):
    request = {"action": "place", "email": CANARY_EMAIL, "reason": "litigation 2026-17", "until": "2099-12-31"}
    placed, placing = run_dag("legal_holds", LOGICAL_DATE, conf=request, retries=0)
    listed, listing = run_dag("legal_holds", LOGICAL_DATE.replace(hour=1), conf={"action": "list"}, retries=0)

    assert (placed, listed) == ("success", "success"), (task_states(placing), task_states(listing))
    assert xcoms(placing)["hold"]["return_value"] == {"placed": 1}
    listing_xcom = xcoms(listing)["hold"]["return_value"]
    assert listing_xcom["count"] == 1
    [row] = listing_xcom["holds"]
    assert (row["kind"], row["state"], row["until"], row["placed_by"]) == (
        "email",
        "active",
        "2099-12-31",
        "dag_test",  # dag.test()'s triggering user
    )
    assert row == list_holds(application)[0]
    for dag_run in (placing, listing):
        seen = json.dumps(xcoms(dag_run)) + run_log(dag_run)
        assert CANARY_MARK not in seen.lower()


def test_a_request_at_fault_fails_the_run_and_writes_nothing(application):
    request = {"action": "place", "email": "zebulon.quintessenza@nowhere", "reason": "litigation 2026-17"}
    state, dag_run = run_dag("legal_holds", LOGICAL_DATE, conf=request, retries=0)

    assert state == "failed"
    assert task_states(dag_run) == {"hold": "failed"}
    assert "the email is not a valid address" in task_logs(dag_run)["hold"]
    assert CANARY_MARK not in run_log(dag_run).lower()
    assert list_holds(application) == []
