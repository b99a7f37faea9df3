"""Run DAGs in-process against the test session's metadata DB and read back what a run left.

Needs the environment that ``airflow_fixtures`` sets up before Airflow is imported, so nothing
here imports Airflow at module level.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from lifecycle_airflow.capture import output_to

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState

PROJECT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = PROJECT / "dags"

# dag.test() logs these around each task it runs (airflow/sdk/definitions/dag.py, _run_task).


def airflow_home_env(home: Path) -> dict[str, str]:
    """The settings of an Airflow home for the project's DAGs and plugins, its metadata DB in SQLite."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(PROJECT / "airflow.cfg"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


# Set while a test answers approvals itself; otherwise run_dag lets any approval time out.
_answering = threading.Event()
_TASK_MARK = re.compile(r"\[DAG TEST\] (starting|end task) task_id=(\S+) map_index=(-?\d+)")


def dag_bag(dags_folder: Path = DAGS_FOLDER) -> DagBag:
    """Parse every DAG file in ``dags_folder``, as the dag-processor does."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=dags_folder, bundle_path=dags_folder)


def run_dag(
    dag_id: str,
    logical_date: datetime | str,
    conf: dict[str, Any] | None = None,
    *,
    dags_folder: Path = DAGS_FOLDER,
    retries: int | None = None,
) -> tuple[DagRunState, DagRun]:
    """Run one DAG run with ``dag.test()`` in this process; keep everything it wrote for run_log().

    A naive ``logical_date`` (or an ISO string like ``"2026-03-01"``) is taken as UTC.
    ``retries`` overrides every task's: dag.test() waits out ``retry_delay`` between tries, so
    ``retries=0`` lets a failing task fail the run at once. An approval the run waits at goes
    unanswered and times out (a rejection), unless the test answers it (answering_approvals).
    """
    bag = dag_bag(dags_folder)
    if dag_id not in bag.dags:
        raise LookupError(f"no DAG {dag_id!r} in {dags_folder}; import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    if retries is not None:
        for task in dag.tasks:
            task.retries = retries
    # dag.test() itself parses the "dags-folder" bundle and writes its DAGs to the metadata DB.
    bundles = [
        {
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(dags_folder)},
        }
    ]
    log_dir = _log_dir(dag_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.NamedTemporaryFile("a", buffering=1, dir=log_dir, suffix=".partial", delete=False) as out,
        mock.patch.dict(os.environ, {"AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles)}),
        output_to(out),
        nullcontext() if _answering.is_set() else answering_approvals(None),
    ):
        dag_run = dag.test(logical_date=_utc(logical_date), run_conf=conf)
    os.replace(out.name, log_dir / f"{dag_run.run_id}.log")
    return dag_run.state, dag_run


def task_states(dag_run: DagRun) -> dict[str, str | None]:
    """Final state of each task instance of the run, by task id (``task[i]`` when mapped)."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(TI.task_id, TI.map_index, TI.state).where(TI.dag_id == dag_run.dag_id, TI.run_id == dag_run.run_id)
    with create_session() as session:
        return {_key(task_id, i): state for task_id, i, state in session.execute(query)}


def xcoms(dag_run: DagRun) -> dict[str, dict[str, Any]]:
    """XCom values the run's tasks pushed: ``{task_id: {key: value}}``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    found: dict[str, dict[str, Any]] = defaultdict(dict)
    with create_session() as session:
        for xcom in session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id)):
            found[_key(xcom.task_id, xcom.map_index)][xcom.key] = XComModel.deserialize_value(xcom)
    return dict(found)


def run_log(dag_run: DagRun) -> str:
    """All the text the run wrote: Airflow's and the tasks' logging, prints and exceptions."""
    return (_log_dir(dag_run.dag_id) / f"{dag_run.run_id}.log").read_text()


def task_logs(dag_run: DagRun) -> dict[str, str]:
    """Each task instance's part of run_log(), by task id (``task[i]`` when mapped)."""
    logs: dict[str, str] = defaultdict(str)
    current = None
    for line in run_log(dag_run).splitlines(keepends=True):
        mark = _TASK_MARK.search(line)
        if mark and mark[1] == "starting":
            current = _key(mark[2], int(mark[3]))
        if current:
            logs[current] += line
        if mark and mark[1] == "end task":
            current = None
    return dict(logs)


@contextmanager
def answering_approvals(answer: str | None, responder: str = "dpo") -> Iterator[list[str]]:
    """While the block runs, answer every approval a run waits at, as an operator would through the
    UI: ``"Approve"`` or ``"Reject"``; with ``None``, nobody answers and the scheduler's timeout sweep
    gives the approval its default once its response timeout has passed. Yields the task ids asked."""
    asked: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()
    _answering.set()

    def answer_until_done() -> None:
        try:
            _answer_until(done, answer, responder, asked)
        except BaseException as error:  # reraised in the test's thread below
            errors.append(error)

    worker = threading.Thread(target=answer_until_done, daemon=True)
    worker.start()
    try:
        yield asked
    finally:
        done.set()
        worker.join()
        _answering.clear()
    if errors:
        raise errors[0]


def _answer_until(done: threading.Event, answer: str | None, responder: str, asked: list[str]) -> None:
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload

    scheduler = SchedulerJobRunner(job=Job()) if answer is None else None
    while not done.wait(0.5):
        with create_session() as session:
            waiting = select(TI).where(TI.state == TaskInstanceState.AWAITING_INPUT).options(joinedload(TI.hitl_detail))
            for ti in session.scalars(waiting).unique().all():
                if ti.task_id not in asked:
                    asked.append(ti.task_id)
                if answer is not None:
                    _respond(session, ti, answer, responder)
        if scheduler is not None:
            scheduler.check_awaiting_input_timeouts()


def _respond(session, ti, answer: str, responder: str) -> None:
    """What the api-server does on an answer in the UI (core_api/routes/public/hitl.py)."""
    from airflow.models.trigger import handle_event_submit
    from airflow.sdk.timezone import utcnow
    from airflow.triggers.base import TriggerEvent

    detail = ti.hitl_detail
    detail.responded_by = {"id": responder, "name": responder}
    detail.responded_at = utcnow()
    detail.chosen_options = [answer]
    detail.params_input = {}
    handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)


def airflow_cli(*args: str, dags_folder: Path = DAGS_FOLDER) -> subprocess.CompletedProcess[str]:
    """Run ``airflow *args`` in a subprocess with this session's environment, output captured."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args],
        env={**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _log_dir(dag_id: str) -> Path:
    from airflow.configuration import conf

    return Path(conf.get("logging", "base_log_folder"), "dag_test", f"dag_id={dag_id}")


def _key(task_id: str, map_index: int) -> str:
    return task_id if map_index < 0 else f"{task_id}[{map_index}]"


def _utc(value: datetime | str) -> datetime:
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
