"""The database decides every record exactly as the reference `decide()` does, record by record.

Records are generated around every boundary of every rule (the edges of each window's due anchors to the microsecond,
month ends, 29 February, midnight, one second before and after, the as-of itself and just after it,
NULLs, several anchor columns, `latest` and `first` picks, the retain_until source), with holds (by
key, by email, by restriction request, on a row of a smicer's bundle), bundle rows later than as-of,
reactivation notices in every state, and on SQLite unreadable timestamps; then, for several as-of
instants, the verdicts of the database (decision.sql) are compared with `decide()`'s on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import pytest
from dateutil.relativedelta import relativedelta
from sqlalchemy import column as sql_column
from sqlalchemy import insert, inspect, table, text

from lifecycle.decide import DUE, HELD, INVALID, NOTIFY, VERDICTS, DecisionStatement, RuleReading, decide, label
from lifecycle.erasing import ERASE_STAGED, rechecks_itself
from lifecycle.periods import due_anchors, epoch_seconds
from lifecycle.reactivation import with_notices
from lifecycle.select import select_candidates
from lifecycle.sql import statement
from lifecycle.store import lifecycle_tables
from tests.lifecycle_helpers import DEFAULTS, POLICY, make_run, naive

AS_OFS = [
    datetime(2025, 2, 28, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, tzinfo=UTC),
    datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 25, tzinfo=UTC),
]
ROWS_PER_RULE = 160
OWNERS = 40
RULES = [rule for rule in POLICY.rules() if rule.action != "purge_archive"]
UNREADABLE = ["not a date", "2025-13-45 10:00:00", "31/01/2025"]


def _palette(as_of: datetime) -> list[datetime]:
    """Instants around the edges of the anchors due as of `as_of` under every period, around the
    as-of itself, and around the calendar's traps."""
    instants = {as_of, as_of - timedelta(seconds=1), as_of + timedelta(microseconds=1), as_of + timedelta(seconds=1)}
    for period in PERIODS:
        for start, end in due_anchors(as_of, period):
            for edge in (end, start or end):
                midnight = edge.replace(hour=0, minute=0, second=0, microsecond=0)
                for delta in (timedelta(0), timedelta(microseconds=1), timedelta(seconds=1), timedelta(days=1)):
                    instants |= {edge - delta, edge + delta, midnight + delta, midnight - delta}
    for day in (date(2024, 2, 29), date(2023, 2, 28), date(2024, 1, 31), date(2025, 2, 28), date(2021, 12, 31)):
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        instants |= {midnight, midnight + timedelta(days=1) - timedelta(microseconds=1), midnight + timedelta(hours=13)}
    return sorted(instants)


PERIODS = [w.period for rule in RULES for w in rule.windows] + [relativedelta(days=30), relativedelta(years=5)]


class Generator:
    """Rows of every rule with values drawn from the palette, and the holds it placed."""

    def __init__(self, engine, rng: random.Random, palette: list[datetime]):
        self.engine = engine
        self.rng = rng
        self.palette = palette
        self.dialect = engine.dialect.name
        self.next_key = 1000
        self.held: dict[tuple[str, int], bool] = {}
        self.rows: dict[str, list[dict]] = defaultdict(list)
        self.held_emails: set[str] = set()
        inspector = inspect(engine)
        self.columns = {name: {c["name"]: c for c in inspector.get_columns(name)} for name in POLICY.tables}

    def key(self) -> int:
        self.next_key += 1
        return self.next_key

    def value(self, table_name: str, column_name: str, *, allow_null: bool = True, readable: bool = False):
        info = self.columns[table_name][column_name]
        if allow_null and info["nullable"] and self.rng.random() < 0.2:
            return None
        instant = self.rng.choice(self.palette)
        if "DATE" == str(info["type"]).upper():
            return instant.date()
        if self.dialect == "sqlite" and not readable and self.rng.random() < 0.03:
            return self.rng.choice(UNREADABLE)
        if self.dialect == "sqlite" and self.rng.random() < 0.05:
            return instant.date().isoformat()  # a DATE as text: 00:00 UTC of that day
        return naive(instant)

    def email(self) -> str:
        address = f"person{self.key()}@example.org"
        if self.rng.random() < 0.1:
            self.held_emails.add(address)
            return f"  {address.upper()} "  # held whatever its case and spaces
        return address

    def add(self, table_name: str, **values) -> int:
        row = DEFAULTS[table_name]() | values
        row["id"] = self.key()
        self.rows[table_name].append(row)
        return row["id"]

    def owners(self) -> list[int]:
        """Smicers owning the rows of the tables that point to one (and a client for their missions)."""
        self.client = self.add("clients")
        created_at = naive(AS_OFS[0]) - timedelta(days=3000)
        return [self.add("smicers", email=self.email(), created_at=created_at) for _ in range(OWNERS)]

    def flush(self) -> None:
        with self.engine.begin() as connection:
            for table_name in ("smicers", "clients", "rights_requests", *self.rows):
                rows = self.rows.pop(table_name, [])
                for row_group in _by_columns(rows):
                    target = table(table_name, *(sql_column(name) for name in row_group[0]))
                    connection.execute(insert(target), row_group)


def _by_columns(rows: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(sorted(row))].append(row)
    return list(groups.values())


def _generate(engine, rng: random.Random, as_of: datetime) -> Generator:
    generator = Generator(engine, rng, _palette(as_of))
    owners = generator.owners()
    for rule in RULES:
        for _ in range(ROWS_PER_RULE):
            _record(generator, rule, owners)
    generator.flush()
    _holds(generator, rng)
    return generator


def _record(generator: Generator, rule, owners: list[int]) -> None:
    spec = POLICY.tables[rule.table]
    values: dict = {}
    if rule.parent:
        parent_values = {c: generator.value(rule.parent.table, c) for c in _read(rule, "p")}
        parent_values = _satisfying(rule, "p", parent_values, generator)
        if rule.parent.table == "clients":
            values[rule.parent.via] = generator.add("clients", **parent_values)
        else:
            values[rule.parent.via] = generator.add(rule.parent.table, email=generator.email(), **parent_values)
    read = set(_read(rule, "t")) | set(spec.event_timestamps)
    for column_name in read:
        values[column_name] = generator.value(rule.table, column_name)
    values = _satisfying(rule, "t", values, generator)
    if spec.email:
        values[spec.email] = generator.email()
    if "smicer_id" in generator.columns[rule.table]:
        values["smicer_id"] = generator.rng.choice(owners)
    key = generator.add(rule.table, **values)
    if rule.bundle:
        _bundle_rows(generator, rule, key)


def _read(rule, alias: str) -> list[str]:
    return [ref.column for ref in rule.read_columns() if ref.alias == alias] + [
        f.column.column for f in rule.filters if f.column.alias == alias and f.op != "eq"
    ]


def _satisfying(rule, alias: str, values: dict, generator: Generator) -> dict:
    """The rule's filters hold for nine records in ten; the tenth must never be decided."""
    keep = generator.rng.random() < 0.9
    for flt in rule.filters:
        if flt.column.alias != alias:
            continue
        if flt.op == "eq":
            values[flt.column.column] = flt.value if keep else "pending"
        elif flt.op == "null":
            values[flt.column.column] = None if keep else naive(AS_OFS[0])
        elif keep and values.get(flt.column.column) is None:
            values[flt.column.column] = generator.value(flt.column.table, flt.column.column, allow_null=False)
        elif not keep:
            values[flt.column.column] = None
    return values


def _bundle_rows(generator: Generator, rule, smicer: int) -> None:
    for member in POLICY.bundles[rule.bundle].members:
        for _ in range(generator.rng.choice((0, 0, 1, 2))):
            # Unreadable text only in the rule's own rows: decide() reads a member table's latest value.
            events = {
                c: generator.value(member.table, c, readable=True) for c in POLICY.tables[member.table].event_timestamps
            }
            row = {member.link: smicer} | events
            if member.table == "missions":
                row["client_id"] = generator.client
            generator.add(member.table, **row)


def _holds(generator: Generator, rng: random.Random) -> None:
    """Legal holds by key (on records and on rows of bundles), by email, and restriction requests."""
    holds = lifecycle_tables(generator.engine).legal_holds
    keyed = []
    with generator.engine.connect() as connection:
        for rule in RULES:
            keys = connection.execute(text(f"SELECT id FROM {rule.table}")).scalars().all()
            keyed += [{"table_name": rule.table, "record_key": k} for k in rng.sample(keys, len(keys) // 12)]
    emails = sorted(generator.held_emails)
    by_email = [{"email_normalized": e} for e in emails[: len(emails) // 2]]
    restrictions = emails[len(emails) // 2 :]
    with generator.engine.begin() as connection:
        common = {"reason": "case 12", "created_at": naive(AS_OFS[-1])}
        connection.execute(insert(holds), [common | h for h in keyed])
        connection.execute(insert(holds), [common | h for h in by_email])
        # A lifted hold holds nothing; this address is held by its restriction request all the same.
        connection.execute(
            insert(holds), [common | {"email_normalized": restrictions[0], "lifted_at": naive(AS_OFS[-1])}]
        )
        for address in restrictions:
            request = DEFAULTS["rights_requests"]() | {
                "email": address.upper(),
                "kind": "restriction",
                "id": generator.key(),
            }
            connection.execute(insert(table("rights_requests", *(sql_column(c) for c in request))), request)


def _notices(generator: Generator, rng: random.Random) -> None:
    """Reactivation notices of every state, dated around the edges of each as-of's grace period."""
    ledger = lifecycle_tables(generator.engine).reactivation_notices
    with generator.engine.connect() as connection:
        smicers = connection.execute(text("SELECT id FROM smicers WHERE closed_at IS NULL")).scalars().all()
    rows = []
    for smicer in rng.sample(smicers, len(smicers) // 2):
        for cycle in range(1, rng.choice((2, 2, 3))):
            notice_as_of = rng.choice(generator.palette)
            rows.append(
                {
                    "rule": "account-inactive",
                    "record_key": smicer,
                    "cycle": cycle,
                    "inactive_since": naive(notice_as_of) - timedelta(days=800),
                    "state": rng.choice(("deferred", "pending", "sent", "undeliverable", "responded", "erased")),
                    "notice_as_of": naive(notice_as_of),
                    "attempts": 1,
                    "dag_id": "retention_account_services",
                    "run_id": "generated",
                    "recorded_at": naive(notice_as_of),
                }
            )
    with generator.engine.begin() as connection:
        connection.execute(insert(ledger), rows)


def _reference(engine, run, rule, held: set[int]) -> dict[int, tuple]:
    """decide() on every record of the rule, read as stored, with the holds as placed."""
    reading = RuleReading.of(POLICY, rule)
    spec = POLICY.tables[rule.table]
    columns = ", ".join(f"{ref.alias}.{ref.column} AS {label(ref)}" for ref in reading.selected)
    join = f" LEFT JOIN {rule.parent.table} p ON p.{rule.parent.key} = t.{rule.parent.via}" if rule.parent else ""
    where = " AND ".join(_filter_sql(f) for f in rule.filters) or "1 = 1"
    with engine.connect() as connection:
        rows = connection.execute(
            text(f"SELECT t.{spec.key} AS record_key, {columns} FROM {rule.table} t{join} WHERE {where}")
        ).mappings()
        latest = _bundle_latest(connection, rule)
        decisions = [
            decide(reading, dict(row) | {"held": row["record_key"] in held}, run.as_of, latest.get(row["record_key"]))
            for row in rows
        ]
        if rule.action == "reactivate":
            decisions = with_notices(connection, run, rule, decisions)
    return {d.record_key: _verdict(d.verdict, d.reason, d.anchor, d.due_at, d.retain_until) for d in decisions}


def _filter_sql(flt) -> str:
    name = f"{flt.column.alias}.{flt.column.column}"
    return {"eq": f"{name} = '{flt.value}'", "null": f"{name} IS NULL", "not_null": f"{name} IS NOT NULL"}[flt.op]


def _bundle_latest(connection, rule) -> dict[int, dict]:
    latest: dict[int, dict] = defaultdict(dict)
    if not rule.bundle:
        return latest
    for member in POLICY.bundles[rule.bundle].members:
        for column_name in POLICY.tables[member.table].event_timestamps:
            query = text(f"SELECT {member.link}, MAX({column_name}) FROM {member.table} GROUP BY {member.link}")
            for owner, value in connection.execute(query):
                latest[owner][f"{member.table}.{column_name}"] = value
    return latest


def _verdict(verdict, reason, anchor, due_at, retain_until) -> tuple:
    acted = verdict in (DUE, HELD, NOTIFY)
    return (
        verdict,
        reason if verdict in (INVALID, HELD) else None,
        epoch_seconds(anchor) if acted else None,
        epoch_seconds(due_at) if acted else None,
        retain_until if verdict == DUE else None,
    )


def _database_verdicts(engine, run, rule) -> dict[int, tuple]:
    decision = DecisionStatement(run, rule)
    query = statement(engine, VERDICTS, r=decision.context, scope="all")
    with engine.connect() as connection:
        rows = connection.execute(query, decision.params).mappings().all()
    return {
        row["record_key"]: _verdict(
            row["verdict"],
            row["reason"],
            row["anchor_epoch"] and datetime.fromtimestamp(row["anchor_epoch"], UTC),
            row["due_epoch"] and datetime.fromtimestamp(row["due_epoch"], UTC),
            _as_date(row["retain_until"]),
        )
        for row in rows
    }


def _as_date(value):
    return date.fromisoformat(value) if isinstance(value, str) else value


def _held_keys(engine, rule) -> set[int]:
    """The records a hold placed by the generator reaches, found without the statement under test."""
    tables = lifecycle_tables(engine)
    holds = tables.qualified(tables.legal_holds)
    spec = POLICY.tables[rule.table]
    held_emails = (
        f"SELECT email_normalized FROM {holds} WHERE lifted_at IS NULL AND email_normalized IS NOT NULL UNION "
        "SELECT LOWER(TRIM(email)) FROM rights_requests WHERE kind = 'restriction' AND status = 'open'"
    )
    with engine.connect() as connection:
        keyed = {
            k
            for (k,) in connection.execute(
                text(f"SELECT record_key FROM {holds} WHERE table_name = :t"), {"t": rule.table}
            )
        }
        emails = set(connection.execute(text(held_emails)).scalars())
        own = {}
        if spec.email:
            own = dict(connection.execute(text(f"SELECT id, {spec.email} FROM {rule.table}")).all())
        owners = {}
        if any(c["name"] == "smicer_id" for c in inspect(engine).get_columns(rule.table)):
            owners = dict(
                connection.execute(
                    text(f"SELECT t.id, s.email FROM {rule.table} t JOIN smicers s ON s.id = t.smicer_id")
                ).all()
            )
        # Smicers a legal hold reaches by key: their own row's, or any row's of their bundle.
        smicer_bundle = POLICY.bundles["smicer"]
        bundle_held = set(
            connection.execute(
                text(f"SELECT record_key FROM {holds} WHERE table_name = 'smicers' AND lifted_at IS NULL")
            ).scalars()
        )
        for member in smicer_bundle.members:
            bundle_held |= set(
                connection.execute(
                    text(
                        f"SELECT m.{member.link} FROM {member.table} m JOIN {holds} h "
                        f"ON h.table_name = :t AND h.record_key = m.id AND h.lifted_at IS NULL"
                    ),
                    {"t": member.table},
                ).scalars()
            )
        members = set()
        if rule.bundle:
            members = bundle_held
        elif owners or POLICY.bundle_membership(rule.table):
            linked = connection.execute(text(f"SELECT id, smicer_id FROM {rule.table}")).all()
            members = {key for key, smicer in linked if smicer in bundle_held}
    normalized = {k: v.strip().lower() for k, v in {**own, **owners}.items() if isinstance(v, str)}
    by_email = {k for k, v in normalized.items() if v in emails}
    return (keyed | by_email | members) if rule.holds else set()


@pytest.mark.parametrize("as_of", AS_OFS, ids=[f"{a:%Y-%m-%dT%H%M%S}" for a in AS_OFS])
def test_the_database_decides_every_record_as_decide_does(engine, tmp_path, as_of):
    rng = random.Random(20261204)
    generator = _generate(engine, rng, as_of)
    _notices(generator, rng)
    run = make_run(engine, as_of, tmp_path, run_id="differential")
    compared = defaultdict(int)
    for rule in RULES:
        expected = _reference(engine, run, rule, _held_keys(engine, rule))
        actual = _database_verdicts(engine, run, rule)
        assert actual == expected, _first_difference(rule, expected, actual)
        staged = select_candidates(run, rule)
        assert staged["due"] == sum(v[0] == DUE for v in expected.values())
        assert staged["invalid"] == sum(v[0] == INVALID for v in expected.values())
        for verdict in actual.values():
            compared[verdict[0]] += 1
        if rechecks_itself(rule):
            assert _erased_by_erase_statement(engine, run, rule) == {k for k, v in expected.items() if v[0] == DUE}
    # Every verdict is exercised, so the comparison above cannot pass vacuously.
    assert all(compared[v] > 10 for v in (DUE, HELD, INVALID, "not_due")), dict(compared)
    assert compared[NOTIFY] > 0, dict(compared)


def _erased_by_erase_statement(engine, run, rule) -> set[int]:
    """What the erase statement's own re-check erases when every record of the rule's table is staged
    as due (rolled back)."""
    tables = lifecycle_tables(engine)
    candidates = tables.qualified(tables.candidates)
    decision = DecisionStatement(run, rule)
    key = POLICY.tables[rule.table].key
    erase = statement(
        engine,
        ERASE_STAGED,
        table=rule.table,
        column=key,
        action="erase",
        recheck=True,
        r=decision.context,
        candidates=candidates,
    )
    with engine.connect() as connection, connection.begin() as transaction:
        everyone = set(connection.execute(text(f"SELECT {key} FROM {rule.table}")).scalars())
        connection.execute(
            text(
                f"INSERT INTO {candidates} (selection_id, record_key, decision, state) "
                f"SELECT -1, {key}, 'due', 'pending' FROM {rule.table}"
            )
        )
        bounds = {"key_from": min(everyone), "key_to": max(everyone) + 1}
        connection.execute(erase, decision.params | bounds | {"selection_id": -1})
        remaining = set(connection.execute(text(f"SELECT {key} FROM {rule.table}")).scalars())
        transaction.rollback()
    return everyone - remaining


def _first_difference(rule, expected: dict, actual: dict) -> str:
    keys = sorted(set(expected) | set(actual))
    for key in keys:
        if expected.get(key) != actual.get(key):
            return f"rule {rule.id}, record {key}: decide() {expected.get(key)} != database {actual.get(key)}"
    return ""
