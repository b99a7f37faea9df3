"""Step 1 of a rule: stage, page by page, every record due, held or invalid as of the run."""

from __future__ import annotations

import json
from collections.abc import Iterator

from sqlalchemy import delete, insert, select, update

from lifecycle.decide import DUE, HELD, INVALID, NOT_DUE, Decision, RuleReading, decide, label, query_parameters
from lifecycle.periods import epoch_seconds
from lifecycle.policy import Filter, Policy, Rule
from lifecycle.reactivation import NOTIFY, with_notices
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.sql import statement

FIRST_KEY = -(2**63)


def rule_sql_context(policy: Policy, rule: Rule, reading: RuleReading, legal_holds: str) -> tuple[dict, dict]:
    """The template context of select_candidates.sql for a rule, and the bound values it needs."""
    params: dict = {}

    def conditions(filters: tuple[Filter, ...], prefix: str, alias: str | None = None) -> list[dict]:
        rendered = []
        for i, flt in enumerate(filters):
            param = f"{prefix}_{i}"
            if flt.op == "eq":
                params[param] = flt.value
            rendered.append(
                {"alias": alias or flt.column.alias, "column": flt.column.column, "op": flt.op, "param": param}
            )
        return rendered

    spec = policy.tables[rule.table]
    restriction = policy.restriction_holds
    holds = {
        "enabled": rule.holds,
        "email": spec.email,
        "owner": _owner(policy, rule),
        "legal_holds": legal_holds,
        "restriction": {
            "table": restriction.table,
            "email": restriction.email,
            "filters": conditions(restriction.filters, "restriction", alias="r"),
        },
    }
    context = {
        "table": rule.table,
        "key": spec.key,
        "parent": rule.parent,
        "filters": conditions(rule.filters, "filter"),
        "selected": [{"alias": ref.alias, "column": ref.column, "label": label(ref)} for ref in reading.selected],
        "windows": rule.windows,
        "suspects": reading.events,
        "chronology": spec.chronology,
        "anchorless_is_invalid": rule.without_anchor == "invalid",
        "anchor_columns": [ref for window in rule.windows for ref in window.columns],
        "holds": holds,
    }
    return context, params


def _owner(policy: Policy, rule: Rule) -> dict | None:
    """The smicer owning a bundle member's rows: their hold holds the row."""
    membership = policy.bundle_membership(rule.table)
    if membership is None:
        return None
    bundle, member = membership
    root = policy.tables[bundle.root]
    return {"table": root.name, "key": root.key, "email": root.email, "link": member.link}


class RuleSelector:
    """Reads a rule's records worth a decision and decides each one."""

    def __init__(self, run: RunContext, rule: Rule):
        self.run = run
        self.rule = rule
        self.reading = RuleReading.of(run.policy, rule)
        legal_holds = run.tables.qualified(run.tables.legal_holds)
        self.context, self.params = rule_sql_context(run.policy, rule, self.reading, legal_holds)
        self.params |= query_parameters(self.reading, run.as_of, run.engine.dialect.name, run.today)

    def pages(self, page_size: int) -> Iterator[list[Decision]]:
        page_statement = statement(self.run.engine, "select_candidates.sql", r=self.context, by_keys=False, lock=False)
        after_key = FIRST_KEY
        while True:
            with self.run.engine.connect() as connection:
                params = self.params | {"after_key": after_key, "page_size": page_size}
                rows = [dict(row) for row in connection.execute(page_statement, params).mappings()]
                if not rows:
                    return
                yield self.decide_rows(connection, rows)
            after_key = rows[-1]["record_key"]

    def redecide(self, connection, keys: list[int]) -> list[Decision]:
        """Decide again, inside the caller's transaction, locking the rows where the database can."""
        keyed = statement(
            self.run.engine, "select_candidates.sql", expanding=("keys",), r=self.context, by_keys=True, lock=True
        )
        rows = [dict(row) for row in connection.execute(keyed, self.params | {"keys": keys}).mappings()]
        return self.decide_rows(connection, rows)

    def decide_rows(self, connection, rows: list[dict]) -> list[Decision]:
        latest = self._bundle_latest(connection, [row["record_key"] for row in rows]) if self.rule.bundle else {}
        decisions = [decide(self.reading, row, self.run.as_of, latest.get(row["record_key"])) for row in rows]
        if self.rule.action == "reactivate":
            return with_notices(connection, self.run, self.rule, decisions)
        return decisions

    def _bundle_latest(self, connection, owners: list[int]) -> dict[int, dict]:
        """Per smicer, the latest event timestamp of each column of each bundle member table."""
        latest: dict[int, dict] = {}
        bundle = self.run.policy.bundles[self.rule.bundle]
        for member in bundle.members:
            columns = self.reading.bundle_events[member.table]
            query = statement(
                self.run.engine,
                "bundle_latest_events.sql",
                expanding=("owners",),
                table=member.table,
                link=member.link,
                columns=columns,
            )
            for row in connection.execute(query, {"owners": owners}).mappings():
                values = latest.setdefault(row["owner"], {})
                values.update({f"{member.table}.{column}": row[column] for column in columns})
        return latest


def select_candidates(run: RunContext, rule: Rule) -> dict:
    """Stage the rule's decisions for this run (replacing those of an interrupted try) and count them."""
    selection_id = _open_selection(run, rule)
    candidates = run.tables.candidates
    counts = {DUE: 0, HELD: 0, INVALID: 0, "to_archive": 0} | ({NOTIFY: 0} if rule.action == "reactivate" else {})
    for decisions in RuleSelector(run, rule).pages(rule.batch_size):
        staged = [_candidate_row(selection_id, d) for d in decisions if d.verdict != NOT_DUE]
        for d in decisions:
            if d.verdict != NOT_DUE:
                counts[d.verdict] += 1
                counts["to_archive"] += d.verdict == DUE and d.needs_archive
        if staged:
            with run.engine.begin() as connection:
                connection.execute(insert(candidates), staged)
    counts["table_rows"] = table_rows(run, rule)
    with run.engine.begin() as connection:
        connection.execute(
            update(run.tables.selections)
            .where(run.tables.selections.c.id == selection_id)
            .values(table_rows=counts["table_rows"], counts=json.dumps(counts), stage="selected")
        )
    return {"rule": rule.id, "selection_id": selection_id, **counts}


def _candidate_row(selection_id: int, decision: Decision) -> dict:
    return {
        "selection_id": selection_id,
        "record_key": decision.record_key,
        "decision": decision.verdict,
        "reason": decision.reason,
        "anchor_epoch": epoch_seconds(decision.anchor) if decision.anchor else None,
        "due_epoch": epoch_seconds(decision.due_at) if decision.due_at else None,
        "retain_until": decision.retain_until,
        "state": "pending",
    }


def _open_selection(run: RunContext, rule: Rule) -> int:
    """This run's selection for the rule; a retried step starts it afresh."""
    selections, candidates = run.tables.selections, run.tables.candidates
    with run.engine.begin() as connection:
        existing = connection.execute(
            select(selections.c.id).where(
                selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id, selections.c.rule == rule.id
            )
        ).scalar()
        if existing is not None:
            connection.execute(
                # What the run already did stays recorded: erasures, and notices emailed or undeliverable.
                delete(candidates).where(
                    candidates.c.selection_id == existing,
                    candidates.c.state.not_in(("erased", "emailed", "undeliverable")),
                )
            )
            return existing
        result = connection.execute(
            insert(selections).values(
                dag_id=run.dag_id,
                run_id=run.run_id,
                rule=rule.id,
                as_of=run.as_of_naive,
                policy_version=run.policy.version,
                created_at=now_utc_naive(),
                stage="selecting",
            )
        )
        return result.inserted_primary_key[0]


def table_rows(run: RunContext, rule: Rule) -> int:
    with run.engine.connect() as connection:
        return connection.execute(statement(run.engine, "count_rows.sql", table=rule.table)).scalar_one()


def selection_id_of(run: RunContext, rule: Rule) -> int:
    selections = run.tables.selections
    with run.engine.connect() as connection:
        found = connection.execute(
            select(selections.c.id).where(
                selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id, selections.c.rule == rule.id
            )
        ).scalar()
    if found is None:
        raise LookupError(f"rule {rule.id}: no selection for run {run.run_id}; the select step has not run")
    return found


def record_stage(run: RunContext, rule: Rule, stage: str) -> None:
    """The last step of the rule that completed in this run, for the report."""
    selections = run.tables.selections
    with run.engine.begin() as connection:
        connection.execute(
            update(selections)
            .where(selections.c.dag_id == run.dag_id, selections.c.run_id == run.run_id, selections.c.rule == rule.id)
            .values(stage=stage)
        )
