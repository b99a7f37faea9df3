"""The run report as one self-contained HTML page (inline CSS, no script, no external asset): per
rule what was due, held, invalid, archived, erased, pseudonymised, emailed and purged, the approval
and the failed step, then the details, the active legal holds and, for a purpose with answer
deadlines, the open requests. Records are named by table and key only; every value is escaped.

It reads the report dict `reporting.finish_run` writes as report.json and tolerates missing keys.
It does not import `reporting`, so that `reporting` can import it to write report.html."""

from __future__ import annotations

from html import escape

# The columns of a run report, per rule (reporting.py and the demo use them too).
COLUMNS = ("due", "held", "invalid", "archived", "erased", "erased_with_bundle", "pseudonymised", "emailed", "purged")
NOTICE_COLUMNS = ("notices_due", "emailed", "undeliverable", "deferred", "unsettled", "responded", "notices_open")
DIGEST_SHOWN = 16
# lifecycle.deadlines' flags of an open request, each with its CSS class and its count in the report.
FLAGS = {"due soon": ("due-soon", "due_soon"), "overdue": ("overdue", "overdue")}
NONE = "—"

BASE_CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --soft: #f6f8fa;
  --red: #b42318; --red-bg: #fde8e7; --amber: #8a5a00; --amber-bg: #fff4d6; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; color: var(--ink); background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1160px; margin: 0 auto; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 16px 0 6px; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
h1 code, h2 code, h3 code { font-size: 0.95em; }
.muted { color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; font-size: 12.5px; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.zero { color: #afb8c1; }
.banner { margin: 12px 0; padding: 10px 14px; border-radius: 6px; font-weight: 600; }
.banner.dry-run { background: var(--amber-bg); color: var(--amber); border: 1px solid #e8c26a; font-size: 16px; }
.banner .note { font-size: 13px; font-weight: 400; margin-top: 2px; }
.banner.failure { background: var(--red-bg); color: var(--red); border: 1px solid #f1a39d; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
td.failed { background: var(--red-bg); color: var(--red); font-weight: 700; }
"""

RUN_CSS = """
table.rules td { white-space: nowrap; }
table.rules thead th { white-space: normal; vertical-align: bottom; }
tr.failed-row td:first-child { box-shadow: inset 3px 0 0 var(--red); }
td.refused { background: var(--amber-bg); color: var(--amber); font-weight: 600; }
table.details { width: auto; min-width: 360px; }
table.batches td { padding: 2px 8px; font-size: 12.5px; }
td.overdue { background: var(--red-bg); color: var(--red); font-weight: 700; }
td.due-soon { background: var(--amber-bg); color: var(--amber); font-weight: 600; }
"""


def render_html(report: dict) -> str:
    rules = report.get("rules") or []
    body = [
        _header(report, rules),
        "<h2>Rules</h2>",
        _rules_table(rules),
        *(_rule_details(outcome) for outcome in rules),
        _holds(report.get("holds")),
        _answer_deadlines(report.get("answer_deadlines")),
    ]
    title = f"Retention run {report.get('dag_id', '')} · {report.get('run_id', '')}"
    return html_page(title, "".join(body), RUN_CSS)


def html_page(title: str, body: str, css: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{BASE_CSS}{css}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def text(value: object) -> str:
    """A value as escaped HTML text; a missing value as a dash."""
    return NONE if value is None or value == "" else escape(str(value))


def number_cell(value: object) -> str:
    value = value or 0
    return f'<td class="num{" zero" if value == 0 else ""}">{text(value)}</td>'


def _header(report: dict, rules: list[dict]) -> str:
    policy_version = str(report.get("policy_version") or "")[:16]
    parts = [
        f"<h1>Retention run <code>{text(report.get('dag_id'))}</code></h1>",
        f'<p class="muted">run <code>{text(report.get("run_id"))}</code></p>',
    ]
    if report.get("dry_run"):
        parts.append(
            '<div class="banner dry-run">DRY RUN: nothing was changed'
            '<div class="note">The counts are what the run would do.</div></div>'
        )
    failed = [outcome for outcome in rules if outcome.get("failed_step")]
    if failed:
        which = ", ".join(f"{text(o.get('rule'))} at {text(o['failed_step'])}" for o in failed)
        parts.append(f'<div class="banner failure">Failed: {which}</div>')
    parts.append(
        '<dl class="meta">'
        f"<dt>as-of</dt><dd>{text(report.get('as_of'))}</dd>"
        f"<dt>policy version</dt><dd><code>{text(policy_version)}</code></dd>"
        f"<dt>archive</dt><dd><code>{text(report.get('archive'))}</code></dd>"
        "</dl>"
    )
    return "".join(parts)


def _rules_table(rules: list[dict]) -> str:
    counts = "".join(f'<th class="num">{column.replace("_", " ")}</th>' for column in COLUMNS)
    head = f"<thead><tr><th>rule</th><th>last step</th>{counts}<th>approval</th><th>failed</th></tr></thead>"
    rows = "".join(_rule_row(outcome) for outcome in rules)
    return f'<div class="scroll"><table class="rules">{head}<tbody>{rows}</tbody></table></div>'


def _rule_row(outcome: dict) -> str:
    failed_step = outcome.get("failed_step")
    approval = outcome.get("approval")
    cells = [
        f"<td><code>{text(outcome.get('rule'))}</code></td>",
        f"<td>{text(outcome.get('stage') or 'not run')}</td>",
        *(number_cell(outcome.get(column)) for column in COLUMNS),
        f'<td class="refused">{text(approval)}</td>' if _refused(approval) else f"<td>{text(approval)}</td>",
        f'<td class="failed">{text(failed_step)}</td>' if failed_step else f"<td>{NONE}</td>",
    ]
    row_class = ' class="failed-row"' if failed_step else ""
    return f"<tr{row_class}>{''.join(cells)}</tr>"


def _refused(approval: str | None) -> bool:
    """ "rejected by <user>" or "rejected: no answer in time" (lifecycle_airflow.approval)."""
    return bool(approval) and approval.startswith("rejected")


def _rule_details(outcome: dict) -> str:
    sections = [
        _notices(outcome),
        _left_in_place(outcome.get("skipped")),
        _invalid_records(outcome),
        _purge_failures(outcome.get("purge_failed_batches")),
        _batches(outcome.get("batches")),
    ]
    content = "".join(section for section in sections if section)
    return f"<h2><code>{text(outcome.get('rule'))}</code></h2>{content}" if content else ""


def _notices(outcome: dict) -> str:
    if outcome.get("action") != "reactivate":
        return ""
    rows = [(key.replace("_", " "), outcome.get(key, 0)) for key in NOTICE_COLUMNS]
    rows += [(f"deferred, {reason}", count) for reason, count in (outcome.get("deferred_reasons") or {}).items()]
    return "<h3>Reactivation notices</h3>" + _two_columns(("notices", "count"), rows)


def _left_in_place(skipped: dict | None) -> str:
    if not skipped:
        return ""
    return "<h3>Left in place</h3>" + _two_columns(("reason", "records"), skipped.items())


def _two_columns(headings: tuple[str, str], rows) -> str:
    body = "".join(f"<tr><td>{text(label)}</td>{number_cell(count)}</tr>" for label, count in rows)
    head = f'<thead><tr><th>{headings[0]}</th><th class="num">{headings[1]}</th></tr></thead>'
    return f'<table class="details">{head}<tbody>{body}</tbody></table>'


def _invalid_records(outcome: dict) -> str:
    records = outcome.get("invalid_records")
    if not records:
        return ""
    rows = "".join(
        f'<tr><td><code>{text(r.get("table"))}</code></td><td class="num">{text(r.get("key"))}</td>'
        f"<td>{text(r.get('reason'))}</td></tr>"
        for r in records
    )
    total = outcome.get("invalid") or 0
    # The report lists the first invalid records only (select.INVALID_LISTED).
    shown = f'<p class="muted">the first {len(records)} of {text(total)}</p>' if total > len(records) else ""
    head = '<thead><tr><th>table</th><th class="num">key</th><th>reason</th></tr></thead>'
    return f'<h3>Invalid records (skipped)</h3>{shown}<table class="details">{head}<tbody>{rows}</tbody></table>'


def _purge_failures(batch_keys: list | None) -> str:
    if not batch_keys:
        return ""
    items = "".join(f"<li><code>{text(key)}</code></li>" for key in batch_keys)
    return f"<h3>Batches the archive refused to purge (tried again next run)</h3><ul>{items}</ul>"


def _batches(batches: list | None) -> str:
    if not batches:
        return ""
    rows = "".join(
        f"<tr><td><code>{text(b.get('key'))}</code></td>{number_cell(b.get('rows'))}"
        f"<td>{text(b.get('retain_until'))}</td><td>{'verified' if b.get('verified') else 'not verified'}</td></tr>"
        for b in batches
    )
    head = '<thead><tr><th>batch</th><th class="num">rows</th><th>retain until</th><th>copy</th></tr></thead>'
    return f'<h3>Archive batches</h3><table class="batches">{head}<tbody>{rows}</tbody></table>'


def _holds(holds: list | None) -> str:
    """Only the hold's known fields are shown: a subject is named by the digest of its email."""
    if holds is None:
        return ""
    if not holds:
        return '<h2>Active legal holds</h2><p class="muted">None.</p>'
    rows = "".join(_hold_row(hold) for hold in holds)
    head = (
        '<thead><tr><th class="num">id</th><th>kind</th><th>table</th><th class="num">key</th>'
        "<th>subject (email digest)</th><th>reason</th><th>until</th><th>state</th></tr></thead>"
    )
    return f'<h2>Active legal holds</h2><div class="scroll"><table>{head}<tbody>{rows}</tbody></table></div>'


def _hold_row(hold: dict) -> str:
    digest = str(hold.get("digest") or "")
    shown_digest = f'<code title="{escape(digest)}">{escape(digest[:DIGEST_SHOWN])}…</code>' if digest else NONE
    return (
        f'<tr><td class="num">{text(hold.get("id"))}</td><td>{text(hold.get("kind"))}</td>'
        f'<td><code>{text(hold.get("table"))}</code></td><td class="num">{text(hold.get("key"))}</td>'
        f"<td>{shown_digest}</td><td>{text(hold.get('reason'))}</td><td>{text(hold.get('until'))}</td>"
        f"<td>{text(hold.get('state'))}</td></tr>"
    )


def _answer_deadlines(section: dict | None) -> str:
    """The open requests by key, kind and dates, never by address, flagged due soon or overdue; the
    restrictions in force apart, without a deadline (reporting.finish_run, lifecycle.deadlines)."""
    if not section:
        return ""
    counts = [f"{text(section.get('open'))} awaiting an answer"]
    counts += [f"{text(section.get(count))} {flag}" for flag, (_, count) in FLAGS.items()]
    if section.get("undated"):
        counts.append(f"{text(section['undated'])} without a readable received date")
    in_force = section.get("restrictions_in_force") or []
    parts = [
        f"<h2>Answer deadlines: open requests of <code>{text(section.get('table'))}</code></h2>",
        f'<p class="muted">As of {text(section.get("as_of"))}: answered within {text(section.get("answer_within"))} '
        f"of receipt, flagged due soon from {text(section.get('warn_before'))} before. {', '.join(counts)}; "
        f"{len(in_force)} restrictions in force.</p>",
    ]
    requests = section.get("requests") or []
    if requests:
        head = (
            '<thead><tr><th class="num">id</th><th>kind</th><th>received</th><th class="num">age (days)</th>'
            '<th>deadline</th><th class="num">days left</th><th>flag</th></tr></thead>'
        )
        rows = "".join(_request_row(request) for request in requests)
        parts.append(f'<table class="details">{head}<tbody>{rows}</tbody></table>')
    if in_force:
        head = (
            '<thead><tr><th class="num">id</th><th>kind</th><th>received</th>'
            '<th class="num">age (days)</th></tr></thead>'
        )
        rows = "".join(
            f'<tr><td class="num">{text(r.get("id"))}</td><td>{text(r.get("kind"))}</td>'
            f'<td>{text(r.get("received"))}</td><td class="num">{text(r.get("age_days"))}</td></tr>'
            for r in in_force
        )
        parts.append(
            "<h3>Restrictions in force</h3>"
            '<p class="muted">Open until lifted, on purpose: answered when placed, so no deadline.</p>'
            f'<table class="details">{head}<tbody>{rows}</tbody></table>'
        )
    return "".join(parts)


def _request_row(request: dict) -> str:
    flag = request.get("flag")
    flag_class = f' class="{FLAGS[flag][0]}"' if flag in FLAGS else ""
    return (
        f'<tr><td class="num">{text(request.get("id"))}</td><td>{text(request.get("kind"))}</td>'
        f'<td>{text(request.get("received"))}</td><td class="num">{text(request.get("age_days"))}</td>'
        f'<td>{text(request.get("deadline"))}</td><td class="num">{text(request.get("days_left"))}</td>'
        f"<td{flag_class}>{text(flag)}</td></tr>"
    )
