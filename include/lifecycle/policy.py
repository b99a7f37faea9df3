"""The policy file: loaded, checked field by field, and checked against the live database."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from dateutil.relativedelta import relativedelta

from lifecycle.periods import add_period, parse_period

DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[1] / "policy" / "smice.yaml"
# The sections of the policy file's `readings`.
READINGS = ("choices", "conservative")
ACTIONS = ("erase", "archive_erase", "reactivate", "purge_archive")
FILTER_OPS = ("eq", "null", "not_null")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_LANGUAGE = re.compile(r"^[a-z]{2}$")
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# The fields of a purpose's `answer_deadlines`; its `standing_kinds` may be left out (none).
ANSWER_DEADLINE_REQUIRED = ("table", "received", "status", "kind", "answer_within", "warn_before")
# Where two periods are compared (a warning must come before its deadline): any fixed instant does.
_PERIOD_ORIGIN = datetime(2001, 1, 1, tzinfo=UTC)


class PolicyError(ValueError):
    """The policy file is wrong; the message names the rule (or section) and the field."""


@dataclass(frozen=True)
class ColumnRef:
    table: str
    column: str
    alias: str  # "t" for the rule's table, "p" for its parent


@dataclass(frozen=True)
class Filter:
    column: ColumnRef
    op: str
    value: str | None = None


@dataclass(frozen=True)
class Window:
    """A record's anchor is the first set column (pick "first") or the latest (pick "latest"); a window
    without columns (a data subject's request, lifecycle.subject) is anchored on the run's as-of."""

    columns: tuple[ColumnRef, ...]
    pick: str
    period: relativedelta
    period_text: str


@dataclass(frozen=True)
class ArchiveSpec:
    retain_for: relativedelta
    retain_for_text: str
    source: ColumnRef | None  # None: counted from the run's as-of


@dataclass(frozen=True)
class Parent:
    table: str
    key: str
    via: str


@dataclass(frozen=True)
class VolumeCeiling:
    count: int
    share: float


@dataclass(frozen=True)
class TableSpec:
    name: str
    key: str
    email: str | None
    event_timestamps: tuple[str, ...]
    chronology: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class BundleMember:
    table: str
    link: str
    action: str  # erase | pseudonymise


@dataclass(frozen=True)
class Bundle:
    name: str
    root: str
    members: tuple[BundleMember, ...]


@dataclass(frozen=True)
class NoticeSpec:
    """The reactivation email of a reactivate rule: its templates and the columns it reads."""

    template: str
    first_name: str
    locale: str
    languages: tuple[str, ...]  # the first is the default
    contact: str


@dataclass(frozen=True)
class Rule:
    id: str
    purpose_id: str
    action: str
    table: str | None = None
    windows: tuple[Window, ...] = ()
    filters: tuple[Filter, ...] = ()
    parent: Parent | None = None
    bundle: str | None = None
    archive: ArchiveSpec | None = None
    stored_file: str | None = None
    holds: bool = True
    without_anchor: str = "invalid"
    grace_period: relativedelta | None = None
    grace_period_text: str | None = None
    notice: NoticeSpec | None = None
    volume_ceiling: VolumeCeiling = VolumeCeiling(50, 0.2)
    batch_size: int = 500
    choice: str | None = None
    seed_text: str | None = None

    @property
    def archives(self) -> bool:
        return self.archive is not None

    def read_columns(self) -> tuple[ColumnRef, ...]:
        """Every column a decision reads: all anchor columns (fallbacks too) and the retain_until source."""
        refs = [ref for window in self.windows for ref in window.columns]
        if self.archive and self.archive.source:
            refs.append(self.archive.source)
        return tuple(dict.fromkeys(refs))


@dataclass(frozen=True)
class AnswerDeadlines:
    """A purpose's requests that must be answered in time (GDPR art. 12(3): one month from receipt):
    the rows of `table` whose `status_column` holds `open_value` are listed in every run's report with
    their deadline, `received` + `answer_within`, flagged from `warn_before` it. The `standing_kinds`
    stay open on purpose (a restriction holds until lifted): listed apart, without a deadline."""

    table: str
    key: str
    received: str
    status_column: str
    open_value: str
    kind: str
    answer_within: relativedelta
    answer_within_text: str
    warn_before: relativedelta
    warn_before_text: str
    standing_kinds: tuple[str, ...]


@dataclass(frozen=True)
class Purpose:
    id: str
    dag_id: str
    title: str
    legal_basis: str
    seed_reference: str
    rules: tuple[Rule, ...]
    answer_deadlines: AnswerDeadlines | None = None


@dataclass(frozen=True)
class RestrictionHolds:
    table: str
    email: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Policy:
    name: str
    seed: str
    in_force_since: str
    version: str
    path: Path
    tables: dict[str, TableSpec]
    bundles: dict[str, Bundle]
    restriction_holds: RestrictionHolds
    purposes: tuple[Purpose, ...]
    # The readings taken where the seed is silent or ambiguous, for the policy's documentation:
    # {"choices": (...), "conservative": (...)}.
    readings: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def rules(self) -> tuple[Rule, ...]:
        return tuple(rule for purpose in self.purposes for rule in purpose.rules)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules():
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def bundle_membership(self, table: str) -> tuple[Bundle, BundleMember] | None:
        """The bundle a table's rows belong to as a member, if any."""
        for bundle in self.bundles.values():
            for member in bundle.members:
                if member.table == table:
                    return bundle, member
        return None


def load_policy(path: Path | str | None = None) -> Policy:
    """Read and check a policy file; raise PolicyError naming the rule and field at fault."""
    policy_path = Path(path) if path else DEFAULT_POLICY_PATH
    try:
        content = policy_path.read_bytes()
    except OSError as error:
        raise PolicyError(f"policy file {policy_path}: cannot be read ({error.strerror})") from None
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as error:
        raise PolicyError(f"policy file {policy_path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy file {policy_path}: expected a mapping at the top level")
    return _PolicyReader(data, policy_path, hashlib.sha256(content).hexdigest()).read()


class _PolicyReader:
    def __init__(self, data: dict, path: Path, version: str):
        self.data = data
        self.path = path
        self.version = version

    def fail(self, where: str, field_name: str, problem: str) -> PolicyError:
        return PolicyError(f"policy {self.path.name}: {where}: field '{field_name}': {problem}")

    def read(self) -> Policy:
        for name in ("name", "tables", "purposes"):
            if name not in self.data:
                raise self.fail("top level", name, "missing")
        defaults = self.data.get("defaults") or {}
        self.default_ceiling = self._ceiling(defaults.get("volume_ceiling", {}), "defaults")
        self.default_batch_size = self._positive_int(defaults.get("batch_size", 500), "defaults", "batch_size")
        self.tables = {name: self._table(name, spec) for name, spec in self.data["tables"].items()}
        self.bundles = {name: self._bundle(name, spec) for name, spec in (self.data.get("bundles") or {}).items()}
        purposes = tuple(self._purpose(spec) for spec in self.data["purposes"])
        self._unique([rule.id for purpose in purposes for rule in purpose.rules], "rule id")
        self._unique([purpose.dag_id for purpose in purposes], "dag_id")
        return Policy(
            name=str(self.data["name"]),
            seed=str(self.data.get("seed", "")),
            in_force_since=str(self.data.get("in_force_since", "")),
            version=self.version,
            path=self.path,
            tables=self.tables,
            bundles=self.bundles,
            restriction_holds=self._restriction_holds(),
            purposes=purposes,
            readings=self._readings(self.data.get("readings") or {}),
        )

    def _readings(self, readings: object) -> dict[str, tuple[str, ...]]:
        if not isinstance(readings, dict) or set(readings) - set(READINGS):
            raise self.fail("top level", "readings", f"expected a mapping of {' and '.join(READINGS)}")
        lists = {name: readings.get(name) or [] for name in READINGS}
        for name, texts in lists.items():
            if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
                raise self.fail("readings", name, "expected a list of texts")
        return {name: tuple(texts) for name, texts in lists.items()}

    def _unique(self, values: list[str], what: str) -> None:
        seen = set()
        for value in values:
            if value in seen:
                raise self.fail("top level", what, f"{value!r} appears twice")
            seen.add(value)

    def _identifier(self, value: object, where: str, field_name: str) -> str:
        if not isinstance(value, str) or not _IDENTIFIER.match(value):
            raise self.fail(where, field_name, f"{value!r} is not a plain SQL identifier")
        return value

    def _positive_int(self, value: object, where: str, field_name: str) -> int:
        if not isinstance(value, int) or value <= 0:
            raise self.fail(where, field_name, f"{value!r} is not a positive whole number")
        return value

    def _period(self, value: object, where: str, field_name: str) -> relativedelta:
        try:
            return parse_period(str(value))
        except ValueError as error:
            raise self.fail(where, field_name, str(error)) from None

    def _ceiling(self, spec: dict, where: str, fallback: VolumeCeiling | None = None) -> VolumeCeiling:
        base = fallback or VolumeCeiling(50, 0.2)
        count = spec.get("count", base.count)
        share = spec.get("share", base.share)
        if not isinstance(count, int) or count < 0:
            raise self.fail(where, "volume_ceiling.count", f"{count!r} is not a whole number >= 0")
        if not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise self.fail(where, "volume_ceiling.share", f"{share!r} is not a share between 0 and 1")
        return VolumeCeiling(count, float(share))

    def _table(self, name: str, spec: dict) -> TableSpec:
        where = f"table '{name}'"
        self._identifier(name, where, "name")
        if not isinstance(spec, dict) or "key" not in spec:
            raise self.fail(where, "key", "missing")
        chronology = tuple(
            (self._identifier(a, where, "chronology"), self._identifier(b, where, "chronology"))
            for a, b in spec.get("chronology", [])
        )
        return TableSpec(
            name=name,
            key=self._identifier(spec["key"], where, "key"),
            email=self._identifier(spec["email"], where, "email") if spec.get("email") else None,
            event_timestamps=tuple(
                self._identifier(c, where, "event_timestamps") for c in spec.get("event_timestamps", [])
            ),
            chronology=chronology,
        )

    def _bundle(self, name: str, spec: dict) -> Bundle:
        where = f"bundle '{name}'"
        root = spec.get("root")
        if root not in self.tables:
            raise self.fail(where, "root", f"{root!r} is not a table of the policy's 'tables'")
        members = []
        for member in spec.get("members", []):
            if member.get("table") not in self.tables:
                raise self.fail(where, "members.table", f"{member.get('table')!r} is not a table of 'tables'")
            if member.get("action") not in ("erase", "pseudonymise"):
                raise self.fail(where, "members.action", f"{member.get('action')!r}: use erase or pseudonymise")
            members.append(
                BundleMember(member["table"], self._identifier(member.get("link"), where, "link"), member["action"])
            )
        return Bundle(name, root, tuple(members))

    def _restriction_holds(self) -> RestrictionHolds:
        spec = (self.data.get("holds") or {}).get("restriction_requests")
        if not spec:
            raise self.fail("holds", "restriction_requests", "missing")
        table = spec.get("table")
        if table not in self.tables:
            raise self.fail("holds", "restriction_requests.table", f"{table!r} is not a table of 'tables'")
        filters = tuple(self._filter(f, table, None, "holds") for f in spec.get("where", []))
        return RestrictionHolds(table, self._identifier(spec.get("email"), "holds", "email"), filters)

    def _purpose(self, spec: dict) -> Purpose:
        where = f"purpose '{spec.get('id')}'"
        for name in ("id", "dag_id", "title", "legal_basis", "rules"):
            if not spec.get(name):
                raise self.fail(where, name, "missing")
        rules = tuple(self._rule(rule, spec["id"]) for rule in spec["rules"])
        return Purpose(
            spec["id"],
            spec["dag_id"],
            spec["title"],
            spec["legal_basis"],
            spec.get("seed_reference", ""),
            rules,
            self._answer_deadlines(spec.get("answer_deadlines"), where),
        )

    def _answer_deadlines(self, spec: object, where: str) -> AnswerDeadlines | None:
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise self.fail(where, "answer_deadlines", "expected a mapping")
        unknown = sorted(set(spec) - {*ANSWER_DEADLINE_REQUIRED, "standing_kinds"})
        if unknown:
            raise self.fail(where, f"answer_deadlines.{unknown[0]}", "unknown field")
        for name in ANSWER_DEADLINE_REQUIRED:
            if spec.get(name) is None:
                raise self.fail(where, f"answer_deadlines.{name}", "missing")
        table = spec["table"]
        if table not in self.tables:
            raise self.fail(where, "answer_deadlines.table", f"{table!r} is not a table of the policy's 'tables'")
        status = spec["status"]
        if not isinstance(status, dict) or set(status) != {"column", "open"}:
            raise self.fail(where, "answer_deadlines.status", f"{status!r}: expected {{column: ..., open: ...}}")
        answer_within = self._period(spec["answer_within"], where, "answer_deadlines.answer_within")
        warn_before = self._period(spec["warn_before"], where, "answer_deadlines.warn_before")
        if add_period(_PERIOD_ORIGIN, answer_within) <= _PERIOD_ORIGIN:
            raise self.fail(where, "answer_deadlines.answer_within", "must be a period longer than zero")
        if add_period(_PERIOD_ORIGIN, warn_before) >= add_period(_PERIOD_ORIGIN, answer_within):
            raise self.fail(where, "answer_deadlines.warn_before", "must be shorter than answer_within")
        return AnswerDeadlines(
            table=table,
            key=self.tables[table].key,
            received=self._identifier(spec["received"], where, "answer_deadlines.received"),
            status_column=self._identifier(status["column"], where, "answer_deadlines.status.column"),
            open_value=self._value(status["open"], where, "answer_deadlines.status.open"),
            kind=self._identifier(spec["kind"], where, "answer_deadlines.kind"),
            answer_within=answer_within,
            answer_within_text=str(spec["answer_within"]),
            warn_before=warn_before,
            warn_before_text=str(spec["warn_before"]),
            standing_kinds=self._values(spec.get("standing_kinds", []), where, "answer_deadlines.standing_kinds"),
        )

    def _value(self, value: object, where: str, field_name: str) -> str:
        if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
            raise self.fail(where, field_name, f"{value!r} is not a value a column holds (text or a whole number)")
        return str(value)

    def _values(self, values: object, where: str, field_name: str) -> tuple[str, ...]:
        if not isinstance(values, list):
            raise self.fail(where, field_name, f"{values!r} is not a list")
        return tuple(self._value(value, where, field_name) for value in values)

    def _rule(self, spec: dict, purpose_id: str) -> Rule:
        rule_id = spec.get("id")
        where = f"rule '{rule_id}'"
        if not rule_id:
            raise self.fail(f"purpose '{purpose_id}'", "rules.id", "missing")
        known = {
            "id",
            "table",
            "where",
            "anchor",
            "period",
            "windows",
            "action",
            "bundle",
            "archive",
            "parent",
            "stored_file",
            "holds",
            "without_anchor",
            "grace_period",
            "choice",
            "seed_text",
            "volume_ceiling",
            "batch_size",
            "notice",
        }
        unknown = sorted(set(spec) - known)
        if unknown:
            raise self.fail(where, unknown[0], "unknown field")
        action = spec.get("action")
        if action not in ACTIONS:
            raise self.fail(where, "action", f"{action!r} is not one of {', '.join(ACTIONS)}")
        common = {
            "id": rule_id,
            "purpose_id": purpose_id,
            "action": action,
            "choice": spec.get("choice"),
            "seed_text": spec.get("seed_text"),
        }
        if action == "purge_archive":
            return Rule(**common)
        table = spec.get("table")
        if table not in self.tables:
            raise self.fail(where, "table", f"{table!r} is not a table of the policy's 'tables'")
        parent = self._parent(spec.get("parent"), where)
        grace = spec.get("grace_period")
        if action == "reactivate" and grace is None:
            raise self.fail(where, "grace_period", "missing (the reactivation cycle needs one)")
        if action == "reactivate" and not spec.get("notice"):
            raise self.fail(where, "notice", "missing (the reactivation cycle sends one)")
        if action == "reactivate" and not self.tables[table].email:
            raise self.fail(where, "table", f"table {table!r} declares no email column to send the notice to")
        if action in ("archive_erase", "reactivate") and not spec.get("archive"):
            raise self.fail(where, "archive", f"missing (action {action} archives)")
        bundle = spec.get("bundle")
        if bundle is not None and (bundle not in self.bundles or self.bundles[bundle].root != table):
            raise self.fail(where, "bundle", f"{bundle!r} is not a bundle rooted at table {table!r}")
        without_anchor = spec.get("without_anchor", "invalid")
        if without_anchor not in ("invalid", "not_due"):
            raise self.fail(where, "without_anchor", f"{without_anchor!r}: use invalid or not_due")
        return Rule(
            **common,
            table=table,
            windows=self._windows(spec, table, parent, where),
            filters=tuple(self._filter(f, table, parent, where) for f in spec.get("where", [])),
            parent=parent,
            bundle=bundle,
            archive=self._archive(spec.get("archive"), table, parent, where),
            stored_file=self._identifier(spec["stored_file"], where, "stored_file")
            if spec.get("stored_file")
            else None,
            holds=bool(spec.get("holds", True)),
            without_anchor=without_anchor,
            grace_period=self._period(grace, where, "grace_period") if grace is not None else None,
            grace_period_text=str(grace) if grace is not None else None,
            notice=self._notice(spec.get("notice"), where),
            volume_ceiling=self._ceiling(spec.get("volume_ceiling", {}), where, self.default_ceiling),
            batch_size=self._positive_int(spec.get("batch_size", self.default_batch_size), where, "batch_size"),
        )

    def _notice(self, spec: dict | None, where: str) -> NoticeSpec | None:
        if spec is None:
            return None
        languages = spec.get("languages")
        if not isinstance(languages, list) or not languages or not all(_LANGUAGE.match(str(x)) for x in languages):
            raise self.fail(where, "notice.languages", f"{languages!r} is not a list of two-letter language codes")
        contact = str(spec.get("contact", ""))
        if not _ADDRESS.match(contact):
            raise self.fail(where, "notice.contact", f"{contact!r} is not an email address")
        return NoticeSpec(
            template=self._identifier(spec.get("template"), where, "notice.template"),
            first_name=self._identifier(spec.get("first_name"), where, "notice.first_name"),
            locale=self._identifier(spec.get("locale"), where, "notice.locale"),
            languages=tuple(str(x) for x in languages),
            contact=contact,
        )

    def _parent(self, spec: dict | None, where: str) -> Parent | None:
        if spec is None:
            return None
        if spec.get("table") not in self.tables:
            raise self.fail(where, "parent.table", f"{spec.get('table')!r} is not a table of 'tables'")
        return Parent(
            spec["table"],
            self._identifier(spec.get("key"), where, "parent.key"),
            self._identifier(spec.get("via"), where, "parent.via"),
        )

    def _column(self, name: object, table: str, parent: Parent | None, where: str, field_name: str) -> ColumnRef:
        text = str(name)
        if "." in text:
            owner, column = text.split(".", 1)
            if parent is None or owner != parent.table:
                raise self.fail(where, field_name, f"{text!r}: only the rule's parent table may qualify a column")
            return ColumnRef(owner, self._identifier(column, where, field_name), "p")
        return ColumnRef(table, self._identifier(text, where, field_name), "t")

    def _filter(self, spec: dict, table: str, parent: Parent | None, where: str) -> Filter:
        op = spec.get("op")
        if op not in FILTER_OPS:
            raise self.fail(where, "where.op", f"{op!r} is not one of {', '.join(FILTER_OPS)}")
        if op == "eq" and "value" not in spec:
            raise self.fail(where, "where.value", "missing for op eq")
        column = self._column(spec.get("column"), table, parent, where, "where.column")
        return Filter(column, op, str(spec["value"]) if op == "eq" else None)

    def _windows(self, spec: dict, table: str, parent: Parent | None, where: str) -> tuple[Window, ...]:
        if "windows" in spec:
            if "anchor" in spec or "period" in spec:
                raise self.fail(where, "windows", "give either windows or anchor and period, not both")
            entries = spec["windows"]
        else:
            entries = [{"anchor": spec.get("anchor"), "period": spec.get("period")}]
        return tuple(self._window(entry, table, parent, where) for entry in entries)

    def _window(self, spec: dict, table: str, parent: Parent | None, where: str) -> Window:
        anchor = spec.get("anchor")
        if spec.get("period") is None:
            raise self.fail(where, "period", "missing")
        pick, names = "first", anchor
        if isinstance(anchor, dict) and list(anchor) == ["latest"]:
            pick, names = "latest", anchor["latest"]
        if not isinstance(names, list) or not names:
            raise self.fail(where, "anchor", "expected a list of columns or {latest: [columns]}")
        columns = tuple(self._column(name, table, parent, where, "anchor") for name in names)
        return Window(columns, pick, self._period(spec["period"], where, "period"), str(spec["period"]))

    def _archive(self, spec: dict | None, table: str, parent: Parent | None, where: str) -> ArchiveSpec | None:
        if spec is None:
            return None
        source = spec.get("from")
        if source is None:
            raise self.fail(where, "archive.from", "missing (a column, or as_of)")
        ref = None if source == "as_of" else self._column(source, table, parent, where, "archive.from")
        retain_for = spec.get("retain_for")
        return ArchiveSpec(self._period(retain_for, where, "archive.retain_for"), str(retain_for), ref)


def validate_against_database(policy: Policy, engine) -> None:
    """Every table and column the policy names exists in the live database."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    present = set(inspector.get_table_names())
    columns: dict[str, set[str]] = {}

    def require(where: str, field_name: str, table: str, column: str | None = None) -> None:
        if table not in present:
            raise PolicyError(
                f"policy {policy.path.name}: {where}: field '{field_name}': table {table!r} not in the database"
            )
        if column is None:
            return
        if table not in columns:
            columns[table] = {c["name"] for c in inspector.get_columns(table)}
        if column not in columns[table]:
            raise PolicyError(
                f"policy {policy.path.name}: {where}: field '{field_name}': column {table}.{column} not in the database"
            )

    for spec in policy.tables.values():
        where = f"table '{spec.name}'"
        require(where, "key", spec.name, spec.key)
        if spec.email:
            require(where, "email", spec.name, spec.email)
        for column in spec.event_timestamps:
            require(where, "event_timestamps", spec.name, column)
    for bundle in policy.bundles.values():
        for member in bundle.members:
            require(f"bundle '{bundle.name}'", "members.link", member.table, member.link)
    holds = policy.restriction_holds
    require("holds", "restriction_requests.email", holds.table, holds.email)
    for rule in policy.rules():
        if rule.table is None:
            continue
        where = f"rule '{rule.id}'"
        require(where, "table", rule.table, policy.tables[rule.table].key)
        if rule.parent:
            require(where, "parent.via", rule.table, rule.parent.via)
            require(where, "parent.key", rule.parent.table, rule.parent.key)
        for ref in rule.read_columns():
            require(where, "anchor", ref.table, ref.column)
        for flt in rule.filters:
            require(where, "where.column", flt.column.table, flt.column.column)
        if rule.stored_file:
            require(where, "stored_file", rule.table, rule.stored_file)
        if rule.notice:
            require(where, "notice.first_name", rule.table, rule.notice.first_name)
            require(where, "notice.locale", rule.table, rule.notice.locale)
    for purpose in policy.purposes:
        deadlines = purpose.answer_deadlines
        if deadlines is None:
            continue
        where = f"purpose '{purpose.id}'"
        require(where, "answer_deadlines.table", deadlines.table, deadlines.key)
        require(where, "answer_deadlines.received", deadlines.table, deadlines.received)
        require(where, "answer_deadlines.status.column", deadlines.table, deadlines.status_column)
        require(where, "answer_deadlines.kind", deadlines.table, deadlines.kind)
