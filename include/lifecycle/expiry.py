"""`archive-expiry`: purge each archive batch whose retain_until has come, whole (on S3 every
version, parts before the manifest), unless it holds a held record. A purge that fails, such as
one an Object Lock retention or legal hold refuses, is counted and named in the report, and the
sweep goes on."""

from __future__ import annotations

from collections import Counter
from datetime import date

from sqlalchemy import insert, select, update

from lifecycle.decide import holds_context
from lifecycle.periods import utc_date
from lifecycle.policy import Rule
from lifecycle.rows import email_digest
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.sql import statement
from lifecycle.step import Step
from lifecycle.stores import ArchiveError, open_archive_store


def purge_expired(run: RunContext, rule: Rule) -> dict:
    store = open_archive_store(run.archive_uri, run.s3_options)
    as_of_date = utc_date(run.as_of)
    held = _held_subjects(run)
    counts: Counter[str] = Counter()
    failed: list[str] = []
    for batch_key in store.batch_keys():
        manifest = store.read_manifest(batch_key) or {}
        if date.fromisoformat(manifest.get("retain_until", "9999-12-31")) > as_of_date:
            counts["kept"] += 1
        elif _holds_held_record(run, batch_key, held):
            counts["held"] += 1
        elif run.dry_run:
            counts["purged"] += 1
        else:
            try:
                store.delete_batch(batch_key, [part["key"] for part in manifest.get("files", [])])
            except (ArchiveError, OSError):
                counts["purge_failed"] += 1
                failed.append(batch_key)
                continue
            _record_purge(run, rule, batch_key)
            counts["purged"] += 1
    return {"rule": rule.id, **counts} | ({"purge_failed_batches": failed} if failed else {})


def _held_subjects(run: RunContext) -> tuple[set[str], set[tuple[str, int]]]:
    """Digests of the emails held now, and the records held by an operator's legal hold."""
    context, params = holds_context(run.policy, run.tables)
    query = statement(run.engine, HELD_EMAILS, r={"holds": context})
    params |= {"today": run.today}
    holds = run.tables.legal_holds
    with run.engine.connect() as connection:
        emails = {email_digest(email) for (email,) in connection.execute(query, params)}
        records = set(
            connection.execute(
                select(holds.c.table_name, holds.c.record_key).where(
                    holds.c.record_key.is_not(None),
                    holds.c.lifted_at.is_(None),
                    holds.c.until.is_(None) | (holds.c.until > run.today),
                )
            ).all()
        )
    return {digest for digest in emails if digest}, records


def _holds_held_record(run: RunContext, batch_key: str, held: tuple[set[str], set[tuple[str, int]]]) -> bool:
    digests, records = held
    archived = run.tables.archived_records
    with run.engine.connect() as connection:
        rows = connection.execute(
            select(archived.c.table_name, archived.c.record_key, archived.c.subject_digest).where(
                archived.c.batch_key == batch_key
            )
        )
        return any(digest in digests or (table, key) in records for table, key, digest in rows)


def _record_purge(run: RunContext, rule: Rule, batch_key: str) -> None:
    batches, audit = run.tables.archive_batches, run.tables.audit_events
    with run.engine.begin() as connection:
        connection.execute(update(batches).where(batches.c.batch_key == batch_key).values(purged_at=now_utc_naive()))
        connection.execute(
            insert(audit).values(
                recorded_at=now_utc_naive(),
                dag_id=run.dag_id,
                run_id=run.run_id,
                rule=rule.id,
                action="purged",
                policy_version=run.policy.version,
                archive_batch=batch_key,
                as_of=run.as_of_naive,
            )
        )


# In a dry run, the purge itself counts what it would purge and writes nothing.
STEPS = {"purge": Step("purge", purge_expired, None, None, dry_run_columns=("purged",))}


# The statements this module runs: Jinja templates (lifecycle.sql), importing include/sql/'s macros.

HELD_EMAILS = """\
{# The trimmed, lower-cased emails held now (open restriction requests, active legal holds). #}
{% import "decision.sql" as m %}
{{ m.held_emails(r.holds) }}
"""
