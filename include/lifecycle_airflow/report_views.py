"""The lifecycle pages of the Airflow UI, served by the api-server under /lifecycle
(plugins/lifecycle_reports.py registers them):

- /lifecycle/reports/<dag_id>/<run_id>: a run's report, the "Run report" tab of every DAG run; for a
  run without one, a page saying why (its DAG writes none, or its report task has not written it yet);
- /lifecycle/trends: the retention DAGs' reported runs over time (lifecycle.trends), in the menu;
- /lifecycle/policy: the policy's documentation (lifecycle.policy_doc), in the menu.

Every answer is an HTML page, errors included. Every task process loads the plugins too, so FastAPI and
Airflow's API security are imported only when the api-server first calls the app."""

import html
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from lifecycle.report_html import html_page
from lifecycle.report_paths import run_report_dir, safe_run_id

URL_PREFIX = "/lifecycle"
# Relative hrefs: the UI resolves them against its <base href>, the api-server's base URL.
RUN_REPORT_VIEW = {
    "name": "Run report",
    "href": "lifecycle/reports/{DAG_ID}/{RUN_ID}",
    "destination": "dag_run",
    "url_route": "run-report",
}
TRENDS_VIEW = {
    "name": "Retention trends",
    "href": "lifecycle/trends",
    "destination": "nav",
    "url_route": "retention-trends",
}
POLICY_VIEW = {
    "name": "Retention policy",
    "href": "lifecycle/policy",
    "destination": "nav",
    "url_route": "retention-policy",
}
# Airflow's final states of a task instance and of a run (airflow.utils.state).
TASK_ENDED = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})
RUN_ENDED = frozenset({"success", "failed"})
# A page waiting for a run's report reloads itself this often (the HTTP Refresh header).
REFRESH_SECONDS = 10


class ReportNotFound(LookupError):
    pass


class OutsideReports(ValueError):
    pass


@dataclass(frozen=True)
class RunStatus:
    """What Airflow's metadata database says of a run that has no report."""

    state: str
    report_task: str | None  # the task writing its DAG's reports; None: the DAG writes none
    report_task_state: str | None  # None: not scheduled yet

    @property
    def waiting_for_report(self) -> bool:
        return self.report_task is not None and self.report_task_state not in TASK_ENDED and self.state not in RUN_ENDED


def report_page(reports_dir: Path, dag_id: str, run_id: str) -> str:
    """The run's report.html; while it has none, its report.md as preformatted text. `reports_dir`
    is a pathlib.Path or Airflow's ObjectStoragePath (config.reports_dir)."""
    folder = run_folder(reports_dir, dag_id, run_id)
    if (folder / "report.html").is_file():
        return (folder / "report.html").read_text(encoding="utf-8")
    if (folder / "report.md").is_file():
        return _preformatted_page(f"{dag_id} {run_id}", (folder / "report.md").read_text(encoding="utf-8"))
    raise ReportNotFound(f"No report for run {run_id!r} of DAG {dag_id!r}")


def run_folder(reports_dir: Path, dag_id: str, run_id: str) -> Path:
    """The run's report folder, exactly two levels below the reports folder: a DAG id is letters,
    digits, '-', '_' and '.', and neither name may climb out of its level."""
    folder_names = (dag_id, safe_run_id(run_id))
    if safe_run_id(dag_id) != dag_id or any(name in ("", ".", "..") for name in folder_names):
        raise OutsideReports("dag_id and run_id must name a run's folder inside the reports folder")
    return run_report_dir(reports_dir, dag_id, run_id)


def missing_report_page(dag_id: str, run_id: str, status: RunStatus | None) -> str:
    """Why a run has no report, with its state: its DAG writes none, its report task has not run yet
    or ended without one, or Airflow knows no such run."""
    if status is None:
        known = f"Airflow has no run <code>{html.escape(run_id)}</code> of DAG <code>{html.escape(dag_id)}</code>."
        return message_page("No such run", known)
    facts = [("DAG", dag_id), ("run", run_id), ("run state", status.state)]
    if status.report_task:
        facts.append((f"task {status.report_task}", status.report_task_state or "not scheduled yet"))
    return message_page("No run report", _why_no_report(dag_id, status), facts)


def _why_no_report(dag_id: str, status: RunStatus) -> str:
    if status.report_task is None:
        return (
            f"<code>{html.escape(dag_id)}</code> writes no run report: what a run did is in the log and the XCom "
            "of its tasks (a task's <b>Logs</b> and <b>XCom</b> tabs)."
        )
    task = f"<code>{html.escape(status.report_task)}</code>"
    if status.report_task_state == "success":
        return (
            f"Its report task {task} succeeded, but the report is not in the reports location "
            "(variable <code>lifecycle_reports_uri</code>): it was moved or deleted since."
        )
    if status.report_task_state in TASK_ENDED:
        ended = html.escape(status.report_task_state)
        return f"Its report task {task} ended <b>{ended}</b> without writing the report; its log says why."
    if status.state in RUN_ENDED:
        return f"The run ended before its report task {task} ran."
    return (
        f"Its report task {task} has not run yet. This page reloads every {REFRESH_SECONDS} seconds "
        "until the report is there."
    )


def message_page(title: str, message_html: str, facts: list[tuple[str, str]] = ()) -> str:
    """A short page in the reports' style: a title, a message (HTML), and facts as a list (escaped)."""
    rows = "".join(f"<dt>{html.escape(name)}</dt><dd><code>{html.escape(value)}</code></dd>" for name, value in facts)
    listing = f'<dl class="meta">{rows}</dl>' if facts else ""
    return html_page(title, f"<h1>{html.escape(title)}</h1><p>{message_html}</p>{listing}")


def _preformatted_page(title: str, text: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f"<body><pre>{html.escape(text)}</pre></body></html>\n"
    )


def report_task_id(dag_id: str, retention_dag_ids: set[str]) -> str | None:
    """The task writing the reports of a lifecycle DAG's runs; None for a DAG that writes none
    (legal_holds, archive_restore, any DAG not of this project)."""
    from lifecycle_airflow.replay_dag import DAG_ID as REPLAY_DAG_ID
    from lifecycle_airflow.subject_dag import DAG_ID as SUBJECT_DAG_ID

    if dag_id in retention_dag_ids or dag_id == SUBJECT_DAG_ID:
        return "report"
    return "replay" if dag_id == REPLAY_DAG_ID else None


def run_status(session, dag_id: str, run_id: str, report_task: str | None) -> RunStatus | None:
    """The run's state and its report task's, from Airflow's metadata database; None: no such run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    state = session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if state is None:
        return None
    task_state = None
    if report_task:
        task_state = session.scalar(
            select(TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == report_task
            )
        )
    return RunStatus(str(state), report_task, str(task_state) if task_state else None)


def create_app():
    """The FastAPI app. A run's report for a user allowed to read that DAG's runs, the trends of the
    retention DAGs whose runs the user may read, the policy for any user of the UI (the UI's session
    cookie or a bearer token, checked by Airflow's own dependencies)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagAccessEntity, DagDetails
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag, requires_access_view
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from lifecycle_airflow import config, tasks

    app = FastAPI(title="SMICE lifecycle pages", docs_url=None, redoc_url=None, openapi_url=None)
    can_read_runs = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))
    can_use_the_ui = Depends(requires_access_view(AccessView.WEBSITE))

    def policy():
        return tasks._policy(config.policy_path())

    def retention_dag_ids() -> list[str]:
        return [purpose.dag_id for purpose in policy().purposes]

    @app.exception_handler(StarletteHTTPException)
    async def error_page(_request, error: StarletteHTTPException) -> HTMLResponse:
        title = HTTPStatus(error.status_code).phrase
        return HTMLResponse(
            message_page(title, html.escape(str(error.detail))), status_code=error.status_code, headers=error.headers
        )

    @app.get("/reports/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=[can_read_runs])
    def run_report(dag_id: str, run_id: str, session: SessionDep) -> HTMLResponse:
        try:
            return HTMLResponse(report_page(config.reports_dir(), dag_id, run_id))
        except OutsideReports as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        except ReportNotFound:
            status = run_status(session, dag_id, run_id, report_task_id(dag_id, set(retention_dag_ids())))
            refresh = {"Refresh": str(REFRESH_SECONDS)} if status and status.waiting_for_report else None
            return HTMLResponse(missing_report_page(dag_id, run_id, status), status_code=404, headers=refresh)

    @app.get("/trends", response_class=HTMLResponse)
    def retention_trends(user: GetUserDep) -> HTMLResponse:
        from lifecycle.trends import render_trends

        auth = get_auth_manager()
        readable = [
            dag_id
            for dag_id in retention_dag_ids()
            if auth.is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
            )
        ]
        if not readable:
            raise HTTPException(status_code=403, detail="You may not read the runs of any retention DAG.")
        return HTMLResponse(render_trends(tasks._engine(config.app_database_url()), dag_ids=readable))

    @app.get("/policy", response_class=HTMLResponse, dependencies=[can_use_the_ui])
    def policy_documentation() -> HTMLResponse:
        from lifecycle.policy_doc import policy_html

        return HTMLResponse(policy_html(policy()))

    return app


class AppOnFirstCall:
    """An ASGI app that builds the real one when first called."""

    def __init__(self, build):
        self._build = build
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            self._app = self._build()
        await self._app(scope, receive, send)


LIFECYCLE_APP = {"app": AppOnFirstCall(create_app), "url_prefix": URL_PREFIX, "name": "Lifecycle pages"}
