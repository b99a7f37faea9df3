"""The run report page the Airflow UI shows (lifecycle_airflow/report_views.py): which file, escaped,
and never a file outside the reports folder. Served for real, behind Airflow's login, in tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.report_paths import run_report_dir, safe_run_id
from lifecycle_airflow.report_views import OutsideReports, ReportNotFound, report_page

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
