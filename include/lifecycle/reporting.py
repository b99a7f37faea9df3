"""The run report: per rule what was due, held, invalid, archived, erased and pseudonymised, with
the as-of, the policy version and the archive batches. Records are named by table and key only."""

from __future__ import annotations

import json

from sqlalchemy import delete, func, insert, select

from lifecycle.deadlines import DUE_SOON, OVERDUE, answer_deadlines, deadlines_for
from lifecycle.holds import list_holds
from lifecycle.pipeline import step_named, steps_for
from lifecycle.policy import Rule
from lifecycle.reactivation import notice_report
from lifecycle.report_html import COLUMNS, NOTICE_COLUMNS, render_html
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.select import Selection

DEADLINE_COUNTS = ("open", "due_soon", "overdue", "undated")


def start_run(run: RunContext) -> None:
    """Record the run as running; a dry run is recorded nowhere but in its report's files."""
    if run.dry_run:
        return
    runs = run.tables.runs
    with run.engine.begin() as connection:
        connection.execute(delete(runs).where(runs.c.dag_id == run.dag_id, runs.c.run_id == run.run_id))
        connection.execute(
            insert(runs).values(
                dag_id=run.dag_id,
                run_id=run.run_id,
                as_of=run.as_of_naive,
                policy_version=run.policy.version,
                started_at=now_utc_naive(),
                state="running",
            )
        )


def rule_report(run: RunContext, rule: Rule) -> dict:
    tables = run.tables
    s, a, b = tables.selections, tables.audit_trail, tables.archive_batches
    with run.engine.connect() as connection:
        selection = (
            connection.execute(select(s).where(s.c.dag_id == run.dag_id, s.c.run_id == run.run_id, s.c.rule == rule.id))
            .mappings()
            .first()
        )
        actions = connection.execute(
            select(a.c.action, a.c.table_name, func.count())
            .where(a.c.dag_id == run.dag_id, a.c.run_id == run.run_id, a.c.rule == rule.id)
            .group_by(a.c.action, a.c.table_name)
        ).all()
        batches = connection.execute(
            select(b.c.batch_key, b.c.uri, b.c.row_count, b.c.retain_until, b.c.verified_at)
            .where(b.c.dag_id == run.dag_id, b.c.run_id == run.run_id, b.c.rule == rule.id)
            .order_by(b.c.batch_key)
        ).all()
        outcome: dict = {"rule": rule.id, "action": rule.action, "stage": selection["stage"] if selection else None}
        if selection:
            outcome |= json.loads(selection["counts"] or "{}")
            staged = Selection(run, rule, selection["id"])
            outcome["skipped"] = staged.left_in_place(connection)
            if rule.action == "reactivate":
                outcome["notices_due"] = outcome.pop("notify", 0)
                outcome |= notice_report(connection, staged)
            outcome["invalid_records"] = staged.invalid_records(connection)
    for action in ("archived", "erased", "pseudonymised", "purged"):
        outcome[action] = sum(count for act, _, count in actions if act == action)
    # A bundle rule's "erased" counts its own records (smicers); the rows erased with them apart.
    own_erased = sum(count for act, table, count in actions if act == "erased" and table == rule.table)
    outcome["erased_with_bundle"] = outcome["erased"] - own_erased
    outcome["erased"] = own_erased
    outcome["by_table"] = {f"{act}:{table}": count for act, table, count in actions if table}
    outcome["batches"] = [
        {"key": key, "uri": uri, "rows": rows, "retain_until": str(until), "verified": verified is not None}
        for key, uri, rows, until, verified in batches
    ]
    return outcome


def finish_run(
    run: RunContext,
    rules: list[Rule],
    step_results: dict[str, dict[str, dict]] | None = None,
    failed_steps: dict[str, str] | None = None,
) -> dict:
    """Write report.json, report.md and report.html for the run, record it, and return the summary.

    `step_results` maps each rule to what its steps returned, `failed_steps` each rule that failed
    to its failed step. A dry run's report is made of what its steps would have done, and the run
    is recorded nowhere but in these files."""
    step_results, failed_steps = step_results or {}, failed_steps or {}
    outcomes = [
        _rule_outcome(run, rule, step_results.get(rule.id, {})) | {"failed_step": failed_steps.get(rule.id)}
        for rule in rules
    ]
    report = {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "as_of": run.as_of.isoformat(),
        "policy_version": run.policy.version,
        "archive": run.archive_uri,
        "dry_run": run.dry_run,
        "holds": [hold for hold in list_holds(run.engine, today=run.today) if hold["state"] == "active"],
        "rules": outcomes,
    }
    deadlines = deadlines_for(run.policy, rules)
    if deadlines:
        report["answer_deadlines"] = answer_deadlines(run, deadlines)
    folder = run.report_dir()
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")
    if not run.dry_run:
        _record_finished(run, report)
    return _compact(report) | {"report": str(folder / "report.md")}


def _rule_outcome(run: RunContext, rule: Rule, results: dict[str, dict]) -> dict:
    approval = {"approval": results["approve"].get("approval")} if results.get("approve") else {}
    if run.dry_run:
        return _would_do(rule, results) | approval
    return rule_report(run, rule) | results.get("purge", {}) | approval


def _would_do(rule: Rule, results: dict[str, dict]) -> dict:
    """A dry run's outcome of a rule: what each of its steps reported it would do."""
    selected = results.get("select", {})
    outcome = {"rule": rule.id, "action": rule.action, "stage": _last_step(rule, results)}
    outcome |= {column: selected.get(column, 0) for column in ("due", "held", "invalid")}
    outcome["invalid_records"] = selected.get("invalid_records", [])
    for name in steps_for(rule):
        outcome |= {column: results.get(name, {}).get(column, 0) for column in step_named(name).dry_run_columns}
    return outcome


def _last_step(rule: Rule, results: dict[str, dict]) -> str | None:
    done = [step_named(name).stage for name in steps_for(rule) if results.get(name)]
    return done[-1] if done else None


def _record_finished(run: RunContext, report: dict) -> None:
    runs = run.tables.runs
    with run.engine.begin() as connection:
        connection.execute(
            runs.update()
            .where(runs.c.dag_id == run.dag_id, runs.c.run_id == run.run_id)
            .values(finished_at=now_utc_naive(), state="reported", summary=json.dumps(_compact(report)))
        )


def _compact(report: dict) -> dict:
    """What the run's record and its XCom keep: counts, no record named."""
    deadlines = report.get("answer_deadlines")
    return {
        "as_of": report["as_of"],
        "policy_version": report["policy_version"],
        "dry_run": report["dry_run"],
        "rules": {
            o["rule"]: {k: o.get(k, 0) for k in (*COLUMNS, *_notice_columns(o))}
            | {k: o.get(k) for k in ("stage", "approval", "failed_step")}
            for o in report["rules"]
        },
    } | ({"answer_deadlines": {k: deadlines[k] for k in DEADLINE_COUNTS}} if deadlines else {})


def _notice_columns(outcome: dict) -> tuple[str, ...]:
    return NOTICE_COLUMNS if outcome.get("action") == "reactivate" else ()


def render_markdown(report: dict) -> str:
    lines = [
        f"# Retention run `{report['dag_id']}`",
        "",
        f"- run: `{report['run_id']}`",
        f"- as-of: {report['as_of']}",
        f"- policy version: `{report['policy_version'][:16]}`",
        f"- archive: {report['archive']}",
        *(["", "**Dry run: the counts are what the run would do; nothing was changed.**"] if report["dry_run"] else []),
        "",
        "| rule | last step | " + " | ".join(COLUMNS) + " | approval | failed |",
        "|---|---|" + "---:|" * len(COLUMNS) + "---|---|",
    ]
    for outcome in report["rules"]:
        cells = " | ".join(str(outcome.get(column, 0)) for column in COLUMNS)
        lines.append(
            f"| {outcome['rule']} | {outcome.get('stage') or 'not run'} | {cells} "
            f"| {outcome.get('approval') or ''} | {outcome.get('failed_step') or ''} |"
        )
    for outcome in report["rules"]:
        lines += _details(outcome)
    lines += _holds(report["holds"])
    if report.get("answer_deadlines"):
        lines += _answer_deadlines(report["answer_deadlines"])
    return "\n".join(lines) + "\n"


def _answer_deadlines(section: dict) -> list[str]:
    """Open requests by key, kind and dates, never by address; the restrictions in force apart."""
    counts = [
        f"{section['open']} awaiting an answer",
        f"{section['due_soon']} {DUE_SOON}",
        f"{section['overdue']} {OVERDUE}",
    ]
    if section.get("undated"):
        counts.append(f"{section['undated']} without a readable received date")
    lines = [
        "",
        f"## Answer deadlines: open requests of `{section['table']}`",
        "",
        f"As of {section['as_of']}: answered within {section['answer_within']} of receipt, flagged {DUE_SOON} "
        f"from {section['warn_before']} before. {', '.join(counts)}; "
        f"{len(section['restrictions_in_force'])} restrictions in force.",
    ]
    if section["requests"]:
        lines += [
            "",
            "| id | kind | received | age (days) | deadline | days left | flag |",
            "|---:|---|---|---:|---|---:|---|",
        ]
        lines += [
            f"| {r['id']} | {r['kind']} | {r['received'] or ''} | {_blank(r['age_days'])} | {r['deadline'] or ''} "
            f"| {_blank(r['days_left'])} | {r['flag'] or ''} |"
            for r in section["requests"]
        ]
    if section["restrictions_in_force"]:
        lines += ["", "### Restrictions in force (open until lifted; no deadline)", ""]
        lines += ["| id | kind | received | age (days) |", "|---:|---|---|---:|"]
        lines += [
            f"| {r['id']} | {r['kind']} | {r['received'] or ''} | {_blank(r['age_days'])} |"
            for r in section["restrictions_in_force"]
        ]
    return lines


def _blank(value: object) -> str:
    return "" if value is None else str(value)


def _holds(holds: list[dict]) -> list[str]:
    if not holds:
        return []
    lines = ["", "## Legal holds in force", ""]
    for hold in holds:
        subject = f"{hold['table']} {hold['key']}" if hold.get("table") else f"email #{hold.get('digest')}"
        until = f", until {hold['until']}" if hold.get("until") else ""
        lines.append(f"- hold {hold['id']}: {subject}{until}: {hold['reason']}")
    return lines


def _details(outcome: dict) -> list[str]:
    lines = []
    if _notice_columns(outcome):
        lines += ["", f"## {outcome['rule']}: reactivation notices", ""]
        lines += [f"- {column.replace('_', ' ')}: {outcome.get(column, 0)}" for column in NOTICE_COLUMNS]
        lines += [f"- deferred, {reason}: {count}" for reason, count in outcome.get("deferred_reasons", {}).items()]
    if outcome.get("skipped"):
        lines += ["", f"## {outcome['rule']}: left in place", ""]
        lines += [f"- {reason}: {count}" for reason, count in outcome["skipped"].items()]
    if outcome.get("invalid_records"):
        lines += ["", f"## {outcome['rule']}: invalid records (skipped)", ""]
        lines += [f"- {r['table']} {r['key']}: {r['reason']}" for r in outcome["invalid_records"]]
    if outcome.get("purge_failed_batches"):
        lines += ["", f"## {outcome['rule']}: batches the archive refused to purge (tried again next run)", ""]
        lines += [f"- `{key}`" for key in outcome["purge_failed_batches"]]
    if outcome.get("batches"):
        lines += ["", f"## {outcome['rule']}: archive batches", ""]
        lines += [f"- `{b['key']}`: {b['rows']} rows, retain until {b['retain_until']}" for b in outcome["batches"]]
    return lines
