"""Application rows as archive records: streamed from the database as typed Arrow record batches, and
the digest of their subject's email."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine, TextClause, inspect, types

from lifecycle.periods import MalformedValue, to_utc
from lifecycle.stores import ArchiveError

# Rows a server-side cursor hands over at a time, and bytes of PostgreSQL's CSV read at a time: one
# record batch each, so memory stays flat whatever the number of rows.
CURSOR_ROWS = 20_000
CSV_BLOCK_BYTES = 1 << 20
# Every character str.strip() strips: those str.isspace() calls whitespace (a test checks it).
BLANKS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def email_digest(email: object) -> str | None:
    """SHA-256 of the trimmed, lower-cased address: lets a hold find archived records without the address."""
    if not isinstance(email, str) or not email.strip():
        return None
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def email_strip(dialect: str) -> str:
    """What the SQL twin of email_digest (include/sql/archive.sql) strips, as str.strip() does:
    the characters for PostgreSQL's btrim, a pattern for MariaDB's REGEXP_REPLACE."""
    return BLANKS if dialect == "postgresql" else f"^[{BLANKS}]+|[{BLANKS}]+$"


def key_lines(keys) -> bytes | memoryview:
    """Record keys as the records digest of a batch reads them: each in decimal, then a newline. Arrow
    writes them into one buffer, read in place (no Python object per key)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(keys) == 0:
        return b""
    lines = pc.binary_join_element_wise(keys.cast(pa.string()), "", "\n")  # a new array: its data starts at 0
    return memoryview(lines.buffers()[2])[: pc.sum(pc.binary_length(lines)).as_py()]


@dataclass(frozen=True)
class ArrowConverter:
    """The Arrow schema of a table from the database's own column types (reflected, not assumed), and
    its rows as record batches of that schema."""

    table: str
    key: str
    columns: list[str]
    kinds: list[str]
    schema: object
    # How PostgreSQL's CSV text of each column is read: timestamps without time zone as such (UTC).
    csv_schema: object

    @classmethod
    def for_table(cls, engine: Engine, table: str, key: str) -> ArrowConverter:
        reflected = inspect(engine).get_columns(table)
        kinds = {column["name"]: _kind(column["type"]) for column in reflected}
        aware = {column["name"] for column in reflected if getattr(column["type"], "timezone", False)}
        return cls.of_columns(table, key, kinds, aware)

    @classmethod
    def of_columns(cls, table: str, key: str, kinds: dict[str, str], aware: set[str] = frozenset()) -> ArrowConverter:
        """For columns of the given kinds (int, bool, timestamp, date, float, text); timestamps but those
        `aware` of their time zone are UTC without one."""
        import pyarrow as pa

        arrow_types = {
            "int": pa.int64(),
            "bool": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC"),
            "date": pa.date32(),
            "float": pa.float64(),
            "text": pa.string(),
        }
        csv_types = [
            pa.timestamp("us") if kind == "timestamp" and name not in aware else arrow_types[kind]
            for name, kind in kinds.items()
        ]
        return cls(
            table,
            key,
            list(kinds),
            list(kinds.values()),
            pa.schema([(name, arrow_types[kind]) for name, kind in kinds.items()]),
            pa.schema(list(zip(kinds, csv_types, strict=True))),
        )

    def from_rows(self, rows: list) -> object:
        """Rows as the driver gives them, converted column by column."""
        import pyarrow as pa

        values = list(zip(*rows, strict=True))
        keys = values[self.columns.index(self.key)]
        arrays = [
            self._array(column, kind, field, keys)
            for column, kind, field in zip(values, self.kinds, self.schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _array(self, values: tuple, kind: str, field, keys: tuple):
        """At once when the values are of the kind the driver gives for the column; else value by value,
        as lifecycle.periods reads them, so that an unreadable value names its row and never itself."""
        import pyarrow as pa

        try:
            return _driver_array(values, kind, field.type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
        converted = []
        for value, key in zip(values, keys, strict=True):
            try:
                converted.append(_convert(value, kind))
            except (MalformedValue, ValueError, TypeError):
                raise ArchiveError(
                    f"{self.table}.{field.name} of the row with {self.key} = {key} cannot be read as {kind}"
                ) from None
        return pa.array(converted, type=field.type)


def _driver_array(values: tuple, kind: str, arrow_type):
    """The values as one Arrow array when their inferred type is one the kind is read from exactly as
    _convert reads it (naive timestamps and ISO text as UTC, 0/1 as booleans); raises otherwise."""
    import pyarrow as pa

    accepted = {
        "int": (pa.types.is_integer,),
        "bool": (pa.types.is_boolean, pa.types.is_integer),
        "timestamp": (pa.types.is_timestamp, pa.types.is_string),
        "date": (pa.types.is_date32, pa.types.is_string),
        "float": (pa.types.is_floating, pa.types.is_integer),
        "text": (pa.types.is_string,),
    }[kind]
    inferred = pa.array(values)
    if not pa.types.is_null(inferred.type) and not any(check(inferred.type) for check in accepted):
        raise TypeError(f"{inferred.type} is not read as {kind}")
    if kind == "timestamp" and pa.types.is_string(inferred.type):
        inferred = inferred.cast(pa.timestamp("us"))
    return inferred.cast(arrow_type)


def record_batches(engine: Engine, query: TextClause, params: dict, converter: ArrowConverter) -> Iterator:
    """The rows of `query` as record batches of the converter's schema, memory flat whatever their number.

    `query` orders its rows by the converter's key and keeps those after `:after`. On PostgreSQL they
    come through COPY read by pyarrow.csv; from a value that reader refuses (an infinite timestamp, a
    year after 9999) on, and on the other databases, through a server-side cursor."""
    _release_freed_memory()
    if engine.dialect.name == "postgresql":
        try:
            for batch in _copy_batches(engine, query, params, converter):
                yield batch
                if batch.num_rows:
                    params = {**params, "after": batch.column(converter.key)[-1].as_py()}
            return
        except _CsvRefused:
            pass
    yield from _cursor_batches(engine, query, params, converter)


def _release_freed_memory() -> None:
    """Arrow's allocations from jemalloc where pyarrow has it: its default (mimalloc) keeps what an
    export frees, some 30 MB more at the peak of one (scripts/benchmark's peak MB)."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:
        pass


def _cursor_batches(engine: Engine, query: TextClause, params: dict, converter: ArrowConverter) -> Iterator:
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True).execute(query, params)
        for rows in result.partitions(CURSOR_ROWS):
            yield converter.from_rows(rows)


class _CsvRefused(Exception):
    """pyarrow.csv cannot read a value of PostgreSQL's CSV export."""


def _copy_batches(engine: Engine, query: TextClause, params: dict, converter: ArrowConverter) -> Iterator:
    import pyarrow as pa
    import pyarrow.csv as csv

    compiled = query.compile(dialect=engine.dialect)
    with engine.connect() as connection, _CopyPipe(connection) as pipe:
        cursor = connection.connection.cursor()
        copy = cursor.mogrify(f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv)", compiled.construct_params(params))
        pipe.start(cursor, copy)
        if not pipe.source.peek(1):
            return  # no rows, which pyarrow.csv would refuse as an empty file
        try:
            reader = csv.open_csv(
                pipe.source,
                read_options=csv.ReadOptions(
                    column_names=converter.columns, block_size=CSV_BLOCK_BYTES, use_threads=False
                ),
                parse_options=csv.ParseOptions(newlines_in_values=True),
                convert_options=csv.ConvertOptions(
                    column_types=converter.csv_schema,
                    # NULL is an empty field; an empty string a quoted one; nothing else is NULL.
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    true_values=["t"],
                    false_values=["f"],
                ),
            )
            for batch in reader:
                yield batch.cast(converter.schema)
        except pa.ArrowInvalid:
            raise _CsvRefused from None


class _CopyPipe:
    """COPY ... TO STDOUT written by a thread into a pipe that the caller reads as it goes.

    On leaving, the reading end is closed (a COPY still writing then stops) and the thread joined; the
    connection is dropped when the COPY did not complete, and an error of the COPY's own wins over the
    reader's (which may only have seen its output end early)."""

    def __init__(self, connection):
        self.connection = connection
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _CopyPipe:
        read_end, self.write_end = os.pipe()
        self.source = open(read_end, "rb")
        return self

    def start(self, cursor, copy: bytes) -> None:
        self.thread = threading.Thread(target=self._copy_out, args=(cursor, copy), daemon=True)
        self.thread.start()

    def _copy_out(self, cursor, copy: bytes) -> None:
        try:
            with open(self.write_end, "wb") as sink:
                cursor.copy_expert(copy, sink)
        except BaseException as error:  # handed over to the reading thread
            self.errors.append(error)

    def __exit__(self, kind, error, traceback) -> None:
        self.source.close()
        if self.thread is None:
            os.close(self.write_end)
        else:
            self.thread.join()
        if self.errors or kind is not None:
            self.connection.invalidate()
        failed = [error for error in self.errors if not isinstance(error, BrokenPipeError)]
        if failed and kind in (None, _CsvRefused):
            raise failed[0]


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
