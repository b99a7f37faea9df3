"""The run report page the Airflow UI shows (lifecycle_airflow/report_views.py): which file, escaped,
never a file outside the reports folder, and for a run without a report a page saying why. Served for
real, behind Airflow's login, in tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_harness import dag_bag
from lifecycle.policy import load_policy
from lifecycle.report_paths import run_report_dir, safe_run_id
from lifecycle.trends import render_trends
from lifecycle_airflow.report_views import (
    OutsideReports,
    ReportNotFound,
    RunStatus,
    missing_report_page,
    report_page,
    report_task_id,
)
from tests.test_report_html import add_history, charts

DAG_ID = "retention_newsletters"
RUN_ID = "manual__2026-11-25T22:25:03.842576+00:00"


def write_report(reports: Path, name: str, text: str) -> None:
    folder = run_report_dir(reports, DAG_ID, RUN_ID)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


def test_a_run_folder_is_named_by_its_run_id_with_unsafe_characters_replaced():
    assert safe_run_id(RUN_ID) == "manual__2026-11-25T22_25_03.842576_00_00"
    assert safe_run_id("scheduled__a/b\\c d") == "scheduled__a_b_c_d"


def test_the_html_report_is_served_as_it_is(tmp_path: Path):
    write_report(tmp_path, "report.md", "# markdown")
    write_report(tmp_path, "report.html", "<h1>Retention run</h1>")

    assert report_page(tmp_path, DAG_ID, RUN_ID) == "<h1>Retention run</h1>"


def test_without_html_the_markdown_report_is_shown_preformatted_and_escaped(tmp_path: Path):
    write_report(tmp_path, "report.md", "# Run\n| rule | <b>due</b> |")

    page = report_page(tmp_path, DAG_ID, RUN_ID)

    assert "<pre># Run\n| rule | &lt;b&gt;due&lt;/b&gt; |</pre>" in page
    assert "<b>" not in page


def test_a_run_without_a_report_is_not_found(tmp_path: Path):
    with pytest.raises(ReportNotFound, match="No report for run"):
        report_page(tmp_path, DAG_ID, RUN_ID)


def test_a_dag_writing_no_report_is_said_so_with_the_runs_state():
    page = missing_report_page("legal_holds", RUN_ID, RunStatus("success", None, None))

    assert "<h1>No run report</h1>" in page
    assert "<code>legal_holds</code> writes no run report" in page
    assert "<dt>run state</dt><dd><code>success</code></dd>" in page
    assert not RunStatus("running", None, None).waiting_for_report


@pytest.mark.parametrize("task_state", [None, "scheduled", "queued", "running", "up_for_retry"])
def test_a_report_task_still_to_run_is_waited_for(task_state: str | None):
    status = RunStatus("running", "report", task_state)

    page = missing_report_page(DAG_ID, RUN_ID, status)

    assert "Its report task <code>report</code> has not run yet" in page
    assert "<dt>run state</dt><dd><code>running</code></dd>" in page
    assert f"<dt>task report</dt><dd><code>{task_state or 'not scheduled yet'}</code></dd>" in page
    assert status.waiting_for_report


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (RunStatus("failed", "report", "failed"), "ended <b>failed</b> without writing the report; its log says why"),
        (RunStatus("failed", "report", "upstream_failed"), "ended <b>upstream_failed</b> without writing the report"),
        (RunStatus("failed", "report", None), "The run ended before its report task <code>report</code> ran"),
        (RunStatus("success", "replay", "success"), "succeeded, but the report is not in the reports location"),
    ],
)
def test_a_report_that_will_not_come_says_why(status: RunStatus, why: str):
    assert why in missing_report_page(DAG_ID, RUN_ID, status)
    assert not status.waiting_for_report


def test_an_unknown_run_and_every_name_are_escaped():
    page = missing_report_page("<dag>", "<run>", None)

    assert "Airflow has no run <code>&lt;run&gt;</code> of DAG <code>&lt;dag&gt;</code>" in page
    assert "<run>" not in page and "<dag>" not in page


def test_each_lifecycle_dag_names_a_report_task_it_has_or_writes_none():
    retention = {purpose.dag_id for purpose in load_policy().purposes}
    writers = {}
    for dag_id, dag in dag_bag().dags.items():
        task_id = report_task_id(dag_id, retention)
        assert task_id is None or task_id in dag.task_ids, dag_id
        writers[dag_id] = task_id

    assert writers == {
        **dict.fromkeys(retention, "report"),
        "subject_request": "report",
        "erasure_replay": "replay",
        "legal_holds": None,
        "archive_restore": None,
    }


@pytest.mark.parametrize(
    ("dag_id", "run_id"),
    [("..", "secrets"), (DAG_ID, ".."), ("..", ".."), ("a/../..", "x"), (".", "reports")],
)
def test_names_that_leave_the_reports_folder_are_refused(tmp_path: Path, dag_id: str, run_id: str):
    reports = tmp_path / "reports"
    reports.mkdir()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "report.md").write_text("outside")

    with pytest.raises(OutsideReports):
        report_page(reports, dag_id, run_id)


def test_a_run_id_with_slashes_stays_inside_its_dag_folder(tmp_path: Path):
    with pytest.raises(ReportNotFound):
        report_page(tmp_path, DAG_ID, "../../secrets")


def test_the_trends_page_shows_only_the_dags_asked_for(sqlite_engine):
    """The UI's trends page asks for the retention DAGs the user may read."""
    add_history(sqlite_engine)

    assert {dag for dag, _ in charts(render_trends(sqlite_engine, dag_ids=["retention_beta"]))} == {"retention_beta"}
    assert "No reported runs of each DAG yet" in render_trends(sqlite_engine, dag_ids=[])
