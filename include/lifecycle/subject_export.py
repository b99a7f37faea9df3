"""A data subject's package, for a request of access (GDPR article 15) or portability (article 20):
every record carrying their address, written under a destination, with a README in their language
saying why each kind of record is kept and for how long.

Which records, read from the policy: in every table declaring an `email` column, the rows whose
address, trimmed and lower-cased, is the subject's; the rows of a bundle's members linked to a root
row carrying it (a smicer's connection logs, missions...); the rows of a rule's table whose parent
carries it (the identity documents of the subject's rights requests). Nobody else's.

The format is a public contract. Under `<destination>/<folder>/`, for each table holding records of
the subject: `<table>.json`, a JSON list of objects whose names and values are the table's columns
(datetimes as ISO 8601 in UTC with their offset, dates as YYYY-MM-DD, NULL as null), and
`<table>.csv`, the same rows with a header of the column names (NULL as an empty field, booleans
true/false); and `README.md`, written last. Each table is read by one statement, streamed through a
server-side cursor into both files as it comes. A `file:///abs/dir` destination receives the
finished folder at once (written beside it, then renamed); an `s3://bucket/prefix` one, objects in
STANDARD, encrypted by the server, each checked by its SHA-256, in a bucket inside the EU/EEA.

The address is a bound parameter and nothing else: no message, README or returned value names it."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import cache
from itertools import chain
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy import Engine, column, inspect

from lifecycle.periods import to_utc
from lifecycle.policy import ColumnRef, Policy, Rule
from lifecycle.sql import statement
from lifecycle.stores import sha256_of_file
from lifecycle.stores.s3 import S3Options, checked_client, failing_closed

README = "README.md"
README_LANGUAGES = ("en", "fr", "nl")  # the first when the subject's locale is none of them
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates" / "subject_package"
# Rows the server-side cursor hands over at a time: memory stays flat whatever a table's share.
FETCH_ROWS = 1000
_FOLDER = re.compile(r"[^\W_][\w.:+-]{0,199}")  # letters and digits of any script, as a run id may have
CONTENT_TYPES = {
    ".json": "application/json; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}


class SubjectPackageError(RuntimeError):
    """The package could not be written; the message names the object at fault, never the subject."""


@dataclass(frozen=True)
class Link:
    """A column of a table pointing at the key of another table's rows that carry an address."""

    column: str
    table: str
    key: str
    email: str


@dataclass(frozen=True)
class Reach:
    """How a table's rows reach the subject: by its own email column, or through links."""

    table: str
    key: str
    email: str | None
    links: tuple[Link, ...]


def subject_tables(policy: Policy) -> list[str]:
    """The tables a package may hold, in policy order."""
    return [reach.table for reach in _reaches(policy)]


def count_subject_records(engine: Engine, policy: Policy, email: str) -> dict[str, int]:
    """The subject's records by table, for a dry run: the tables holding some only."""
    params = {"email": normalised_address(email)}
    counts = {}
    with _snapshot(engine) as connection:
        for reach in _reaches(policy):
            count = connection.execute(statement(engine, SUBJECT_ROWS, r=reach, count=True), params).scalar_one()
            if count:
                counts[reach.table] = count
    return counts


def export_subject(
    engine: Engine,
    policy: Policy,
    email: str,
    destination_uri: str,
    folder: str,
    s3_options: S3Options | None = None,
) -> dict:
    """Write the subject's package under <destination_uri>/<folder>/; returns where, the records by
    table and the README's language. Without records, nothing is written and the location is None."""
    params = {"email": normalised_address(email)}
    destination = open_destination(destination_uri, s3_options)
    folder = _folder_name(folder)
    with _snapshot(engine) as connection, destination.staging() as staged:
        language = subject_language(connection, policy, params)
        counts = {}
        for reach in _reaches(policy):
            written = _write_table(connection, reach, params, staged)
            if written:
                counts[reach.table] = written
        if not counts:
            return {"location": None, "tables": {}, "language": language}
        (staged / README).write_text(render_readme(policy, counts, language), "utf-8")
        location = destination.publish(staged, folder)
    return {"location": location, "tables": counts, "language": language}


def normalised_address(email: object) -> str:
    """The address as the statements compare it: trimmed and lower-cased."""
    if not isinstance(email, str) or not email.strip():
        raise ValueError("the subject's address is empty")
    return email.strip().lower()


def _folder_name(folder: object) -> str:
    # The value is not repeated: an address given as the folder must not end up in a message.
    if not isinstance(folder, str) or not _FOLDER.fullmatch(folder):
        raise ValueError("the package's folder must be one name of letters, digits and . _ : + - (200 at most)")
    return folder


def _reaches(policy: Policy) -> list[Reach]:
    reaches = (_reach(policy, name) for name in policy.tables)
    return [reach for reach in reaches if reach is not None]


def _reach(policy: Policy, table: str) -> Reach | None:
    spec = policy.tables[table]
    links = []
    for bundle in policy.bundles.values():
        root = policy.tables[bundle.root]
        if root.email:
            links += [Link(m.link, root.name, root.key, root.email) for m in bundle.members if m.table == table]
    for rule in policy.rules():
        parent = rule.parent
        if rule.table == table and parent and policy.tables[parent.table].email:
            links.append(Link(parent.via, parent.table, parent.key, policy.tables[parent.table].email))
    if not spec.email and not links:
        return None
    return Reach(table, spec.key, spec.email, tuple(dict.fromkeys(links)))


@contextmanager
def _snapshot(engine: Engine) -> Iterator:
    """One connection, one transaction: every table read as of the same moment (PostgreSQL's default
    READ COMMITTED would let a row of one table change between the reads of two others)."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


def subject_language(connection, policy: Policy, params: dict) -> str:
    """The locale of the subject's row in a table that notices are sent from (the smicer's), when it
    is one of the README's languages (fr-BE, FR, fr_FR all read fr); else the first."""
    for rule in policy.rules():
        if rule.notice is None:
            continue
        spec = policy.tables[rule.table]
        query = statement(
            connection.engine, LOCALE, table=spec.name, key=spec.key, email=spec.email, locale=rule.notice.locale
        )
        locale = connection.execute(query, params).first()
        if locale is not None:
            language = str(locale[0] or "").strip().lower()[:2]
            return language if language in README_LANGUAGES else README_LANGUAGES[0]
    return README_LANGUAGES[0]


# The records, as files


def _write_table(connection, reach: Reach, params: dict, folder: Path) -> int:
    """The table's rows of the subject into <table>.json and <table>.csv, partition by partition;
    no file when there is none."""
    reflected = inspect(connection).get_columns(reach.table)
    names = [c["name"] for c in reflected]
    query = statement(connection.engine, SUBJECT_ROWS, r=reach, count=False, columns=names)
    typed = query.columns(*(column(c["name"], c["type"]) for c in reflected))
    result = connection.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(typed, params)
    partitions = result.partitions()
    first = next(partitions, None)
    if first is None:
        return 0
    with _TableFiles(folder, reach.table, names) as files:
        for rows in chain([first], partitions):
            files.write(rows)
    return files.rows


class _TableFiles:
    """A table's JSON list and CSV file, written as rows come."""

    def __init__(self, folder: Path, table: str, columns: list[str]):
        self.paths = (folder / f"{table}.json", folder / f"{table}.csv")
        self.columns = columns
        self.rows = 0

    def __enter__(self) -> _TableFiles:
        self.json = self.paths[0].open("w", encoding="utf-8")
        self.csv_file = self.paths[1].open("w", encoding="utf-8", newline="")
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(self.columns)
        self.json.write("[")
        return self

    def write(self, rows: list) -> None:
        for row in rows:
            values = [json_value(value) for value in row]
            self.json.write(",\n" if self.rows else "\n")
            self.json.write(json.dumps(dict(zip(self.columns, values, strict=True)), ensure_ascii=False))
            self.csv.writerow([csv_text(value) for value in values])
            self.rows += 1

    def __exit__(self, *exception) -> None:
        self.json.write("\n]\n")
        self.json.close()
        self.csv_file.close()


def json_value(value: object) -> object:
    """A database value as the package gives it: datetimes in UTC (a naive one is UTC, as the
    schema stores them) and dates as ISO 8601; JSON's own types as they are; anything else as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return to_utc(value).isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    return str(value)


def csv_text(value: object) -> str:
    """A JSON value of the package as its CSV field."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# The README


def render_readme(policy: Policy, counts: dict[str, int], language: str, today: date | None = None) -> str:
    """The README in `language`: per table of the package, its purposes, their legal bases and how
    long its records are kept, from the policy. It receives no personal data."""
    tables = [
        {"name": table, "records": records, "purposes": _table_purposes(policy, table, language)}
        for table, records in counts.items()
    ]
    context = {
        "tables": tables,
        "policy_name": policy.name,
        "in_force_since": policy.in_force_since,
        "exported_on": (today or datetime.now(UTC).date()).isoformat(),
        "contact": next((rule.notice.contact for rule in policy.rules() if rule.notice), None),
    }
    return _environment().get_template(f"{language}.md").render(context)


def _table_purposes(policy: Policy, table: str, language: str) -> list[dict]:
    """The purposes a table's records serve: those with a rule on the table, with a rule on a bundle
    it is a member of, or with a rule reading it as a parent; each with the rules setting how long."""
    purposes = []
    for purpose in policy.purposes:
        rules = []
        reads_it = False
        for rule in purpose.rules:
            if rule.table == table:
                rules.append(_rule_text(rule, table, "erase", None))
            member = _bundle_member(policy, rule, table)
            if member is not None:
                rules.append(_rule_text(rule, table, member.action, rule.table))
            reads_it = reads_it or (rule.parent is not None and rule.parent.table == table)
        if rules or reads_it:
            translated = _translations().get(purpose.id, {}).get(language, {})
            purposes.append(
                {
                    "title": translated.get("title", purpose.title),
                    "legal_basis": translated.get("legal_basis", purpose.legal_basis),
                    "rules": rules,
                }
            )
    return purposes


def _bundle_member(policy: Policy, rule: Rule, table: str):
    if rule.bundle is None:
        return None
    return next((m for m in policy.bundles[rule.bundle].members if m.table == table), None)


def _rule_text(rule: Rule, table: str, effect: str, root: str | None) -> dict:
    """What a template needs to say a rule in words: its conditions, windows, grace period and
    archive; `effect` on the table's rows (erase, pseudonymise), `root` the table they go with."""

    def name(ref: ColumnRef) -> str:
        return ref.column if ref.table == table else f"{ref.table}.{ref.column}"

    archive = rule.archive if effect == "erase" else None
    return {
        "action": rule.action,
        "effect": effect,
        "root": root,
        "conditions": [{"column": name(f.column), "op": f.op, "value": f.value} for f in rule.filters],
        "windows": [
            {"period": _period_parts(w.period), "pick": w.pick, "columns": [name(c) for c in w.columns]}
            for w in rule.windows
        ],
        "grace": _period_parts(rule.grace_period) if rule.grace_period is not None else None,
        "archive": archive
        and {
            "period": _period_parts(archive.retain_for),
            "source": name(archive.source) if archive.source else None,
        },
    }


def _period_parts(period) -> list[tuple[int, str]]:
    """A calendar period as (count, unit) pairs, years first; none for zero (P0D)."""
    return [
        (count, unit)
        for unit, count in (("year", period.years), ("month", period.months), ("day", period.days))
        if count
    ]


@cache
def _translations() -> dict:
    import yaml

    return yaml.safe_load((TEMPLATES_DIR / "translations.yaml").read_text("utf-8")) or {}


@cache
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


# Destinations


def open_destination(uri: str, s3_options: S3Options | None = None) -> FolderDestination | S3Destination:
    """Where packages go: `file:///abs/dir` or `s3://bucket/prefix`; anything else is refused."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        root = Path(unquote(parsed.path))
        if parsed.netloc not in ("", "localhost") or not root.is_absolute():
            raise ValueError(f"subject package destination {uri!r} is not an absolute file:/// URI")
        return FolderDestination(root)
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Destination(parsed.netloc, parsed.path.strip("/"), s3_options or S3Options())
    raise ValueError(f"subject package destination {uri!r}: unsupported (use file:///abs/dir or s3://bucket/prefix)")


class FolderDestination:
    """Packages as folders of a directory: each staged beside its place, then renamed into it."""

    def __init__(self, root: Path):
        self.root = root

    @contextmanager
    def staging(self) -> Iterator[Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".subject-package-", dir=self.root))  # readable by its owner only
        try:
            yield staged
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def publish(self, staged: Path, folder: str) -> str:
        target = self.root / folder
        if target.exists():
            shutil.rmtree(target)  # an earlier try's package for the same request
        staged.rename(target)
        return target.as_uri()


class S3Destination:
    """Packages as objects under a bucket's prefix, uploaded from a local scratch folder."""

    def __init__(self, bucket: str, prefix: str, options: S3Options):
        self.bucket = bucket
        self.prefix = prefix
        self.options = options

    @contextmanager
    def staging(self) -> Iterator[Path]:
        self.client = checked_client(
            self.options, self.bucket, f"s3://{self.bucket}", SubjectPackageError
        )  # before any record is read
        with tempfile.TemporaryDirectory(prefix="subject-package-") as scratch:
            yield Path(scratch)

    def publish(self, staged: Path, folder: str) -> str:
        """Every file, the README last; then objects an earlier try left in the folder go."""
        folder_key = f"{self.prefix}/{folder}" if self.prefix else folder
        names = sorted(path.name for path in staged.iterdir() if path.name != README) + [README]
        for name in names:
            self._put(staged / name, f"{folder_key}/{name}")
        self._remove_others(folder_key, names)
        return f"s3://{self.bucket}/{folder_key}"

    def _put(self, path: Path, key: str) -> None:
        arguments = {
            "Bucket": self.bucket,
            "Key": key,
            "StorageClass": "STANDARD",
            "ServerSideEncryption": self.options.encryption,
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256_of_file(path))).decode("ascii"),
            "ContentType": CONTENT_TYPES[path.suffix],
        }
        if self.options.kms_key_id:
            arguments["SSEKMSKeyId"] = self.options.kms_key_id
        with self._failing(f"cannot write object {key}"), path.open("rb") as body:
            self.client.put_object(Body=body, **arguments)

    def _remove_others(self, folder_key: str, names: list[str]) -> None:
        keep = {f"{folder_key}/{name}" for name in names}
        with self._failing(f"cannot list the objects under {folder_key}/"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{folder_key}/")
            stale = [item["Key"] for page in pages for item in page.get("Contents", []) if item["Key"] not in keep]
        for key in stale:
            with self._failing(f"cannot delete object {key}"):
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def _failing(self, action: str):
        return failing_closed(action, f"s3://{self.bucket}", SubjectPackageError)


# The statements this module runs: Jinja templates (lifecycle.sql).

SUBJECT_ROWS = """\
{# A table's rows carrying the subject's address (:email, trimmed and lower-cased): in its own email
   column, or in the row of another table that one of its columns points to (a bundle's root, a
   rule's parent). `count`: how many; else their columns, in key order. #}
SELECT {% if count %}COUNT(*){% else %}t.{{ columns | map("q") | join(", t.") }}{% endif %}

  FROM {{ r.table | q }} t
 WHERE {% if r.email %}LOWER(TRIM(t.{{ r.email | q }})) = :email
{% endif %}
{% for link in r.links %}
{{ "    OR " if r.email or not loop.first }}t.{{ link.column | q }} IN (
       SELECT o.{{ link.key | q }} FROM {{ link.table | q }} o WHERE LOWER(TRIM(o.{{ link.email | q }})) = :email)
{% endfor %}
{% if not count %}
 ORDER BY t.{{ r.key | q }}
{% endif %}
"""

LOCALE = """\
{# The locale of the subject's row (the first by key when the address appears twice). #}
SELECT o.{{ locale | q }} FROM {{ table | q }} o
 WHERE LOWER(TRIM(o.{{ email | q }})) = :email
 ORDER BY o.{{ key | q }}
"""
