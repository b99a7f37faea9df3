"""Erasures made again after the application database is restored from a backup taken before them.
The restore brings their records back and rolls their audit trail back with them; the erasure
ledger in the archive (lifecycle.ledger) still names them. Every record of the ledger objects dated
`since` or later that is present again is erased again: a row erased is deleted, a row pseudonymised
gets its bundle link set to NULL again; each with an audit event (rule `replay`), so that the
restored database's audit trail says it.

The ledger's keys are staged in a temporary table of the session, and each table is acted on
set-based, one short transaction per range of staged keys, a bundle's members before its root (their
rows refer to it). A record held now (a legal hold by table and key or by email, an open restriction
request, its smicer's or a bundle row's hold, as the rules hold them) is left in place and counted.
A dry run stages and counts, and changes nothing.

    python -m lifecycle.replay --since YYYY-MM-DD [--dry-run] [--database-url URL] [--archive-uri URI]

The database is --database-url, else the Airflow connection smice_app given in the environment
(AIRFLOW_CONN_SMICE_APP), else the demo's SQLite file; the archive is --archive-uri, else
AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI, else the local data folder's archive/; the policy is
LIFECYCLE_POLICY_PATH, else the shipped one. It prints counts by table: never a record's data.
Exit status: 0 done, 2 refused (the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import BigInteger, Column, Engine, MetaData, PrimaryKeyConstraint, String, Table, insert
from sqlalchemy.exc import IntegrityError

from lifecycle.app_database import data_dir, environment_database_url
from lifecycle.decide import holds_context
from lifecycle.ledger import read_ledger
from lifecycle.policy import Policy
from lifecycle.run import now_utc_naive
from lifecycle.sql import statement
from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine
from lifecycle.stores import ArchiveError, open_archive_store

DAG_ID = "erasure_replay"
REPLAY_RULE = "replay"
KEYS_PER_TRANSACTION = 1000
STAGED_PER_INSERT = 10_000
REFUSED_EXIT = 2
ARCHIVE_VARIABLE = "AIRFLOW_VAR_LIFECYCLE_ARCHIVE_URI"
# What is done again to a row of each action, and the count naming it.
DONE = {"erased": "erased_again", "pseudonymised": "pseudonymised_again"}


class ReplayError(ValueError):
    """The replay is refused or stopped; the message says why, naming tables and keys, never data."""


@dataclass(frozen=True)
class Target:
    """The ledger's records of one table and action, and how they are erased again."""

    table: str
    key: str
    action: str
    link: str | None  # pseudonymised: the bundle link set to NULL again
    holds: dict  # what holds its rows (decision.sql's held_any, lifecycle.decide.holds_context)
    hold_params: dict


def replay_erasures(
    engine: Engine,
    policy: Policy,
    store,
    since: date,
    dry_run: bool,
    *,
    dag_id: str = DAG_ID,
    run_id: str | None = None,
    today: date | None = None,
) -> dict:
    """Erase again what the ledger since `since` names and the database holds again; the counts per
    table and action: in the ledger, present again, held (left in place), erased or pseudonymised again."""
    keys, records = read_ledger(store, since)
    # A dry run too reads the holds from the pipeline's tables, created (empty) where missing.
    tables = ensure_lifecycle_tables(engine)
    targets = _targets(policy, tables, records)
    replay = _Replay(engine, policy, dry_run, dag_id, run_id or f"replay__{now_utc_naive():%Y%m%dT%H%M%S}", today)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    with engine.connect() as connection:
        staged = replay.stage(connection, records)
        try:
            for target in targets:
                counts.setdefault(target.table, {})[target.action] = replay.target(connection, staged, target)
        finally:
            with connection.begin():
                staged.drop(connection)
    return {
        "since": since.isoformat(),
        "dry_run": dry_run,
        "ledger_objects": len(keys),
        "records_in_ledger": records.num_rows,
        "tables": counts,
        "totals": _totals(counts),
    }


def _targets(policy: Policy, tables, records) -> list[Target]:
    """The (table, action) pairs of the ledger, checked against the policy, children before parents."""
    pairs = records.group_by(["table_name", "action"], use_threads=False).aggregate([]).to_pylist()
    targets = [_target(policy, tables, pair["table_name"], pair["action"]) for pair in pairs]
    return sorted(targets, key=lambda t: (_rank(policy, t.table), list(policy.tables).index(t.table), t.action))


def _target(policy: Policy, tables, table: str, action: str) -> Target:
    if table not in policy.tables:
        raise ReplayError(f"the ledger names table {table!r}, which the policy does not know: nothing was replayed")
    membership = policy.bundle_membership(table)
    if action == "pseudonymised":
        if membership is None or membership[1].action != "pseudonymise":
            raise ReplayError(f"the ledger pseudonymised rows of {table}, which no bundle pseudonymises")
        link = membership[1].link
    elif action == "erased":
        link = None
    else:
        raise ReplayError(f"the ledger names an unknown action {action!r} on {table}: nothing was replayed")
    return Target(table, policy.tables[table].key, action, link, *holds_context(policy, tables, table))


def _rank(policy: Policy, table: str) -> int:
    """0 for a bundle's member, 2 for a table others refer to (a bundle's root, a rule's parent), else 1."""
    if policy.bundle_membership(table) is not None:
        return 0
    parents = {bundle.root for bundle in policy.bundles.values()}
    parents |= {rule.parent.table for rule in policy.rules() if rule.parent}
    return 2 if table in parents else 1


class _Replay:
    """The statements of one replay, on one session (its temporary table of staged keys)."""

    def __init__(self, engine: Engine, policy: Policy, dry_run: bool, dag_id: str, run_id: str, today: date | None):
        self.engine = engine
        self.dry_run = dry_run
        tables = lifecycle_tables(engine)
        self.audit = tables.qualified(tables.audit_events)
        self.params = {
            "today": today or datetime.now(UTC).date(),
            "dag_id": dag_id,
            "run_id": run_id,
            "rule": REPLAY_RULE,
            "policy_version": policy.version,
            "as_of": now_utc_naive(),
        }

    def stage(self, connection, records) -> Table:
        """The ledger's records in a temporary table of this session, in chunks."""
        staged = Table(
            "lifecycle_replay_keys",
            MetaData(),
            Column("table_name", String(64), nullable=False),
            Column("action", String(16), nullable=False),
            Column("record_key", BigInteger, nullable=False, autoincrement=False),
            Column("state", String(16)),  # present | held, once looked at
            PrimaryKeyConstraint("table_name", "action", "record_key"),
            prefixes=["TEMPORARY"],
        )
        with connection.begin():
            staged.drop(connection, checkfirst=True)
            staged.create(connection)
            for chunk in records.to_batches(STAGED_PER_INSERT):
                connection.execute(insert(staged), chunk.to_pylist())
        return staged

    def target(self, connection, staged: Table, target: Target) -> dict[str, int]:
        """Each range of the target's staged keys in its own transaction; the target's counts."""
        context = {"staged": staged.name, "x": target}
        of_target = {"table_name": target.table, "action": target.action}
        with connection.begin():
            starts = connection.execute(
                statement(self.engine, RANGE_STARTS, staged=staged.name), of_target | {"size": KEYS_PER_TRANSACTION}
            ).all()
        done = 0
        for low, high in _ranges(starts):
            with connection.begin():
                bounds = {"key_from": low, "key_to": high}
                done += self._replay_range(connection, context, self.params | target.hold_params | of_target | bounds)
        with connection.begin():
            states = dict(connection.execute(statement(self.engine, STATES, staged=staged.name), of_target).all())
        return {
            "in_ledger": sum(states.values()),
            "present_again": states.get("present", 0) + states.get("held", 0),
            "held": states.get("held", 0),
            DONE[target.action]: states.get("present", 0) if self.dry_run else done,
        }

    def _replay_range(self, connection, context: dict, params: dict) -> int:
        """Mark the range's keys present again (those held first), then erase the others again and audit them."""
        for state in ("held", "present"):
            connection.execute(statement(self.engine, MARK_PRESENT, state=state, **context), params)
        if self.dry_run:
            return 0
        target = context["x"]
        try:
            done = connection.execute(statement(self.engine, ERASE_AGAIN, **context), params).rowcount
        except IntegrityError:
            raise ReplayError(
                f"{target.table}: rows with keys from {params['key_from']} to {params['key_to'] - 1} cannot be "
                "erased again, other rows still refer to them; that range is left as it was"
            ) from None
        audit = {"recorded_at": now_utc_naive()}
        connection.execute(statement(self.engine, AUDIT_AGAIN, audit=self.audit, **context), params | audit)
        return done


def _ranges(starts: list) -> list[tuple[int, int]]:
    """(key_from, key_to) of each range: from a start to the next, the last one past the last key."""
    if not starts:
        return []
    keys = [start for start, _ in starts]
    return list(zip(keys, [*keys[1:], starts[0][1] + 1], strict=True))


def _totals(counts: dict) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for actions in counts.values():
        for action_counts in actions.values():
            totals.update(action_counts)
    return dict(totals)


COUNT_COLUMNS = ("in_ledger", "present_again", "held", "erased_again", "pseudonymised_again")


def write_replay_report(folder: Path, report: dict) -> Path:
    """report.json, report.md and report.html of a replay (its counts, with the run and the archive) in
    `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "report.html").write_text(render_html(report), encoding="utf-8")
    return folder


def _rows(report: dict) -> list[tuple[str, str, dict]]:
    return [
        (table, action, counts) for table, actions in report["tables"].items() for action, counts in actions.items()
    ]


def render_markdown(report: dict) -> str:
    lines = [
        f"# Erasure replay `{report.get('dag_id', DAG_ID)}`",
        "",
        f"- run: `{report.get('run_id', '')}`",
        f"- ledger since: {report['since']} ({report['ledger_objects']} ledger objects, "
        f"{report['records_in_ledger']} records)",
        f"- archive: {report.get('archive', '')}",
        *(
            ["", "**Dry run: the counts are what the replay would do; nothing was changed.**"]
            if report["dry_run"]
            else []
        ),
        "",
        "| table | action | " + " | ".join(c.replace("_", " ") for c in COUNT_COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COUNT_COLUMNS),
    ]
    for table, action, counts in _rows(report):
        lines.append(f"| {table} | {action} | " + " | ".join(str(counts.get(c, "")) for c in COUNT_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def render_html(report: dict) -> str:
    from lifecycle.report_html import html_page, number_cell, text

    head = "".join(f'<th class="num">{c.replace("_", " ")}</th>' for c in COUNT_COLUMNS)
    rows = "".join(
        f"<tr><td><code>{text(table)}</code></td><td>{text(action)}</td>"
        + "".join(number_cell(counts.get(c)) for c in COUNT_COLUMNS)
        + "</tr>"
        for table, action, counts in _rows(report)
    )
    dry_run = (
        '<div class="banner dry-run">DRY RUN: nothing was changed'
        '<div class="note">The counts are what the replay would do.</div></div>'
        if report["dry_run"]
        else ""
    )
    body = (
        f"<h1>Erasure replay <code>{text(report.get('dag_id', DAG_ID))}</code></h1>"
        f'<p class="muted">run <code>{text(report.get("run_id"))}</code></p>{dry_run}'
        '<dl class="meta">'
        f"<dt>ledger since</dt><dd>{text(report['since'])}</dd>"
        f"<dt>ledger objects</dt><dd>{text(report['ledger_objects'])}</dd>"
        f"<dt>records in ledger</dt><dd>{text(report['records_in_ledger'])}</dd>"
        f"<dt>archive</dt><dd><code>{text(report.get('archive'))}</code></dd></dl>"
        f"<table><thead><tr><th>table</th><th>action</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )
    return html_page(f"Erasure replay · {report.get('run_id', '')}", body)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    from lifecycle.policy import load_policy

    try:
        since = parse_since(args.since)
        store = open_archive_store(args.archive_uri or archive_uri())
        engine = make_engine(args.database_url or environment_database_url())
        try:
            counts = replay_erasures(
                engine, load_policy(os.environ.get("LIFECYCLE_POLICY_PATH")), store, since, args.dry_run
            )
        finally:
            engine.dispose()
    except (ReplayError, ArchiveError) as error:
        print(f"erasure replay refused: {error}", file=sys.stderr)
        return REFUSED_EXIT
    print(render_markdown(counts), end="")
    return 0


def archive_uri() -> str:
    """The archive as the DAGs find it outside Airflow: its variable in the environment, else the default."""
    return os.environ.get(ARCHIVE_VARIABLE, "").strip() or (data_dir() / "archive").as_uri()


def parse_since(text: object, today: date | None = None) -> date:
    """`since` as a date (YYYY-MM-DD), not after today."""
    try:
        since = date.fromisoformat(str(text).strip())
    except ValueError:
        raise ReplayError(f"since {str(text)[:40]!r} is not a date (YYYY-MM-DD)") from None
    today = today or datetime.now(UTC).date()
    if since > today:
        raise ReplayError(f"since ({since.isoformat()}) is after today ({today.isoformat()}): no ledger is dated then")
    return since


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--since", required=True, help="the first day (UTC) of the erasures to replay: YYYY-MM-DD")
    parser.add_argument("--dry-run", action="store_true", help="count what would be erased again; change nothing")
    parser.add_argument("--database-url", "--db-url", help="the application database (SQLAlchemy URL)")
    parser.add_argument("--archive-uri", help="the evidence archive holding the ledger (file:///abs/dir or s3://...)")
    return parser.parse_args(argv)


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

RANGE_STARTS = """\
{# The first key of every `size` staged keys of a table and action, with the last of them all: where
   the key ranges of the replay's transactions start and end. #}
SELECT x.record_key, x.last_key
  FROM (SELECT s.record_key, ROW_NUMBER() OVER (ORDER BY s.record_key) AS position,
               MAX(s.record_key) OVER () AS last_key
          FROM {{ staged }} s
         WHERE s.table_name = :table_name AND s.action = :action) x
 WHERE (x.position - 1) % :size = 0
 ORDER BY x.record_key
"""

MARK_PRESENT = """\
{% import "decision.sql" as m %}
{# The staged keys of a range whose row is present again (for a pseudonymised row: linked again),
   marked `state`: 'held' those held now, then 'present' the others. #}
UPDATE {{ staged }}
   SET state = '{{ state }}'
 WHERE table_name = :table_name AND action = :action AND record_key >= :key_from AND record_key < :key_to
   AND state IS NULL
   AND record_key IN (SELECT t.{{ x.key | q }} FROM {{ x.table | q }} t
                       WHERE t.{{ x.key | q }} >= :key_from AND t.{{ x.key | q }} < :key_to
{% if x.link %}
                         AND t.{{ x.link | q }} IS NOT NULL
{% endif %}
{% if state == 'held' %}
                         AND {{ m.held_any(x.holds, x.key) }}
{% endif %}
                     )
"""

ERASE_AGAIN = """\
{# The range's rows marked present: deleted, or (pseudonymised) their bundle link set to NULL. #}
{% if x.link %}
UPDATE {{ x.table | q }} SET {{ x.link | q }} = NULL
{% else %}
DELETE FROM {{ x.table | q }}
{% endif %}
 WHERE {{ x.key | q }} >= :key_from AND {{ x.key | q }} < :key_to
{% if x.link %}
   AND {{ x.link | q }} IS NOT NULL
{% endif %}
   AND {{ x.key | q }} IN (SELECT s.record_key FROM {{ staged }} s
                            WHERE s.table_name = :table_name AND s.action = :action AND s.state = 'present'
                              AND s.record_key >= :key_from AND s.record_key < :key_to)
"""

AUDIT_AGAIN = """\
{# An audit event for each row of the range erased (or unlinked) again: marked present, now gone. #}
INSERT INTO {{ audit }} (recorded_at, dag_id, run_id, rule, action, table_name, record_key, policy_version, as_of)
SELECT :recorded_at, :dag_id, :run_id, :rule, s.action, s.table_name, s.record_key, :policy_version, :as_of
  FROM {{ staged }} s
 WHERE s.table_name = :table_name AND s.action = :action AND s.state = 'present'
   AND s.record_key >= :key_from AND s.record_key < :key_to
   AND NOT EXISTS (SELECT 1 FROM {{ x.table | q }} t
                    WHERE t.{{ x.key | q }} = s.record_key{% if x.link %} AND t.{{ x.link | q }} IS NOT NULL{% endif %})
"""

STATES = """\
{# How many staged keys of a table and action are in each state: absent, present (erased again), held. #}
SELECT COALESCE(s.state, 'absent'), COUNT(*)
  FROM {{ staged }} s
 WHERE s.table_name = :table_name AND s.action = :action
 GROUP BY s.state
"""


if __name__ == "__main__":
    sys.exit(main())
