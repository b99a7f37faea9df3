"""The run report: per rule what was due, held, invalid, archived, erased and pseudonymised, with
the as-of, the policy version and the archive batches. Records are named by table and key only."""

from __future__ import annotations

import json

from sqlalchemy import delete, func, insert, select

from lifecycle.policy import Rule
from lifecycle.reactivation import notice_report
from lifecycle.run import RunContext, now_utc_naive

INVALID_LISTED = 200


def start_run(run: RunContext) -> None:
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
    s, c, a, b = tables.selections, tables.candidates, tables.audit_events, tables.archive_batches
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
            outcome["skipped"] = dict(
                connection.execute(
                    select(c.c.reason, func.count())
                    .where(c.c.selection_id == selection["id"], c.c.state.in_(("skipped", "failed")))
                    .group_by(c.c.reason)
                ).all()
            )
            if rule.action == "reactivate":
                outcome["notices_due"] = outcome.pop("notify", 0)
                outcome |= notice_report(connection, run, rule, selection["id"])
            outcome["invalid_records"] = [
                {"table": rule.table, "key": key, "reason": reason}
                for key, reason in connection.execute(
                    select(c.c.record_key, c.c.reason)
                    .where(c.c.selection_id == selection["id"], c.c.decision == "invalid")
                    .order_by(c.c.record_key)
                    .limit(INVALID_LISTED)
                ).all()
            ]
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


def finish_run(run: RunContext, rules: list[Rule], step_results: dict[str, dict] | None = None) -> dict:
    """Write report.json and report.md for the run, record it, and return the summary."""
    outcomes = [rule_report(run, rule) | (step_results or {}).get(rule.id, {}) for rule in rules]
    report = {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "as_of": run.as_of.isoformat(),
        "policy_version": run.policy.version,
        "archive": run.archive_uri,
        "rules": outcomes,
    }
    folder = run.report_dir()
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    runs = run.tables.runs
    with run.engine.begin() as connection:
        connection.execute(
            runs.update()
            .where(runs.c.dag_id == run.dag_id, runs.c.run_id == run.run_id)
            .values(finished_at=now_utc_naive(), state="reported", summary=json.dumps(_compact(report)))
        )
    return _compact(report) | {"report": str(folder / "report.md")}


COLUMNS = ("due", "held", "invalid", "archived", "erased", "erased_with_bundle", "pseudonymised", "purged")
NOTICE_COLUMNS = ("notices_due", "emailed", "undeliverable", "deferred", "unsettled", "responded", "notices_open")


def _compact(report: dict) -> dict:
    return {
        "as_of": report["as_of"],
        "policy_version": report["policy_version"],
        "rules": {
            o["rule"]: {k: o.get(k, 0) for k in (*COLUMNS, *_notice_columns(o), "stage")} for o in report["rules"]
        },
    }


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
        "",
        "| rule | last step | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for outcome in report["rules"]:
        cells = " | ".join(str(outcome.get(column, 0)) for column in COLUMNS)
        lines.append(f"| {outcome['rule']} | {outcome.get('stage') or 'not run'} | {cells} |")
    for outcome in report["rules"]:
        lines += _details(outcome)
    return "\n".join(lines) + "\n"


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
