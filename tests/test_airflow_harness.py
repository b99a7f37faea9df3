"""The harness itself, on throwaway DAGs written to a temporary dags folder."""

import pytest

from airflow_harness import airflow_cli, dag_bag, run_dag, run_log, task_logs, task_states, xcoms

pytest_plugins = ["airflow_fixtures"]
pytestmark = [pytest.mark.airflow, pytest.mark.usefixtures("airflow_home")]

DAG_FILE = """
import logging
from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task


@dag(
    schedule=CronTriggerTimetable("0 0 * * *", timezone="UTC"),
    params={"dry_run": Param(False, type="boolean")},
    tags=["harness"],
)
def harness_ok():
    @task
    def first():
        logging.getLogger(__name__).info("MARKER-first-logged")
        return {"rows": 3, "batch": "b-1"}

    @task
    def second(counts):
        context = get_current_context()
        print("MARKER-second-printed")
        return {"logical_date": context["logical_date"].isoformat(), "dry_run": context["params"]["dry_run"]}

    second(first())


@dag(schedule=None, default_args={"retries": 2, "retry_delay": timedelta(seconds=1)})
def harness_fails():
    @task
    def boom():
        raise ValueError("MARKER-boom-raised")

    boom()


harness_ok()
harness_fails()
"""


@pytest.fixture(scope="module")
def dags_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dags")
    (folder / "harness_dags.py").write_text(DAG_FILE)
    return folder


def test_dag_bag_parses_the_folder(dags_folder):
    bag = dag_bag(dags_folder)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["harness_fails", "harness_ok"]
    assert type(bag.dags["harness_ok"].timetable).__name__ == "CronTriggerTimetable"


def test_run_dag_success_xcoms_context_and_logs(dags_folder):
    state, dag_run = run_dag("harness_ok", "2026-03-01", {"dry_run": True}, dags_folder=dags_folder)

    assert state == "success"
    assert task_states(dag_run) == {"first": "success", "second": "success"}
    assert xcoms(dag_run) == {
        "first": {"return_value": {"rows": 3, "batch": "b-1"}},
        "second": {"return_value": {"logical_date": "2026-03-01T00:00:00+00:00", "dry_run": True}},
    }
    logs = task_logs(dag_run)
    assert "MARKER-first-logged" in logs["first"]
    assert "MARKER-second-printed" in logs["second"]
    assert "MARKER-first-logged" not in logs["second"]
    assert "MARKER-second-printed" in run_log(dag_run)


def test_run_dag_default_params(dags_folder):
    state, dag_run = run_dag("harness_ok", "2026-03-02", dags_folder=dags_folder)

    assert state == "success"
    assert xcoms(dag_run)["second"]["return_value"]["dry_run"] is False


def test_failing_task_fails_the_run_and_its_error_is_logged(dags_folder):
    state, dag_run = run_dag("harness_fails", "2026-03-01", dags_folder=dags_folder, retries=0)

    assert state == "failed"
    assert task_states(dag_run) == {"boom": "failed"}
    assert "ValueError: MARKER-boom-raised" in task_logs(dag_run)["boom"]
    assert run_log(dag_run).count("[DAG TEST] starting task_id=boom") == 1


def test_failing_task_is_retried_as_its_dag_says(dags_folder):
    state, dag_run = run_dag("harness_fails", "2026-03-01", dags_folder=dags_folder)

    assert state == "failed"
    assert run_log(dag_run).count("[DAG TEST] starting task_id=boom") == 3


@pytest.mark.parametrize(("dag_id", "fails"), [("harness_ok", False), ("harness_fails", True)])
def test_cli_dags_test_exit_code(dags_folder, dag_id, fails):
    result = airflow_cli("dags", "test", dag_id, "2026-03-01", dags_folder=dags_folder)

    assert (result.returncode != 0) == fails, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("MARKER-boom-raised" in result.stdout + result.stderr) == fails
