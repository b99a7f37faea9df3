"""Steps 5 and 6 of a rule: erase the due records set-based, one short transaction per key range of
candidates, whose statements re-check in the database that each record is still due, not held, and
copied to a verified archive batch where the rule archives; then check that nothing recorded as
erased remains. The ranges are planned once per selection and task share (erasures), and each is
marked done in its own transaction: with the candidates it left in place, that is the erase step's audit trail."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy import func, insert, select, update

from lifecycle.decide import DUE, LOCK_RECORDS, DecisionStatement
from lifecycle.ledger import export_ledger
from lifecycle.policy import Rule
from lifecycle.reactivation import close_erased_cycles
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.select import EVERY_KEY, KeyRange, Selection
from lifecycle.sql import statement
from lifecycle.step import Step
from lifecycle.stores.s3 import S3Options

# Left in place by a safeguard, which fails the step: the run must not look complete.
REFUSALS = ("archive not verified", "stored file not erased")
# Tries of an erase transaction that finds rows of its range erased meanwhile by another run's.
ERASE_TRIES = 5


class ErasureRefused(RuntimeError):
    """Records were left in place because erasing them would break a safeguard."""


class _NotAllErased(Exception):
    """The transaction's statements left some due candidate of its range pending without erasing it:
    its record was gone or no longer due before them, or another run's transaction erased it meanwhile."""


def erase_due(run: RunContext, rule: Rule, key_range: KeyRange = EVERY_KEY) -> dict:
    """Erase what is still due (in `key_range`, when several tasks share the step); a record whose
    archive copy is not verified is never erased."""
    eraser = _RangeEraser(Selection.of(run, rule))
    erased: dict[str, int] = {}
    for erasure in eraser.ranges_to_do(key_range):
        for name, count in eraser.erase_range(*erasure).items():
            erased[name] = erased.get(name, 0) + count
    # Before the refusal below: what was erased is in the ledger even when the step fails.
    export_ledger(run, rule, key_range)
    left = eraser.left_in_place(key_range)
    refused = sum(count for reason, count in left.items() if reason in REFUSALS)
    if refused:
        raise ErasureRefused(
            f"rule {rule.id}: {refused} record(s) left in place (no verified archive copy, or a stored file "
            f"that could not be erased); left in place: {left}"
        )
    return {"rule": rule.id, **erased, **{f"skipped:{reason}": count for reason, count in left.items()}}


def rechecks_itself(rule: Rule) -> bool:
    """Whether the erase statement re-checks each record itself (decision.sql's still_due): where the
    decision reads the record's own row only and nothing goes before the record. A bundle's rows go
    before its smicer, a stored file before its record, and a parent's row is another table's: those
    rules lock and re-check their records first."""
    return not rule.bundle and not rule.parent and not rule.stored_file


class _RangeEraser:
    """The statements of one rule's erase step, for one selection."""

    def __init__(self, selection: Selection):
        self.selection = selection
        self.run = run = selection.run
        self.rule = rule = selection.rule
        self.decision = DecisionStatement(run, rule)
        tables = run.tables
        self.names = {
            name: tables.qualified(getattr(tables, name))
            for name in ("candidates", "archived_records", "archive_batches")
        } | {"audit": tables.qualified(tables.audit_events)}

    def ranges_to_do(self, key_range: KeyRange) -> list[tuple[int, int, int]]:
        """(erasure, key_from, key_to) of the selection's ranges in `key_range` not done yet, planned
        on the first try: `batch_size` due candidates each, in key order. Only one task at a time
        erases a key range, so planning cannot race."""
        erasures = self.run.tables.erasures
        in_range = (erasures.c.selection_id == self.selection.id, *key_range.holds(erasures.c.key_from))
        with self.run.engine.begin() as connection:
            if connection.execute(select(func.count()).where(*in_range)).scalar_one() == 0:
                self._plan(connection, key_range)
            planned = select(erasures.c.id, erasures.c.key_from, erasures.c.key_to)
            return connection.execute(planned.where(*in_range, erasures.c.recorded_at.is_(None))).all()

    def _plan(self, connection, key_range: KeyRange) -> None:
        starts = self.selection.range_starts(connection, self.rule.batch_size, key_range)
        if not starts:
            return
        last = self.selection.last_due_key(connection, key_range)
        ranges = zip(starts, [*starts[1:], last + 1], strict=True)
        rows = [{"selection_id": self.selection.id, "key_from": low, "key_to": high} for low, high in ranges]
        connection.execute(insert(self.run.tables.erasures), rows)

    def erase_range(self, erasure: int, key_from: int, key_to: int) -> dict[str, int]:
        """One transaction: re-check, erase stored files, audit and erase the bundle, erase, done.

        Where the erase statement re-checks each record itself, the first try marks nothing before
        it: it commits only when it erased every pending candidate, which it nearly always does. Where
        it did not (a record gone or no longer due since the select step, or erased meanwhile by
        another run erasing the same table), the transaction is rolled back and tried again marking
        each candidate's fate, gone before erasure or no longer due; the audit trail never names a
        record erased by two runs."""
        marked = not rechecks_itself(self.rule)
        for _ in range(ERASE_TRIES):
            try:
                return self._erase_range(erasure, key_from, key_to, marked)
            except _NotAllErased:
                marked = True
        raise RuntimeError(
            f"rule {self.rule.id}: keys {key_from} to {key_to} erased meanwhile by other runs in {ERASE_TRIES} tries"
        )

    def _erase_range(self, erasure: int, key_from: int, key_to: int, marked: bool) -> dict[str, int]:
        with self.run.engine.begin() as connection:
            bounds = {"key_from": key_from, "key_to": key_to}
            if marked:
                self._recheck(connection, bounds, "gone" if rechecks_itself(self.rule) else "due")
            if self.rule.archives:
                self._recheck(connection, bounds, "archive")
            if self.rule.stored_file:
                self._erase_stored_files(connection, bounds)
            erased: dict[str, int] = {}
            for table, column, action in self._targets():
                recheck = rechecks_itself(self.rule) and table == self.rule.table
                audited = self._audit(connection, bounds, table, column, action) if table != self.rule.table else None
                done = self._execute(
                    connection,
                    ERASE_STAGED,
                    self.decision.params | bounds,
                    table=table,
                    column=column,
                    action=action,
                    recheck=recheck,
                    r=self.decision.context,
                )
                if audited not in (None, done.rowcount):
                    raise _NotAllErased
                erased["erased" if table == self.rule.table else f"{action}d:{table}"] = done.rowcount
            if marked and rechecks_itself(self.rule):
                self._recheck(connection, bounds, "kept")
            if self._still_pending(connection, bounds) != erased["erased"]:
                raise _NotAllErased
            if self.rule.action == "reactivate":
                close_erased_cycles(connection, self.run, self.rule, self.selection.pending_due_in(**bounds))
            erasures = self.run.tables.erasures
            connection.execute(update(erasures).where(erasures.c.id == erasure).values(recorded_at=now_utc_naive()))
        return erased

    def _recheck(self, connection, bounds: dict, check: str) -> None:
        if check == "due" and self.run.engine.dialect.name != "postgresql":
            # There, the re-check's own statement locks them.
            self._execute(connection, LOCK_RECORDS, bounds, r=self.decision.context, scope="staged")
        policy = self.run.policy
        archived_members = [
            {"table": table, "key": policy.tables[table].key, "link": column}
            for table, column, action in self._targets()[:-1]
            if action == "erase"
        ]
        context = {"r": self.decision.context, "scope": "staged", "archived_members": archived_members}
        self._execute(connection, RECHECK, self.decision.params | bounds, check=check, **context)

    def _targets(self) -> list[tuple[str, str, str]]:
        """(table, column matched to the candidates, action): a bundle's members first, the rule's table last."""
        policy = self.run.policy
        members = policy.bundles[self.rule.bundle].members if self.rule.bundle else ()
        targets = [(m.table, m.link, "erase" if m.action == "erase" else "pseudonymise") for m in members]
        return [*targets, (self.rule.table, policy.tables[self.rule.table].key, "erase")]

    def _audit(self, connection, bounds: dict, table: str, column: str, action: str) -> int:
        """Write the events of a bundle member's rows about to be erased or pseudonymised; how many."""
        run = self.run
        params = bounds | {
            "recorded_at": now_utc_naive(),
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "rule_id": self.rule.id,
            "action": f"{action}d",
            "table_name": table,
            "policy_version": run.policy.version,
            "as_of": run.as_of_naive,
        }
        key = run.policy.tables[table].key
        return self._execute(connection, AUDIT_BUNDLE_ROWS, params, table=table, key=key, column=column).rowcount

    def _still_pending(self, connection, bounds: dict) -> int:
        """The due candidates of the range not left in place: what the transaction counts as erased."""
        selection = self.selection
        pending = select(func.count()).select_from(selection.pending_due_in(**bounds).subquery())
        return connection.execute(pending).scalar_one()

    def _erase_stored_files(self, connection, bounds: dict) -> None:
        """Erase each record's stored file first; a record whose file cannot be erased stays."""
        spec = self.run.policy.tables[self.rule.table]
        stored = self._execute(
            connection, STORED_FILES, bounds, table=self.rule.table, key=spec.key, column=self.rule.stored_file
        ).all()
        failed = [key for key, location in stored if not erase_stored_file(location, self.run.s3_options)]
        if failed:
            self.selection.mark(failed, "failed", "stored file not erased", connection)

    def left_in_place(self, key_range: KeyRange) -> dict[str, int]:
        with self.run.engine.connect() as connection:
            return self.selection.left_in_place(connection, (DUE,), key_range)

    def _execute(self, connection, template: str, params: dict, **context):
        query = statement(self.run.engine, template, **self.names, **context)
        return connection.execute(query, {"selection_id": self.selection.id} | params)


def erase_stored_file(location: str, s3_options: S3Options | None = None) -> bool:
    """Delete a stored scan; an already missing one counts as erased (a retried run finds it gone)."""
    parsed = urlparse(location or "")
    if parsed.scheme == "s3":
        return _erase_s3_object(parsed.netloc, parsed.path.lstrip("/"), s3_options or S3Options())
    if parsed.scheme != "file":
        return False
    try:
        Path(unquote(parsed.path)).unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _erase_s3_object(bucket: str, key: str, s3_options: S3Options) -> bool:
    """Every version of the object, so that no earlier copy of the scan survives in a versioned bucket."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_options.client()
    try:
        listing = client.list_object_versions(Bucket=bucket, Prefix=key)
        versions = [v for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []) if v["Key"] == key]
        for version in versions:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
        if not versions:
            client.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError):
        return False
    return True


def verify_erased(run: RunContext, rule: Rule) -> dict:
    """Great Expectations on what the database counts: no row recorded as erased remains, none of a
    bundle's rows stays linked to its erased smicer."""
    import pandas

    from lifecycle.expectations import validate_frame

    names = {name: run.tables.qualified(getattr(run.tables, name)) for name in ("erasures", "candidates")}
    checks = [(rule.table, run.policy.tables[rule.table].key)]
    if rule.bundle:
        checks += [(member.table, member.link) for member in run.policy.bundles[rule.bundle].members]
    selection = {"selection_id": Selection.of(run, rule).id}
    with run.engine.connect() as connection:
        remaining = {
            f"remaining_in_{table}": connection.execute(
                statement(run.engine, ERASED_REMAINING, **names, table=table, column=column), selection
            ).scalar_one()
            for table, column in checks
        }
    validate_frame(
        pandas.DataFrame([remaining], dtype="Int64"),
        [{"type": "expect_column_values_to_be_between", "column": name, "max_value": 0} for name in remaining],
        gate=f"{rule.id}/erased",
        artifact_path=run.artifact_path(rule, "gate-erased.json"),
    )
    return {"rule": rule.id, "checked_tables": len(checks)}


def _would_erase(scratch) -> dict:
    """The records that would be erased, and the rows of their bundles erased or pseudonymised with them."""
    erased = {"erased": scratch.counts["due"]}
    if scratch.rule.bundle:
        erased |= {"erased_with_bundle": 0, "pseudonymised": 0}
        for member in scratch.run.policy.bundles[scratch.rule.bundle].members:
            column = "erased_with_bundle" if member.action == "erase" else "pseudonymised"
            erased[column] += scratch.rows_of_due(member.table, member.link)
    return erased


STEPS = {
    "erase": Step(
        "erase", erase_due, _would_erase, "erased", dry_run_columns=("erased", "erased_with_bundle", "pseudonymised")
    ),
    "verify_erase": Step(
        "verify_erase", verify_erased, lambda scratch: {"checked_records": scratch.counts["due"]}, "erase_verified"
    ),
}


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

RECHECK = """\
{# The erase transaction's re-checks of its key range. 'due' (a rule whose erase statement cannot
   re-check for itself, see rechecks_itself), its records locked: the due candidates the database no longer
   finds due now are left in place (marked skipped: gone, or no longer due). 'gone' before the erase
   statement and 'kept' after it, for the others: candidates whose record was gone before, or is still
   there after. 'archive': those still due without the verified archive copy their rule needs. What
   stays pending is what the transaction erases. #}
{% import "decision.sql" as m %}
{% set in_range %}
selection_id = :selection_id AND decision = 'due' AND state = 'pending'
   AND record_key >= :key_from AND record_key < :key_to
{% endset %}
{% if check == 'due' %}
UPDATE {{ r.candidates }}
   SET state = 'skipped',
       reason = CASE WHEN EXISTS (SELECT 1 FROM {{ r.table | q }} t
                                   WHERE t.{{ r.key | q }} = {{ r.candidates }}.record_key)
                     THEN 'no longer due' ELSE 'gone before erasure' END
 WHERE {{ in_range }}
   AND record_key NOT IN (SELECT v.record_key FROM ({{ m.verdicts(r, scope) }}) v WHERE v.verdict = 'due')
{% elif check in ('gone', 'kept') %}
UPDATE {{ r.candidates }}
   SET state = 'skipped', reason = '{{ 'gone before erasure' if check == 'gone' else 'no longer due' }}'
 WHERE {{ in_range }}
   AND {{ 'NOT' if check == 'gone' }} EXISTS (SELECT 1 FROM {{ r.table | q }} t
                   WHERE t.{{ r.key | q }} = {{ r.candidates }}.record_key
                     AND t.{{ r.key | q }} >= :key_from AND t.{{ r.key | q }} < :key_to)
{% else %}
{% macro verified(table, key_expression, in_key_range=false) -%}
EXISTS (SELECT 1 FROM {{ archived_records }} ar JOIN {{ archive_batches }} ab ON ab.batch_key = ar.batch_key
         WHERE ar.table_name = '{{ table }}' AND ar.record_key = {{ key_expression }} AND ab.verified_at IS NOT NULL
{% if in_key_range %}
           AND ar.record_key >= :key_from AND ar.record_key < :key_to
{% endif %}
        )
{%- endmacro %}
{# A record, and each row of its bundle erased with it, needs its verified copy. #}
UPDATE {{ r.candidates }} SET state = 'skipped', reason = 'archive not verified'
 WHERE {{ in_range }} AND retain_until IS NOT NULL
   AND (NOT {{ verified(r.table, r.candidates ~ '.record_key', in_key_range=true) }}
{% for member in archived_members %}
        OR EXISTS (SELECT 1 FROM {{ member.table | q }} bm
                    WHERE bm.{{ member.link | q }} = {{ r.candidates }}.record_key
                      AND NOT {{ verified(member.table, 'bm.' ~ (member.key | q)) }})
{% endfor %}
       )
{% endif %}
"""

ERASE_STAGED = """\
{# What one erase transaction does to the rows of a table whose `column` (the key, or a bundle
   member's link to its smicer) is a due candidate of its key range not left in place: `delete`
   them, or `pseudonymise` a bundle member's rows (the link to the smicer set to NULL).
   `recheck`: the rule's own records, deleted only where still due (decision.sql's still_due), the
   statement's own re-check in place of a locked one before it. #}
{% import "decision.sql" as m %}
{% if action == 'pseudonymise' %}
UPDATE {{ table | q }} AS t SET {{ column | q }} = NULL
{% elif dialect == 'mysql' %}
DELETE t FROM {{ table | q }} t
{% else %}
DELETE FROM {{ table | q }} AS t
{% endif %}
 WHERE t.{{ column | q }} >= :key_from AND t.{{ column | q }} < :key_to
   AND t.{{ column | q }} IN ({{ m.staged_range(candidates) }})
{% if recheck %}
   AND {{ m.still_due(r) }}
{% endif %}
"""

AUDIT_BUNDLE_ROWS = """\
{# One audit event per row of a smicer's bundle one erase transaction erases or pseudonymises with
   them, written by the database before the rows go: run, rule, action, table, key, policy version,
   and the verified archive batch holding the row's copy, if any. (The erased records themselves
   are audited by their erasure: see lifecycle.store's AUDIT_TRAIL_VIEW.) #}
{% import "decision.sql" as m %}
INSERT INTO {{ audit }}
       (recorded_at, dag_id, run_id, rule, action, table_name, record_key, policy_version, archive_batch, as_of)
SELECT :recorded_at, :dag_id, :run_id, :rule_id, :action, :table_name, x.{{ key | q }}, :policy_version,
       ar.batch_key, :as_of
  FROM {{ table | q }} x
  LEFT JOIN {{ archived_records }} ar ON ar.table_name = :table_name AND ar.record_key = x.{{ key | q }}
 WHERE x.{{ column | q }} IN ({{ m.staged_range(candidates) }})
"""

ERASED_REMAINING = """\
{# How many rows are still present (or still linked to their smicer) although recorded as erased:
   due candidates of a done erasure's key range not left in place. Counted range by range, the
   table's rows in the range first: once erased, few remain there to look up among the candidates. #}
SELECT COALESCE(SUM((
         SELECT COUNT(*)
           FROM {{ table | q }} x
           JOIN {{ candidates }} c ON c.selection_id = e.selection_id AND c.record_key = x.{{ column | q }}
          WHERE x.{{ column | q }} >= e.key_from AND x.{{ column | q }} < e.key_to
            AND c.record_key >= e.key_from AND c.record_key < e.key_to
            AND c.decision = 'due' AND c.state = 'pending')), 0)
  FROM {{ erasures }} e
 WHERE e.selection_id = :selection_id AND e.recorded_at IS NOT NULL
"""

STORED_FILES = """\
{# The stored files (scans) of the records one erase transaction is about to erase. #}
{% import "decision.sql" as m %}
SELECT {{ key | q }} AS record_key, {{ column | q }} AS location
  FROM {{ table | q }}
 WHERE {{ key | q }} IN ({{ m.staged_range(candidates) }})
"""
