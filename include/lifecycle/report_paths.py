"""Where a run's report is kept: one folder per DAG and run under the reports folder."""

from __future__ import annotations

from pathlib import Path


def safe_run_id(run_id: str) -> str:
    """The run id as a folder name: letters, digits, '-', '_' and '.' kept, any other character '_'."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)


def run_report_dir(reports_dir: Path, dag_id: str, run_id: str) -> Path:
    return reports_dir / dag_id / safe_run_id(run_id)
