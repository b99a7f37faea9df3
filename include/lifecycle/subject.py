"""A data subject's request, carried out on the application database (the policy's "Rights of the
data subject"): access and portability (the subject's package), erasure, objection to prospecting,
withdrawal of consent, restriction and its lift.

The records of an address (trimmed, case-insensitive) are found by the policy's tables that declare an
email column. Erasure and objection erase through the retention pipeline itself: each table's records
of the address are a rule of their own (`subject_rules`), anchored on the request's as-of, so that the
select, gate, archive, verify, erase and audit steps, and the holds they honour, are the nightly
rules' own. The address is a bound parameter of the statements and nothing else: it never reaches a
log, XCom, an exception, the report, the certificate or the audit trail."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dateutil.relativedelta import relativedelta

from lifecycle.mail import valid_address
from lifecycle.policy import ArchiveSpec, ColumnRef, Filter, Policy, Rule, Window
from lifecycle.run import RunContext, now_utc_naive
from lifecycle.sql import statement

ACCESS, PORTABILITY, ERASURE = "access", "portability", "erasure"
OBJECTION, WITHDRAW_CONSENT = "objection", "withdraw_consent"
RESTRICTION, LIFT_RESTRICTION = "restriction", "lift_restriction"
KINDS = (ACCESS, PORTABILITY, ERASURE, OBJECTION, WITHDRAW_CONSENT, RESTRICTION, LIFT_RESTRICTION)
# Outcomes: the request carried out, refused in full or in part (what a hold or a safeguard kept), or
# carried out with nothing to act on. A request is answered (its rights_requests row closed) when done
# or nothing was found.
DONE, REFUSED, PARTLY_REFUSED, NOTHING_FOUND = "done", "refused", "partly refused", "nothing found"
ANSWERED = (DONE, NOTHING_FOUND)
# Erasure keeps these tables' records of the address, with the reason the certificate gives.
KEPT_ON_ERASURE = {
    "rights_requests": "kept to track the requests themselves (purpose 'managing rights requests')",
    "prospecting_objections": "kept 3 years so that the objection is honoured (rule objections)",
}
# An objection to prospecting erases the address's records of these tables.
PROSPECTING_TABLES = ("prospects", "newsletter_subscriptions")
# The kind of the rights_requests row a request may name.
REQUEST_ROW_KIND = {LIFT_RESTRICTION: RESTRICTION}
MAX_EMAIL_LENGTH = 320


class RequestRefused(ValueError):
    """A request that cannot be carried out as given; the message never names the address."""


@dataclass(frozen=True)
class SubjectRequest:
    """A validated request: the address trimmed and lower-cased, as the statements compare it."""

    email: str = field(repr=False)
    kind: str
    dry_run: bool
    request_id: int | None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SubjectRequest:
        """The request the trigger form (or --conf) gives, checked before any work."""
        kind = params.get("kind")
        if kind not in KINDS:
            raise RequestRefused(f"parameter kind: not one of {', '.join(KINDS)}")
        raw = params.get("email")
        if raw is None or not str(raw).strip():
            raise RequestRefused("parameter email: missing")
        address = valid_address(raw)
        if address is None or len(address) > MAX_EMAIL_LENGTH:
            raise RequestRefused("parameter email: not an email address (one @, a dotted domain, no spaces)")
        dry_run = params.get("dry_run")
        if dry_run is None:
            dry_run = kind == ERASURE
        if not isinstance(dry_run, bool):
            raise RequestRefused("parameter dry_run: true or false (empty: a dry run for an erasure only)")
        request_id = params.get("request_id")
        if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, int)):
            raise RequestRefused("parameter request_id: the id of a rights_requests row, a whole number")
        return cls(address.lower(), kind, dry_run, request_id)

    def summary(self) -> dict:
        """What may be shown of the request: everything but the address."""
        return {"kind": self.kind, "dry_run": self.dry_run, "request_id": self.request_id}


@dataclass(frozen=True)
class Destinations:
    """Where a request's results go: the subject's package (access, portability), and the key of the
    suppression list's keyed hashes (erasure, objection)."""

    export_uri: str | None = None
    export_s3_options: Any = None
    suppression_key: str | None = field(default=None, repr=False)


def carry_out(run: RunContext, request: SubjectRequest, destinations: Destinations) -> dict:
    """The request carried out (a dry run: what it would do), its outcome recorded: the answer, with
    no personal data: outcome, reason, and per table what was exported, erased, pseudonymised, changed
    or kept and why."""
    if request.kind in (ERASURE, OBJECTION) and not run.dry_run:
        from lifecycle.suppression import checked_key

        checked_key(destinations.suppression_key, "an erasure or an objection adds the address to the suppression list")
    check_request_row(run, request)
    answer = {ACCESS: _package, PORTABILITY: _package, ERASURE: _erase}.get(request.kind, _change)(
        run, request, destinations
    )
    answer = {**request.summary(), "as_of": run.as_of.isoformat(), "policy_version": run.policy.version, **answer}
    record_outcome(run, request, answer["outcome"], answer["reason"], answer)
    return answer


def _package(run: RunContext, request: SubjectRequest, destinations: Destinations) -> dict:
    from lifecycle.report_paths import safe_run_id
    from lifecycle.subject_export import export_subject

    if run.dry_run:
        counts = _records_of(run, request)
        return _answer(DONE if counts else NOTHING_FOUND, None, {t: {"exported": n} for t, n in counts.items()})
    folder = f"{request.kind}-{safe_run_id(run.run_id)}"
    package = export_subject(
        run.engine, run.policy, request.email, destinations.export_uri, folder, destinations.export_s3_options
    )
    tables = {t: {"exported": n} for t, n in package["tables"].items()}
    return _answer(DONE if tables else NOTHING_FOUND, None, tables) | {
        "package": package["location"],
        "language": package.get("language"),
    }


def _erase(run: RunContext, request: SubjectRequest, destinations: Destinations) -> dict:
    before = _records_of(run, request)
    rules = subject_rules(run.policy)
    if not any(before.get(rule.table) for rule in rules):
        return _answer(NOTHING_FOUND, None, _kept_tables(before))
    erasure = _erasure(run, request, rules, before)
    if erasure["erased"] and not run.dry_run:
        _suppress(run, request, destinations, "erased")
    outcome = DONE if not erasure["kept"] else PARTLY_REFUSED if erasure["erased"] else REFUSED
    tables = erasure["tables"] | _kept_tables(before)
    return _answer(outcome, erasure["reason"], tables) | {"archive_batches": erasure["batches"]}


def _change(run: RunContext, request: SubjectRequest, destinations: Destinations) -> dict:
    """Objection, withdrawal of consent, restriction, lift: the change, and what it leaves in force."""
    erasure = {"tables": {}, "erased": 0, "kept": 0, "reason": None}
    if request.kind == OBJECTION:
        rules = subject_rules(run.policy, PROSPECTING_TABLES)
        erasure = _erasure(run, request, rules, _records_of(run, request))
    changed = change_records(run, request)
    if request.kind == OBJECTION and not run.dry_run:
        _suppress(run, request, destinations, "objection")
    table = CHANGED_TABLE[request.kind]
    tables = erasure["tables"] | {table: erasure["tables"].get(table, {}) | {CHANGED[request.kind]: changed}}
    reason = erasure["reason"]
    if request.kind == RESTRICTION and not changed:
        reason = "a restriction is already in force: " + ", ".join(map(str, open_restrictions(run, request)))
    if request.kind == LIFT_RESTRICTION and not changed:
        reason = "no restriction in force for this address; nothing changed"
    if erasure["kept"]:
        return _answer(PARTLY_REFUSED, reason, tables)
    found = changed or erasure["erased"] or request.kind == RESTRICTION
    return _answer(DONE if found else NOTHING_FOUND, reason, tables)


def _erasure(run: RunContext, request: SubjectRequest, rules: list[Rule], before: dict) -> dict:
    """The rules carried out on the address's records (`before`: its records by table): per table what
    was erased, pseudonymised and kept, how many were erased and kept, the holds that kept them, the
    archive batches."""
    outcomes = carry_out_rules(run, rules)
    after = None if run.dry_run else _records_of(run, request)
    tables = _erasure_tables(run.policy, rules, outcomes, before, after)
    kept = sum(outcome.get("held", 0) + outcome.get("invalid", 0) for outcome in outcomes.values())
    reason = None
    if kept:
        holds = holds_on_subject(run, request)
        reason = f"{kept} record(s) kept: " + ("; ".join(holds) if holds else "held, or could not be decided")
    return {
        "tables": tables,
        "erased": sum(entry.get("erased", 0) for entry in tables.values()),
        "kept": kept,
        "reason": reason,
        "batches": [batch for outcome in outcomes.values() for batch in outcome.get("batches", [])],
    }


def _records_of(run: RunContext, request: SubjectRequest) -> dict[str, int]:
    from lifecycle.subject_export import count_subject_records

    return count_subject_records(run.engine, run.policy, request.email)


CHANGED_TABLE = {
    OBJECTION: "prospecting_objections",
    WITHDRAW_CONSENT: "newsletter_subscriptions",
    RESTRICTION: "rights_requests",
    LIFT_RESTRICTION: "rights_requests",
}
CHANGED = {
    OBJECTION: "objection recorded",
    WITHDRAW_CONSENT: "consent withdrawn",
    RESTRICTION: "restriction opened",
    LIFT_RESTRICTION: "restrictions lifted",
}


def _erasure_tables(policy: Policy, rules: list[Rule], outcomes: dict, before: dict, after: dict | None) -> dict:
    """Per table the records erased, pseudonymised and kept (and why) of the rules' outcomes; a dry
    run's bundle rows are the root's, erased with it when it is due."""
    tables: dict[str, dict] = {}
    for rule in rules:
        outcome = outcomes[rule.id]
        kept_why = {"held": outcome.get("held", 0), "could not be decided": outcome.get("invalid", 0)}
        tables[rule.table] = {"erased": outcome.get("erased", 0), "why_kept": {k: n for k, n in kept_why.items() if n}}
        for member in policy.bundles[rule.bundle].members if rule.bundle else ():
            action = "erased" if member.action == "erase" else "pseudonymised"
            if after is None:
                count = before.get(member.table, 0) if outcome.get("erased") else 0
            else:
                count = outcome.get("by_table", {}).get(f"{action}:{member.table}", 0)
            entry = tables.setdefault(member.table, {"why_kept": {}})
            entry[action] = count
            if outcome.get("held") and before.get(member.table):
                entry["why_kept"]["held with the smicer's bundle"] = before[member.table]
    for table, entry in tables.items():
        gone = entry.get("erased", 0) + entry.get("pseudonymised", 0)
        entry["kept"] = after.get(table, 0) if after is not None else max(before.get(table, 0) - gone, 0)
    return tables


def _kept_tables(before: dict) -> dict:
    return {
        table: {"kept": before[table], "why_kept": {reason: before[table]}}
        for table, reason in KEPT_ON_ERASURE.items()
        if before.get(table)
    }


def _answer(outcome: str, reason: str | None, tables: dict) -> dict:
    return {"outcome": outcome, "reason": reason, "tables": tables}


def _suppress(run: RunContext, request: SubjectRequest, destinations: Destinations, reason: str) -> None:
    from lifecycle.suppression import suppress

    with run.engine.begin() as connection:
        suppress(connection, run.tables, request.email, destinations.suppression_key, reason, run.dag_id, run.run_id)


def check_request_row(run: RunContext, request: SubjectRequest) -> None:
    """The rights_requests row a request names must exist, be open, be of its kind and of its address."""
    if request.request_id is None:
        return
    with run.engine.connect() as connection:
        row = connection.execute(statement(run.engine, REQUEST_ROW), _bound(run, request)).mappings().first()
    where = f"request_id {request.request_id}"
    if row is None:
        raise RequestRefused(f"{where}: no such rights_requests row")
    if not row["same_address"]:
        raise RequestRefused(f"{where}: the row is another address's request")
    if row["kind"] != REQUEST_ROW_KIND.get(request.kind, request.kind):
        raise RequestRefused(f"{where}: the row is a request of kind {row['kind']!r}, not {request.kind!r}")
    if row["status"] != "open":
        raise RequestRefused(f"{where}: the request is already {row['status']}")


def subject_rules(policy: Policy, tables: tuple[str, ...] | None = None) -> list[Rule]:
    """One rule per table of the policy that carries an address (or of `tables`): its records of the
    request's address are due at once. The root of a bundle (the smicer) is archived as evidence as the
    bundle's own archive_erase rule does, counted from the as-of, with its bundle."""
    rules = []
    for name, spec in policy.tables.items():
        if not spec.email or name in KEPT_ON_ERASURE or (tables is not None and name not in tables):
            continue
        bundle = next((b for b in policy.bundles.values() if b.root == name), None)
        evidence = bundle and _evidence_rule(policy, bundle.name)
        rules.append(
            Rule(
                id=f"subject-{name}",
                purpose_id="subject_request",
                action="archive_erase" if evidence else "erase",
                table=name,
                windows=(Window((), "first", relativedelta(), "P0D"),),
                filters=(Filter(ColumnRef(name, spec.email, "t"), "subject"),),
                bundle=bundle.name if bundle else None,
                archive=evidence and ArchiveSpec(evidence.archive.retain_for, evidence.archive.retain_for_text, None),
                without_anchor="not_due",
                volume_ceiling=evidence.volume_ceiling if evidence else Rule.volume_ceiling,
                batch_size=evidence.batch_size if evidence else Rule.batch_size,
            )
        )
    return rules


def _evidence_rule(policy: Policy, bundle: str) -> Rule | None:
    """The rule archiving and erasing a bundle as evidence (account-closed): its retention serves erasure."""
    return next((r for r in policy.rules() if r.bundle == bundle and r.action == "archive_erase"), None)


def carry_out_rules(run: RunContext, rules: list[Rule]) -> dict[str, dict]:
    """Each rule through the pipeline's steps (a dry run: what each would do), by rule id: the
    table's erased, pseudonymised and kept counts, held and invalid records, archive batches."""
    from lifecycle.pipeline import run_rule
    from lifecycle.preview import preview_rule
    from lifecycle.reporting import rule_report

    outcomes = {}
    for rule in rules:
        if run.dry_run:
            would_do = preview_rule(run, rule)
            outcomes[rule.id] = {**would_do["select"], **would_do["erase"], "batches": []}
        else:
            run_rule(run, rule)
            outcomes[rule.id] = rule_report(run, rule)
    return outcomes


def change_records(run: RunContext, request: SubjectRequest) -> int:
    """Objection, withdrawal of consent, restriction or its lift, in the caller's transaction: how many
    rows it changes (a dry run: would change)."""
    template = CHANGES[request.kind]
    with run.engine.begin() as connection:
        if run.dry_run:
            count = connection.execute(statement(run.engine, template, count=True), _bound(run, request))
            return count.scalar_one()
        return connection.execute(statement(run.engine, template, count=False), _bound(run, request)).rowcount


def open_restrictions(run: RunContext, request: SubjectRequest) -> list[int]:
    """The ids of the open restriction requests of the address: the holds a restriction keeps in force."""
    with run.engine.connect() as connection:
        return list(connection.execute(statement(run.engine, OPEN_RESTRICTIONS), _bound(run, request)).scalars())


def holds_on_subject(run: RunContext, request: SubjectRequest) -> list[str]:
    """What holds the address's records: open restriction requests and active legal holds, by id."""
    held = [f"restriction request {request_id}" for request_id in open_restrictions(run, request)]
    with run.engine.connect() as connection:
        holds = connection.execute(
            statement(run.engine, LEGAL_HOLDS_ON_SUBJECT, holds=run.tables.qualified(run.tables.legal_holds)),
            _bound(run, request),
        ).scalars()
        return held + [f"legal hold {hold_id}" for hold_id in holds]


def record_outcome(run: RunContext, request: SubjectRequest, outcome: str, reason: str | None, certificate: dict):
    """Write the request's outcome and certificate with the audit trail, and close the rights_requests
    row it serves when it was answered; one transaction. A dry run records nothing."""
    if run.dry_run:
        return
    requests = run.tables.subject_requests
    with run.engine.begin() as connection:
        connection.execute(requests.delete().where(requests.c.dag_id == run.dag_id, requests.c.run_id == run.run_id))
        connection.execute(
            requests.insert().values(
                dag_id=run.dag_id,
                run_id=run.run_id,
                kind=request.kind,
                request_id=request.request_id,
                as_of=run.as_of_naive,
                policy_version=run.policy.version,
                outcome=outcome,
                reason=reason,
                certificate=json.dumps(certificate, default=str),
                recorded_at=now_utc_naive(),
            )
        )
        if request.request_id is not None and outcome in ANSWERED and request.kind != RESTRICTION:
            connection.execute(statement(run.engine, CLOSE_REQUEST), _bound(run, request))


def _bound(run: RunContext, request: SubjectRequest) -> dict:
    return {"email": request.email, "as_of": run.as_of_naive, "request_id": request.request_id, "today": run.today}


# The statements this module runs: Jinja templates (lifecycle.sql). The application's tables are
# named as in its schema; `email` is the request's address, trimmed and lower-cased.

REQUEST_ROW = """\
SELECT kind, status, CASE WHEN LOWER(TRIM(email)) = :email THEN 1 ELSE 0 END AS same_address
  FROM rights_requests WHERE id = :request_id
"""

OPEN_RESTRICTIONS = """\
SELECT id FROM rights_requests
 WHERE LOWER(TRIM(email)) = :email AND kind = 'restriction' AND status = 'open'
 ORDER BY id
"""

LEGAL_HOLDS_ON_SUBJECT = """\
{# The active legal holds on the address (the smicer's bundle and records by table and key are
   counted by the rules' own held verdicts). #}
SELECT id FROM {{ holds }}
 WHERE email_normalized = :email AND lifted_at IS NULL AND (until IS NULL OR until > :today)
 ORDER BY id
"""

CLOSE_REQUEST = """\
UPDATE rights_requests SET status = 'done', closed_at = :as_of WHERE id = :request_id AND status = 'open'
"""

# Each: `count` the rows it would change (a dry run), else change them. An added row's id follows
# the table's highest, read in the same statement (the application's tables have no sequence).
CHANGES = {
    OBJECTION: """\
{# An objection to prospecting, dated as-of (its records are erased by the subject rules). #}
{% if count %}SELECT COUNT(*) FROM (SELECT 1 AS one) x WHERE{% else %}
INSERT INTO prospecting_objections (id, email, objected_at)
SELECT n.next_id, :email, :as_of
  FROM (SELECT COALESCE(MAX(id), 0) + 1 AS next_id FROM prospecting_objections) n
 WHERE{% endif %}
 NOT EXISTS (SELECT 1 FROM prospecting_objections o WHERE LOWER(TRIM(o.email)) = :email AND o.objected_at = :as_of)
""",
    WITHDRAW_CONSENT: """\
{% if count %}SELECT COUNT(*) FROM{% else %}UPDATE{% endif %} newsletter_subscriptions
{% if not count %}   SET withdrawn_at = :as_of{% endif %}
 WHERE LOWER(TRIM(email)) = :email AND withdrawn_at IS NULL
""",
    RESTRICTION: """\
{# A hold on the address: an open restriction request, unless one is open already (or the request
   names its own row, which is that hold). #}
{% if count %}SELECT COUNT(*) FROM (SELECT 1 AS one) x WHERE{% else %}
INSERT INTO rights_requests (id, email, kind, status, received_at)
SELECT n.next_id, :email, 'restriction', 'open', :as_of
  FROM (SELECT COALESCE(MAX(id), 0) + 1 AS next_id FROM rights_requests) n
 WHERE{% endif %}
 NOT EXISTS (SELECT 1 FROM rights_requests r
              WHERE LOWER(TRIM(r.email)) = :email AND r.kind = 'restriction' AND r.status = 'open')
""",
    LIFT_RESTRICTION: """\
{% if count %}SELECT COUNT(*) FROM rights_requests{% else %}
UPDATE rights_requests SET status = 'done', closed_at = :as_of{% endif %}
 WHERE LOWER(TRIM(email)) = :email AND kind = 'restriction' AND status = 'open'
""",
}
