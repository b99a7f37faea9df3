"""The report of a `subject_request` run (report.json, report.md, report.html, where the run report
view finds them): the answer to the request and, for an erasure, its deletion certificate: run, as-of,
policy version, per table what was exported, erased, pseudonymised, changed or kept and why, the
archive batches. It holds no personal data: the answer never carries the address."""

from __future__ import annotations

import json
from html import escape

from lifecycle.report_html import html_page, number_cell
from lifecycle.run import RunContext

TITLES = {"erasure": "Deletion certificate"}
COLUMNS = (
    "exported",
    "erased",
    "pseudonymised",
    "kept",
    "objection recorded",
    "consent withdrawn",
    "restriction opened",
    "restrictions lifted",
)


def write_report(run: RunContext, answer: dict | None, failed_task: str | None) -> dict:
    """Write the run's report; without an answer, it says at which task the request stopped."""
    report = {"dag_id": run.dag_id, "run_id": run.run_id, "as_of": run.as_of.isoformat()}
    report |= answer or {"outcome": "not carried out", "reason": _stopped(failed_task), "tables": {}}
    folder = run.report_dir()
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")
    return {"outcome": report["outcome"], "report": str(folder / "report.md")}


def _stopped(failed_task: str | None) -> str:
    if failed_task is None:
        return "the request was not carried out"
    if failed_task == "check":
        return "the request was refused at task check (its log says why); nothing was changed"
    return (
        f"the request stopped at task {failed_task} (its log says why); what its rules erased before it "
        "stopped is in the audit trail, and the request stays open until a run carries it out"
    )


def _title(report: dict) -> str:
    kind = report.get("kind")
    return TITLES.get(kind, f"Subject request: {kind}" if kind else "Subject request")


def _facts(report: dict) -> list[tuple[str, str]]:
    facts = [
        ("run", report["run_id"]),
        ("as-of", report["as_of"]),
        ("policy version", (report.get("policy_version") or "")[:16]),
        ("request id", str(report.get("request_id") or "none")),
        ("outcome", report["outcome"]),
    ]
    if report.get("reason"):
        facts.append(("why", report["reason"]))
    if report.get("package"):
        facts.append(("package", report["package"]))
    return facts


def _columns(tables: dict) -> list[str]:
    return [column for column in COLUMNS if any(column in entry for entry in tables.values())]


def _why(entry: dict) -> str:
    return "; ".join(f"{reason}: {count}" for reason, count in (entry.get("why_kept") or {}).items())


def render_markdown(report: dict) -> str:
    lines = [f"# {_title(report)}", ""]
    if report.get("dry_run"):
        lines += ["**Dry run: what the request would do; nothing was changed.**", ""]
    lines += [f"- {name}: {value}" for name, value in _facts(report)]
    tables = report.get("tables") or {}
    if tables:
        columns = _columns(tables)
        lines += ["", "| table | " + " | ".join(columns) + " | why kept |", "|---|" + "---:|" * len(columns) + "---|"]
        for table, entry in tables.items():
            cells = " | ".join(str(entry.get(column, 0)) for column in columns)
            lines.append(f"| {table} | {cells} | {_why(entry)} |")
    for batch in report.get("archive_batches") or []:
        lines.append(f"- archive batch `{batch['key']}`: {batch['rows']} rows, retain until {batch['retain_until']}")
    return "\n".join(lines) + "\n"


def render_html(report: dict) -> str:
    facts = "".join(f"<dt>{escape(name)}</dt><dd>{escape(str(value))}</dd>" for name, value in _facts(report))
    body = [f"<h1>{escape(_title(report))}</h1>"]
    if report.get("dry_run"):
        body.append('<div class="banner dry-run">Dry run: what the request would do; nothing was changed.</div>')
    body.append(f'<dl class="meta">{facts}</dl>')
    tables = report.get("tables") or {}
    if tables:
        columns = _columns(tables)
        head = "".join(f'<th class="num">{escape(column)}</th>' for column in columns)
        rows = "".join(
            f"<tr><td><code>{escape(table)}</code></td>"
            + "".join(number_cell(entry.get(column)) for column in columns)
            + f"<td>{escape(_why(entry))}</td></tr>"
            for table, entry in tables.items()
        )
        body.append(
            f"<table><thead><tr><th>table</th>{head}<th>why kept</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    batches = report.get("archive_batches") or []
    if batches:
        items = "".join(
            f"<li><code>{escape(b['key'])}</code>: {b['rows']} rows, retain until {escape(str(b['retain_until']))}</li>"
            for b in batches
        )
        body.append(f"<h2>Archive batches</h2><ul>{items}</ul>")
    return html_page(_title(report), "".join(body))
