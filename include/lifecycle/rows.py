"""Application rows as archive records: typed Arrow columns, and the digest of their subject's email."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine, inspect, types

from lifecycle.archive_store import ArchiveError
from lifecycle.periods import MalformedValue, to_utc


def email_digest(email: object) -> str | None:
    """SHA-256 of the trimmed, lower-cased address: lets a hold find archived records without the address."""
    if not isinstance(email, str) or not email.strip():
        return None
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def subject_digests(run, table: str, rows: list[dict]) -> list[str | None]:
    """The email digest of each row's subject: its own email column, or its owning smicer's."""
    spec = run.policy.tables[table]
    if spec.email:
        return [email_digest(row[spec.email]) for row in rows]
    membership = run.policy.bundle_membership(table)
    if membership is None:
        return [None] * len(rows)
    bundle, member = membership
    owners = sorted({row[member.link] for row in rows if row[member.link] is not None})
    emails = _owner_emails(run, bundle.root, owners)
    return [email_digest(emails.get(row[member.link])) for row in rows]


def _owner_emails(run, root_table: str, owners: list[int]) -> dict[int, object]:
    from lifecycle.sql import statement

    if not owners:
        return {}
    root = run.policy.tables[root_table]
    query = statement(
        run.engine,
        "fetch_rows.sql",
        expanding=("keys",),
        table=root_table,
        columns=[root.key, root.email],
        match=root.key,
        key=root.key,
    )
    with run.engine.connect() as connection:
        return {row[0]: row[1] for row in connection.execute(query, {"keys": owners})}


@dataclass
class ArrowConverter:
    """The Arrow schema of a table from the database's own column types (reflected, not assumed)."""

    columns: list[str]
    kinds: list[str]
    schema: object

    @classmethod
    def for_table(cls, engine: Engine, table: str) -> ArrowConverter:
        import pyarrow as pa

        reflected = inspect(engine).get_columns(table)
        kinds = [_kind(column["type"]) for column in reflected]
        arrow_types = {
            "int": pa.int64(),
            "bool": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC"),
            "date": pa.date32(),
            "float": pa.float64(),
            "text": pa.string(),
        }
        schema = pa.schema([(c["name"], arrow_types[kind]) for c, kind in zip(reflected, kinds, strict=True)])
        return cls([c["name"] for c in reflected], kinds, schema)

    def to_arrow(self, rows: list[dict], table: str, key: str):
        import pyarrow as pa

        arrays = []
        for name, kind, field in zip(self.columns, self.kinds, self.schema, strict=True):
            values = []
            for row in rows:
                try:
                    values.append(_convert(row[name], kind))
                except (MalformedValue, ValueError, TypeError):
                    raise ArchiveError(
                        f"{table}.{name} of the row with {key} = {row[key]} cannot be read as {kind}"
                    ) from None
            arrays.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _kind(column_type: types.TypeEngine) -> str:
    if isinstance(column_type, types.Boolean):
        return "bool"
    if isinstance(column_type, types.Integer):
        return "int"
    if isinstance(column_type, types.DateTime):
        return "timestamp"
    if isinstance(column_type, types.Date):
        return "date"
    if isinstance(column_type, types.Float):
        return "float"
    return "text"


def _convert(value: object, kind: str) -> object:
    if value is None:
        return None
    if kind == "timestamp":
        return to_utc(value)
    if kind == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return value if isinstance(value, str) else str(value)
