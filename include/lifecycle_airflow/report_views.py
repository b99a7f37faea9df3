"""The run report in the Airflow UI: the api-server serves each run's report at
/lifecycle/reports/<dag_id>/<run_id> to a user who may read the DAG's runs, and every DAG run gets a
"Run report" tab that shows that page (plugins/lifecycle_reports.py registers both).

Every task process loads the plugins too, so FastAPI and Airflow's API security are imported only
when the api-server first calls the app."""

import html
from pathlib import Path

from lifecycle.report_paths import run_report_dir, safe_run_id

URL_PREFIX = "/lifecycle"
RUN_REPORT_VIEW = {
    "name": "Run report",
    # Relative: the UI resolves it against its <base href>, the api-server's base URL.
    "href": "lifecycle/reports/{DAG_ID}/{RUN_ID}",
    "destination": "dag_run",
    "url_route": "run-report",
}


class ReportNotFound(LookupError):
    pass


class OutsideReports(ValueError):
    pass


def report_page(reports_dir: Path, dag_id: str, run_id: str) -> str:
    """The run's report.html; while it has none, its report.md as preformatted text. `reports_dir`
    is a pathlib.Path or Airflow's ObjectStoragePath (config.reports_dir)."""
    folder = run_folder(reports_dir, dag_id, run_id)
    if (folder / "report.html").is_file():
        return (folder / "report.html").read_text(encoding="utf-8")
    if (folder / "report.md").is_file():
        return _preformatted_page(f"{dag_id} {run_id}", (folder / "report.md").read_text(encoding="utf-8"))
    raise ReportNotFound(f"No report for run {run_id!r} of DAG {dag_id!r}: its report task has not written one yet.")


def run_folder(reports_dir: Path, dag_id: str, run_id: str) -> Path:
    """The run's report folder, exactly two levels below the reports folder: a DAG id is letters,
    digits, '-', '_' and '.', and neither name may climb out of its level."""
    folder_names = (dag_id, safe_run_id(run_id))
    if safe_run_id(dag_id) != dag_id or any(name in ("", ".", "..") for name in folder_names):
        raise OutsideReports("dag_id and run_id must name a run's folder inside the reports folder")
    return run_report_dir(reports_dir, dag_id, run_id)


def _preformatted_page(title: str, text: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f"<body><pre>{html.escape(text)}</pre></body></html>\n"
    )


def create_app():
    """The FastAPI app: a run's report, for a user allowed to read that DAG's runs (the UI's session
    cookie or a bearer token, checked by Airflow's own dependency)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    from lifecycle_airflow import config

    app = FastAPI(title="SMICE lifecycle run reports", docs_url=None, redoc_url=None, openapi_url=None)
    can_read_runs = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))

    @app.get("/reports/{dag_id}/{run_id}", response_class=HTMLResponse, dependencies=[can_read_runs])
    def run_report(dag_id: str, run_id: str) -> HTMLResponse:
        try:
            return HTMLResponse(report_page(config.reports_dir(), dag_id, run_id))
        except ReportNotFound as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except OutsideReports as error:
            raise HTTPException(status_code=400, detail=str(error)) from None

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


REPORTS_APP = {"app": AppOnFirstCall(create_app), "url_prefix": URL_PREFIX, "name": "Lifecycle run reports"}
