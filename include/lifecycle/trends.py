"""The report over time, for the DPO: per DAG its last N reported runs, per rule a chart of what was
due, erased, archived, held and invalid (and emailed, purged) on each run's as-of, the numbers
under it, and the policy versions the runs applied, a change between two runs flagged. One
self-contained HTML page: hand-written inline SVG, no script, no external asset.

    python -m lifecycle.trends [--db-url URL] [--runs 30] [--dag DAG_ID] --out FILE.html

URL is the application database holding the pipeline's tables (`--database-url` is the same);
by default the Airflow connection smice_app given in the environment (AIRFLOW_CONN_SMICE_APP), else
the demo's SQLite file, data/smice_demo.db (under LIFECYCLE_DATA_DIR when set).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, time
from html import escape
from pathlib import Path

from sqlalchemy import Engine, func, inspect, make_url, select

from lifecycle.app_database import environment_database_url
from lifecycle.report_html import NONE, html_page, number_cell, text
from lifecycle.run import now_utc_naive
from lifecycle.store import lifecycle_tables, make_engine

DEFAULT_RUNS = 30
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
SERIES_COLOURS = {
    "due": "#0072B2",
    "erased": "#009E73",
    "archived": "#56B4E9",
    "held": "#E69F00",
    "invalid": "#D55E00",
    "purged": "#5f5f5f",
    "emailed": "#CC79A7",
}
ALWAYS_CHARTED = ("due", "erased", "archived", "held", "invalid")
CHARTED_WHERE_ANY = ("purged", "emailed")
TABLE_KEYS = (
    "due",
    "erased",
    "erased_with_bundle",
    "archived",
    "pseudonymised",
    "held",
    "invalid",
    "purged",
    "notices_due",
    "emailed",
    "undeliverable",
    "deferred",
    "unsettled",
    "responded",
    "notices_open",
)
WIDTH, HEIGHT = 1100, 250
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 38, 46
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
WIDEST_BAR = 18
CHAR_WIDTH = 6.6  # of the 11 px axis labels, to keep the as-of labels from overlapping

TRENDS_CSS = """
nav ul { margin: 6px 0 0; padding-left: 18px; columns: 2; }
section.dag { margin-top: 28px; }
section.rule { margin: 18px 0 26px; }
section.rule h3 { font-size: 15px; margin-bottom: 2px; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #57606a; }
svg.chart .axis-title { font-size: 12px; fill: #1f2328; }
table.numbers { width: auto; font-size: 12.5px; }
table.numbers th, table.numbers td { padding: 3px 10px; }
table.numbers tbody th { font-weight: 500; color: var(--muted); white-space: nowrap; }
col.policy-change { border-left: 2px dashed #c98a00; }
.flag.policy-change { margin: 6px 0; padding: 8px 12px; border-radius: 6px; background: var(--amber-bg);
  color: var(--amber); border: 1px solid #e8c26a; font-weight: 600; }
p.empty { margin: 24px 0; padding: 16px; background: var(--soft); border-radius: 6px; }
"""


@dataclass(frozen=True)
class ReportedRun:
    run_id: str
    as_of: datetime
    policy_version: str
    rules: dict[str, dict]

    @property
    def label(self) -> str:
        return f"{self.as_of:%Y-%m-%d}" if self.as_of.time() == time() else f"{self.as_of:%Y-%m-%d %H:%M}"


def render_trends(
    engine: Engine, runs: int = DEFAULT_RUNS, dag_id: str | None = None, dag_ids: Collection[str] | None = None
) -> str:
    """The page of one DAG (`dag_id`), of some (`dag_ids`: those a user of the UI may read), else of every DAG."""
    history = reported_runs(engine, runs, [dag_id] if dag_id else dag_ids)
    which = f"DAG {dag_id}" if dag_id else "each DAG"
    header = (
        "<h1>Retention over time</h1>"
        f'<p class="muted">The last {runs} reported runs of {escape(which)}, by as-of; '
        f"generated {now_utc_naive():%Y-%m-%d %H:%M} UTC.</p>"
    )
    if not history:
        body = f'{header}<p class="empty">No reported runs of {escape(which)} yet.</p>'
    else:
        body = header + _contents(history) + "".join(_dag_section(dag, dag_runs) for dag, dag_runs in history.items())
    return html_page("Retention over time", body, TRENDS_CSS)


def reported_runs(engine: Engine, runs: int, dag_ids: Collection[str] | None = None) -> dict[str, list[ReportedRun]]:
    """The last `runs` reported runs of each DAG (of `dag_ids` only, when given), oldest first. A run has
    a summary once reported."""
    table = lifecycle_tables(engine).runs
    if not inspect(engine).has_table(table.name, schema=table.schema):
        return {}
    newest_first = (table.c.as_of.desc(), table.c.run_id.desc())
    recency = func.row_number().over(partition_by=table.c.dag_id, order_by=newest_first)
    ranked = select(
        table.c.dag_id, table.c.run_id, table.c.as_of, table.c.policy_version, table.c.summary, recency.label("recency")
    ).where(table.c.summary.is_not(None))
    if dag_ids is not None:
        ranked = ranked.where(table.c.dag_id.in_(dag_ids))
    ranked = ranked.subquery()
    query = select(ranked).where(ranked.c.recency <= runs).order_by(ranked.c.dag_id, ranked.c.as_of, ranked.c.run_id)
    history: dict[str, list[ReportedRun]] = {}
    with engine.connect() as connection:
        for row in connection.execute(query).mappings():
            history.setdefault(row["dag_id"], []).append(_reported_run(row))
    return history


def _reported_run(row) -> ReportedRun:
    summary = json.loads(row["summary"]) or {}
    return ReportedRun(
        run_id=row["run_id"],
        as_of=row["as_of"],
        policy_version=row["policy_version"],
        rules=summary.get("rules") or {},
    )


def _contents(history: dict[str, list[ReportedRun]]) -> str:
    links = "".join(f'<li><a href="#{_anchor(dag)}"><code>{text(dag)}</code></a></li>' for dag in history)
    return f"<nav><ul>{links}</ul></nav>"


def _anchor(dag_id: str) -> str:
    return escape(f"dag-{dag_id}")


def _dag_section(dag_id: str, runs: list[ReportedRun]) -> str:
    changes = [i for i in range(1, len(runs)) if runs[i].policy_version != runs[i - 1].policy_version]
    rules = dict.fromkeys(rule for run in runs for rule in run.rules)
    return (
        f'<section class="dag" id="{_anchor(dag_id)}"><h2><code>{text(dag_id)}</code></h2>'
        f'<p class="muted">{len(runs)} run(s), as-of {runs[0].label} to {runs[-1].label}</p>'
        f"{_policy_versions(runs, changes)}"
        + "".join(_rule_section(dag_id, rule, runs, changes) for rule in rules)
        + "</section>"
    )


def _policy_versions(runs: list[ReportedRun], changes: list[int]) -> str:
    bounds = [0, *changes, len(runs)]
    items = "".join(
        f"<li><code>{text(runs[start].policy_version[:16])}</code>: {end - start} run(s), "
        f"as-of {runs[start].label} to {runs[end - 1].label}</li>"
        for start, end in zip(bounds, bounds[1:])
    )
    flags = "".join(
        f'<p class="flag policy-change">Policy changed between the runs of {runs[i - 1].label} and {runs[i].label}: '
        f"<code>{text(runs[i - 1].policy_version[:16])}</code> → <code>{text(runs[i].policy_version[:16])}</code></p>"
        for i in changes
    )
    return f"<p>Policy versions applied:</p><ul>{items}</ul>{flags}"


def _rule_section(dag_id: str, rule: str, runs: list[ReportedRun], changes: list[int]) -> str:
    counts = [run.rules.get(rule) for run in runs]  # None: the rule was not in that run's policy
    return (
        f'<section class="rule"><h3><code>{text(rule)}</code></h3>'
        f"{_chart(dag_id, rule, runs, counts, changes)}{_numbers(runs, counts, changes)}</section>"
    )


def _charted_series(counts: list[dict | None]) -> list[str]:
    return [*ALWAYS_CHARTED, *(name for name in CHARTED_WHERE_ANY if any(c and c.get(name) for c in counts))]


def _chart(dag_id: str, rule: str, runs: list[ReportedRun], counts: list[dict | None], changes: list[int]) -> str:
    series = _charted_series(counts)
    peak = max((c.get(name) or 0 for c in counts if c for name in series), default=0)
    step, top = _y_scale(peak)
    group = PLOT_WIDTH / len(runs)
    parts = [
        f'<svg class="chart" data-dag="{escape(dag_id)}" data-rule="{escape(rule)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(rule)}: records per run" xmlns="http://www.w3.org/2000/svg">',
        _y_axis(step, top),
        _x_axis(runs, group),
        _legend(series),
        *(_bars(run, c, i * group, group, series, top) for i, (run, c) in enumerate(zip(runs, counts)) if c),
        *(_policy_change_line(LEFT + i * group) for i in changes),
        "</svg>",
    ]
    return "".join(parts)


def _y_scale(peak: int) -> tuple[int, int]:
    """A round tick step (1, 2 or 5 times a power of ten) giving about four ticks, and the axis top."""
    rough = max(peak, 1) / 4
    magnitude = 10 ** max(0, math.floor(math.log10(rough)))
    step = next(factor * magnitude for factor in (1, 2, 5, 10) if factor * magnitude >= rough)
    return step, step * max(1, math.ceil(peak / step))


def _y(value: float, top: int) -> float:
    return TOP + PLOT_HEIGHT - value / top * PLOT_HEIGHT


def _y_axis(step: int, top: int) -> str:
    ticks = "".join(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_y(v, top):.1f}" y2="{_y(v, top):.1f}" stroke="#eaeef2"/>'
        f'<text x="{LEFT - 8}" y="{_y(v, top) + 4:.1f}" text-anchor="end">{v}</text>'
        for v in range(0, top + 1, step)
    )
    middle = TOP + PLOT_HEIGHT / 2
    title = (
        f'<text class="axis-title" x="16" y="{middle:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle:.1f})">records</text>'
    )
    return ticks + title


def _x_axis(runs: list[ReportedRun], group: float) -> str:
    baseline = TOP + PLOT_HEIGHT
    label_width = CHAR_WIDTH * max(len(run.label) for run in runs) + 12
    every = max(1, math.ceil(len(runs) / max(1, int(PLOT_WIDTH // label_width))))
    labels = "".join(
        f'<text x="{LEFT + (i + 0.5) * group:.1f}" y="{baseline + 16}" text-anchor="middle">{run.label}</text>'
        for i, run in enumerate(runs)
        if i % every == 0
    )
    return (
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{baseline}" y2="{baseline}" stroke="#8c959f"/>{labels}'
        f'<text class="axis-title" x="{LEFT + PLOT_WIDTH / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
        "as-of (run date, UTC)</text>"
    )


def _legend(series: list[str]) -> str:
    items, x = [], LEFT
    for name in series:
        items.append(
            f'<rect x="{x}" y="6" width="11" height="11" rx="2" fill="{SERIES_COLOURS[name]}"/>'
            f'<text x="{x + 16}" y="15.5">{name}</text>'
        )
        x += 16 + CHAR_WIDTH * len(name) + 18
    return f'<g class="legend">{"".join(items)}</g>'


def _bars(run: ReportedRun, counts: dict, offset: float, group: float, series: list[str], top: int) -> str:
    slot = min(WIDEST_BAR, group * 0.8 / len(series))
    start = LEFT + offset + (group - slot * len(series)) / 2
    bars = []
    for index, name in enumerate(series):
        value = counts.get(name) or 0
        y = _y(value, top)
        bars.append(
            f'<rect class="bar" data-series="{name}" x="{start + index * slot:.1f}" y="{y:.1f}" '
            f'width="{slot * 0.85:.1f}" height="{TOP + PLOT_HEIGHT - y:.1f}" fill="{SERIES_COLOURS[name]}">'
            f"<title>{run.label} ({text(run.run_id)}): {name} {text(value)}</title></rect>"
        )
    return "".join(bars)


def _policy_change_line(x: float) -> str:
    return (
        f'<line class="policy-change" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP - 8}" y2="{TOP + PLOT_HEIGHT}" '
        'stroke="#c98a00" stroke-width="1.5" stroke-dasharray="4 3"/>'
        f'<text x="{x + 4:.1f}" y="{TOP - 2}" style="fill:#8a5a00">policy changed</text>'
    )


def _numbers(runs: list[ReportedRun], counts: list[dict | None], changes: list[int]) -> str:
    keys = [key for key in TABLE_KEYS if any(c and key in c for c in counts)]
    columns = "<col>" + "".join('<col class="policy-change">' if i in changes else "<col>" for i in range(len(runs)))
    head = "<th></th>" + "".join(f'<th class="num" title="{escape(run.run_id)}">{run.label}</th>' for run in runs)
    rows = [
        f"<tr><th>{key.replace('_', ' ')}</th>"
        + "".join(number_cell(c.get(key)) if c else f'<td class="num">{NONE}</td>' for c in counts)
        + "</tr>"
        for key in keys
    ]
    stages = "".join(f'<td class="num">{text((c or {}).get("stage") or "not run")}</td>' for c in counts)
    rows.append(f"<tr><th>last step</th>{stages}</tr>")
    if any(c and c.get("failed_step") for c in counts):
        rows.append(f"<tr><th>failed step</th>{''.join(_failed_cell(c) for c in counts)}</tr>")
    return (
        f'<div class="scroll"><table class="numbers"><colgroup>{columns}</colgroup>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _failed_cell(counts: dict | None) -> str:
    failed_step = (counts or {}).get("failed_step")
    return f'<td class="num failed">{text(failed_step)}</td>' if failed_step else f'<td class="num">{NONE}</td>'


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    url = make_url(args.db_url)
    # Opening a missing SQLite file would create an empty database there.
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        print(f"no SQLite database at {url.database}", file=sys.stderr)
        return 1
    engine = make_engine(args.db_url)
    try:
        page = render_trends(engine, runs=args.runs, dag_id=args.dag)
    finally:
        engine.dispose()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out}")
    return 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--db-url",
        "--database-url",
        default=environment_database_url(),
        help="the application database holding the pipeline's tables (default: the demo's SQLite file)",
    )
    parser.add_argument(
        "--runs", type=_positive, default=DEFAULT_RUNS, help=f"reported runs per DAG (default {DEFAULT_RUNS})"
    )
    parser.add_argument("--dag", help="one DAG only")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    return parser.parse_args(argv)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


if __name__ == "__main__":
    sys.exit(main())
