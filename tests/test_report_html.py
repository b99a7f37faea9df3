"""The run report as an HTML page, and the report over time for the DPO (`python -m lifecycle.trends`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from datetime import datetime

from sqlalchemy import insert

from lifecycle import trends
from lifecycle.report_html import render_html
from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine
from lifecycle.trends import render_trends

HOSTILE = '<script>alert("x")</script>'
DRY_RUN_BANNER = "DRY RUN: nothing was changed"
OLD_POLICY, NEW_POLICY = "a" * 64, "b" * 64
SVG_BAR = "{http://www.w3.org/2000/svg}rect[@class='bar']"


def a_report(**top) -> dict:
    hold = {
        "id": 4,
        "kind": "legal hold",
        "table": "smicers",
        "key": 12,
        "digest": "d" * 64,
        "reason": "litigation & <appeal>",
        "until": "2027-01-31",
        "state": "active",
        "email": "zebulon@canary-pii.example",  # must never be shown, even if a report carried it
    }
    rules = [
        {"rule": "connection-logs", "stage": "erase_verified", "due": 88, "erased": 88, "approval": "not needed"},
        {
            "rule": HOSTILE,
            "stage": "gated",
            "due": 3,
            "invalid": 1,
            "failed_step": "erase",
            "approval": "rejected: no answer in time",
            "skipped": {HOSTILE: 2},
            "invalid_records": [{"table": "smicers", "key": 7, "reason": HOSTILE}],
        },
    ]
    report = {
        "dag_id": "retention_account_services",
        "run_id": "manual__2026-03-01",
        "as_of": "2026-03-01T00:00:00+00:00",
        "policy_version": "c" * 64,
        "archive": "file:///srv/archive",
        "dry_run": False,
        "rules": rules,
        "holds": [hold],
    }
    return report | top


# One run's page


def test_every_value_of_the_run_report_is_escaped():
    page = render_html(a_report())

    assert HOSTILE not in page and "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "litigation &amp; &lt;appeal&gt;" in page
    assert "c" * 16 in page and "c" * 17 not in page  # the policy version's first 16 hex


def test_the_dry_run_banner_shows_for_dry_runs_only():
    assert DRY_RUN_BANNER in render_html(a_report(dry_run=True))
    assert DRY_RUN_BANNER not in render_html(a_report(dry_run=False))
    assert DRY_RUN_BANNER not in render_html({key: value for key, value in a_report().items() if key != "dry_run"})


def test_a_failed_step_is_highlighted_in_its_rule_row():
    page = render_html(a_report())

    rows = re.findall(r"<tr[^>]*>.*?</tr>", page.split("<tbody>")[1])
    assert '<tr class="failed-row">' in rows[1] and '<td class="failed">erase</td>' in rows[1]
    assert "failed" not in rows[0]
    assert '<td class="refused">rejected: no answer in time</td>' in rows[1]
    assert "Failed: &lt;script&gt;" in page


def test_holds_are_listed_by_table_key_and_digest_never_by_email():
    page = render_html(a_report())

    assert "Active legal holds" in page and "d" * 16 in page
    assert "@" not in page and "zebulon" not in page
    assert "Active legal holds</h2><p" in render_html(a_report(holds=[]))
    assert "Active legal holds" not in render_html(a_report(holds=None))


def test_a_report_without_the_newer_keys_renders():
    page = render_html({"dag_id": "d", "run_id": "r", "as_of": "2026-03-01", "rules": [{"rule": "newsletter"}]})

    assert "<code>newsletter</code>" in page and "not run" in page and DRY_RUN_BANNER not in page


# The report over time


def add_run(engine, dag_id: str, day: int, rules: dict, *, policy: str = OLD_POLICY, reported: bool = True) -> None:
    as_of = datetime(2026, 3, day)
    summary = {"as_of": f"{as_of:%Y-%m-%d}T00:00:00+00:00", "policy_version": policy, "rules": rules}
    runs = lifecycle_tables(engine).runs
    with engine.begin() as connection:
        connection.execute(
            insert(runs).values(
                dag_id=dag_id,
                run_id=f"scheduled__2026-03-{day:02d}",
                as_of=as_of,
                policy_version=policy,
                started_at=as_of,
                state="reported" if reported else "running",
                summary=json.dumps(summary) if reported else None,
            )
        )


def add_history(engine) -> None:
    """Three reported runs of two DAGs, one still running; the second DAG's gate fails at its second run
    and its policy changes at its last."""
    for day in (1, 2, 3):
        closed = dict(
            due=1000 + day, erased=2000 + day, archived=3000 + day, held=40 + day, invalid=50 + day, emailed=0
        )
        inactive = dict(due=700 + day, emailed=600 + day, undeliverable=day)
        add_run(engine, "retention_alpha", day, {"account-closed": closed, "account-inactive": inactive})
        prospects = {"due": 800 + day, "failed_step": "gate" if day == 2 else None}
        add_run(engine, "retention_beta", day, {"prospects": prospects}, policy=NEW_POLICY if day == 3 else OLD_POLICY)
    add_run(engine, "retention_alpha", 4, {}, reported=False)


def charts(page: str) -> dict[tuple[str, str], ElementTree.Element]:
    """Each rule's chart, parsed as the SVG document it must be."""
    found = re.findall(r'(<svg class="chart" data-dag="([^"]*)" data-rule="([^"]*)".*?</svg>)', page, re.S)
    return {(dag, rule): ElementTree.fromstring(svg) for svg, dag, rule in found}


def bars(chart: ElementTree.Element, series: str) -> int:
    return sum(bar.get("data-series") == series for bar in chart.iterfind(f".//{SVG_BAR}"))


def dag_sections(page: str) -> dict[str, str]:
    return {chunk.split('"', 1)[0]: chunk for chunk in page.split('<section class="dag" id="dag-')[1:]}


def test_the_trends_chart_every_rule_over_its_reported_runs(engine):
    add_history(engine)

    page = render_trends(engine)

    found = charts(page)
    assert set(found) == {
        ("retention_alpha", "account-closed"),
        ("retention_alpha", "account-inactive"),
        ("retention_beta", "prospects"),
    }
    for chart in found.values():
        assert all(bars(chart, series) == 3 for series in ("due", "erased", "archived", "held", "invalid"))
    assert bars(found["retention_alpha", "account-inactive"], "emailed") == 3
    assert bars(found["retention_alpha", "account-closed"], "emailed") == 0
    for number in (1001, 2002, 3003, 43, 51, 603, 702, 801):
        assert f'<td class="num">{number}</td>' in page
    assert "2026-03-04" not in page  # the run still running has no summary yet
    assert '<td class="num failed">gate</td>' in dag_sections(page)["retention_beta"]
    assert "failed step" not in dag_sections(page)["retention_alpha"]


def test_a_change_of_policy_version_between_runs_is_flagged(engine):
    add_history(engine)

    sections = dag_sections(render_trends(engine))

    assert "Policy changed between the runs of 2026-03-02 and 2026-03-03" in sections["retention_beta"]
    assert "policy-change" in sections["retention_beta"]
    assert "policy-change" not in sections["retention_alpha"]


def test_the_trends_keep_the_last_n_runs_of_the_dag_asked_for(engine):
    add_history(engine)

    page = render_trends(engine, runs=2, dag_id="retention_alpha")

    assert {dag for dag, _ in charts(page)} == {"retention_alpha"}
    assert all(bars(chart, "due") == 2 for chart in charts(page).values())
    assert "1003" in page and "1002" in page and "1001" not in page


def test_an_empty_history_gives_a_page_saying_so(engine):
    assert "No reported runs of each DAG yet" in render_trends(engine)
    add_history(engine)
    assert "No reported runs of DAG retention_gamma yet" in render_trends(engine, dag_id="retention_gamma")


def test_a_database_the_pipeline_never_ran_on_has_no_history(sqlite_url):
    engine = make_engine(sqlite_url)
    try:
        assert "No reported runs" in render_trends(engine)
    finally:
        engine.dispose()


def test_the_command_writes_the_page(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    ensure_lifecycle_tables(engine)
    add_history(engine)
    engine.dispose()
    out = tmp_path / "dpo" / "trends.html"

    command = [sys.executable, "-m", "lifecycle.trends", "--database-url", url, "--runs", "2", "--out", str(out)]
    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert finished.returncode == 0, finished.stderr
    page = out.read_text(encoding="utf-8")
    assert len(charts(page)) == 3 and "1001" not in page and "1003" in page


def test_the_command_does_not_create_a_missing_database(tmp_path, capsys):
    missing = tmp_path / "missing.db"

    assert trends.main(["--db-url", f"sqlite:///{missing}", "--out", str(tmp_path / "t.html")]) == 1
    assert not missing.exists() and "no SQLite database" in capsys.readouterr().err
