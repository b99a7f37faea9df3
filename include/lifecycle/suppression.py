"""The suppression list: after a data subject's erasure or objection, their address must not come back
later (say, in a purchased prospect list), yet it must not be kept either. The list keeps a keyed hash
of it instead: HMAC-SHA-256 of the trimmed, lower-cased address (as the rules compare addresses), with
a secret key kept outside the database, so the list alone cannot be turned back into addresses by
hashing candidates. Each entry names its key by a short public identifier (key_id): an entry made
with an earlier key is recognisable, and is never matched by another key.

The key is the password of the Airflow connection `lifecycle_suppression`, else the Airflow variable
`lifecycle_suppression_key`: 32 characters or more, surrounding white space not included.

    python -m lifecycle.suppression check --email ADDRESS       (ADDRESS "-": read from standard input)
    python -m lifecycle.suppression check --csv FILE [--column NAME] [--delimiter CHAR]
        each with [--database-url URL]

`check --email` says whether the address is on the list (and why, since when); `check --csv` names
each line of FILE (line 1 its header) whose address is on the list, and the total. The address is
read from the column `email` (any case), else the first one, or from --column. Neither ever prints an
address. The key comes from the environment: AIRFLOW_CONN_LIFECYCLE_SUPPRESSION (a URI whose password
is the key, percent-encoded, or Airflow's JSON form with "password"), else
AIRFLOW_VAR_LIFECYCLE_SUPPRESSION_KEY. The database is --database-url, else the Airflow connection
smice_app given in the environment (AIRFLOW_CONN_SMICE_APP), else the demo's SQLite file.
Exit status: 0 nothing suppressed, 1 an address is suppressed (do not import it), 2 refused (the
message says why: usage, key, file or database).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import itertools
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, inspect
from sqlalchemy.exc import SQLAlchemyError

from lifecycle.app_database import environment_database_url
from lifecycle.run import now_utc_naive
from lifecycle.sql import statement
from lifecycle.store import LifecycleTables, lifecycle_tables, make_engine

SUPPRESSION_CONN_ID = "lifecycle_suppression"
SUPPRESSION_VARIABLE = "lifecycle_suppression_key"
CONNECTION_ENVIRONMENT = f"AIRFLOW_CONN_{SUPPRESSION_CONN_ID.upper()}"
VARIABLE_ENVIRONMENT = f"AIRFLOW_VAR_{SUPPRESSION_VARIABLE.upper()}"
MIN_KEY_LENGTH = 32
KEY_ID_LABEL = b"lifecycle suppression key id"
KEY_ID_LENGTH = 16
REASONS = ("erased", "objection")
MAX_RUN_NAME_LENGTH = 250  # the columns' size, as Airflow's
DEFAULT_COLUMN = "email"
CHECK_BATCH = 1000  # the digests one query looks up
SUPPRESSED_EXIT = 1
REFUSED_EXIT = 2


class SuppressionError(ValueError):
    """A refused request on the suppression list; the message says what is wrong, never the address."""


class SuppressionKeyMissing(SuppressionError):
    """The list's secret key is not set, or too short to be one; `why` says what needs it."""

    def __init__(self, why: str = "", *, problem: str = "is not set"):
        super().__init__(
            f"the suppression list's key {problem}{f' ({why})' if why else ''}: set a secret of"
            f" {MIN_KEY_LENGTH} characters or more as the password of the Airflow connection"
            f" `{SUPPRESSION_CONN_ID}` ({CONNECTION_ENVIRONMENT} in the"
            f" environment), or as the Airflow variable `{SUPPRESSION_VARIABLE}` ({VARIABLE_ENVIRONMENT});"
            " for instance the output of: python -c 'import secrets; print(secrets.token_hex(32))'"
        )


def normalized(email: str) -> str:
    """The address as the project compares addresses: trimmed, lower-cased."""
    return email.strip().lower()


def suppression_digest(email: str, key: str) -> str:
    """HMAC-SHA-256 (hex) of the normalized address, keyed: what the list keeps instead of the address."""
    address = _address(email)
    return hmac.new(checked_key(key).encode("utf-8"), address.encode("utf-8"), hashlib.sha256).hexdigest()


def key_id(key: str) -> str:
    """A short public name of the key (the start of an HMAC of a fixed label): tells which key made a
    digest, and reveals nothing of the key."""
    return hmac.new(checked_key(key).encode("utf-8"), KEY_ID_LABEL, hashlib.sha256).hexdigest()[:KEY_ID_LENGTH]


def suppress(
    connection: Connection, tables: LifecycleTables, email: str, key: str, reason: str, dag_id: str, run_id: str
) -> bool:
    """Put the address on the list, within the caller's transaction; False when it already was (the
    existing entry, its reason and date, stays)."""
    if reason not in REASONS:
        raise SuppressionError(f"a suppression's reason is one of: {', '.join(REASONS)}")
    values = {
        "digest": suppression_digest(email, key),
        "key_id": key_id(key),
        "reason": reason,
        "added_at": now_utc_naive(),
        "dag_id": _run_name(dag_id, "dag_id"),
        "run_id": _run_name(run_id, "run_id"),
    }
    query = statement(connection.engine, SUPPRESS, suppressions=tables.qualified(tables.suppressions))
    return connection.execute(query, values).rowcount == 1


def suppression_of(connection: Connection, tables: LifecycleTables, email: str, key: str) -> dict | None:
    """The address's entry made with this key ({reason, added_at}), None when it has none."""
    entries = _entries(connection, tables, [suppression_digest(email, key)], key_id(key))
    return next(iter(entries.values()), None)


def checked_key(key, why: str = "") -> str:
    """The key as the digests use it (trimmed); SuppressionKeyMissing when it is not set or too short.
    A caller about to erase checks it first, so that the erasure is not done without its entry."""
    # The key's length is not said either: a message may end up in a log.
    if not isinstance(key, str) or not key.strip():
        raise SuppressionKeyMissing(why)
    if len(key.strip()) < MIN_KEY_LENGTH:
        raise SuppressionKeyMissing(why, problem=f"is shorter than {MIN_KEY_LENGTH} characters")
    return key.strip()


def environment_key() -> str | None:
    """The key as a command outside Airflow reads it: the password of the connection given in the
    environment (a URI or Airflow's JSON form), else the variable's value; None when neither is set."""
    given = os.environ.get(CONNECTION_ENVIRONMENT, "").strip()
    return (_connection_password(given) if given else None) or os.environ.get(VARIABLE_ENVIRONMENT) or None


def _connection_password(given: str) -> str | None:
    if not given.startswith("{"):
        password = urlsplit(given).password
        return unquote(password) if password else None
    try:
        fields = json.loads(given)
    except json.JSONDecodeError:
        raise SuppressionError(f"{CONNECTION_ENVIRONMENT} is neither a URI nor a JSON object") from None
    if not isinstance(fields, dict):
        raise SuppressionError(f"{CONNECTION_ENVIRONMENT} is neither a URI nor a JSON object")
    return fields.get("password") or None


def _address(email) -> str:
    if not isinstance(email, str) or not email.strip():
        raise SuppressionError("the email is blank")
    return normalized(email)


def _run_name(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_RUN_NAME_LENGTH:
        raise SuppressionError(f"a suppression's {name} is a name of 1 to {MAX_RUN_NAME_LENGTH} characters")
    return value


def _entries(connection: Connection, tables: LifecycleTables, digests: list[str], made_with: str) -> dict[str, dict]:
    """The entries among `digests` made with the key whose key_id is `made_with`, by digest."""
    suppressions = tables.suppressions
    query = statement(connection.engine, ENTRIES, expanding=("digests",), suppressions=tables.qualified(suppressions))
    query = query.columns(suppressions.c.digest, suppressions.c.reason, suppressions.c.added_at)
    rows = connection.execute(query, {"digests": digests, "key_id": made_with}).mappings()
    return {row["digest"]: {"reason": row["reason"], "added_at": row["added_at"]} for row in rows}


def _check_email(connection: Connection, tables: LifecycleTables, key: str, args) -> int:
    email = sys.stdin.readline() if args.email == "-" else args.email
    entry = suppression_of(connection, tables, email, key)
    if entry is None:
        print("not suppressed: the address is not on the suppression list")
        return 0
    print(f"suppressed: {_described(entry)}; do not import the address")
    return SUPPRESSED_EXIT


def _check_csv(connection: Connection, tables: LifecycleTables, key: str, args) -> int:
    path, checked, suppressed = Path(args.csv), 0, 0
    addresses = _csv_addresses(path, args.column, args.delimiter)
    while batch := list(itertools.islice(addresses, CHECK_BATCH)):
        lines_of: dict[str, list[int]] = {}
        for line, email in batch:
            lines_of.setdefault(suppression_digest(email, key), []).append(line)
        entries = _entries(connection, tables, list(lines_of), key_id(key))
        found = sorted((line, entry) for digest, entry in entries.items() for line in lines_of[digest])
        for line, entry in found:
            print(f"line {line}: suppressed ({_described(entry)})")
        checked, suppressed = checked + len(batch), suppressed + len(found)
    print(f"{suppressed} of {checked} addresses in {path} suppressed")
    return SUPPRESSED_EXIT if suppressed else 0


def _csv_addresses(path: Path, column: str | None, delimiter: str) -> Iterator[tuple[int, str]]:
    """(line number, address) of each record of the file with an address in its column, line 1 being
    the header; blank lines and cells are passed over."""
    try:
        with path.open("rb") as file:
            reader = csv.reader(_decoded_lines(file, path), delimiter=delimiter, strict=True)
            records = _numbered(reader, path)
            header = next(records, None)
            if header is None:
                raise SuppressionError(f"{path}: the file is empty, it has no header line")
            position = _column_position(header[1], column, path)
            for line, record in records:
                if not record:
                    continue
                if position >= len(record):
                    raise SuppressionError(
                        f"{path}, line {line}: {len(record)} fields, the addresses are in field {position + 1}"
                    )
                if record[position].strip():
                    yield line, record[position]
    except OSError as error:
        raise SuppressionError(f"{path} cannot be read: {error.strerror}") from None


def _numbered(reader, path: Path) -> Iterator[tuple[int, list[str]]]:
    """The reader's records, each with the line it starts on; a malformed one names its line."""
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise SuppressionError(f"{path}, line {line}: malformed CSV ({error})") from None
        yield line, record


def _decoded_lines(file, path: Path) -> Iterator[str]:
    """The file's lines as text, decoded one by one so that an error names its line; without the byte
    order mark a spreadsheet may write first."""
    for line, raw in enumerate(file, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SuppressionError(f"{path}, line {line}: not UTF-8 text") from None
        yield text.removeprefix("\ufeff") if line == 1 else text


def _column_position(header: list[str], column: str | None, path: Path) -> int:
    names = [name.strip().lower() for name in header]
    if column is None:
        return names.index(DEFAULT_COLUMN) if DEFAULT_COLUMN in names else 0
    # The name asked for is not repeated: an address typed in the wrong place must not be printed.
    if column.strip().lower() not in names:
        raise SuppressionError(f"{path}, line 1: the header has no column of the name given by --column")
    return names.index(column.strip().lower())


def _described(entry: dict) -> str:
    return f"{entry['reason']} on {entry['added_at']:%Y-%m-%d}"


def _warn_of_other_keys(connection: Connection, tables: LifecycleTables, key: str) -> None:
    query = statement(connection.engine, OTHER_KEYS, suppressions=tables.qualified(tables.suppressions))
    others = connection.execute(query, {"key_id": key_id(key)}).scalar_one()
    if others:
        print(
            f"warning: this key (key id {key_id(key)}) cannot match {others}"
            f" {'entry' if others == 1 else 'entries'} of the list, made with another key",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        key = checked_key(environment_key())
        engine = make_engine(_database_url(args))
        try:
            with engine.connect() as connection:
                tables = _listed_tables(connection)
                _warn_of_other_keys(connection, tables, key)
                return args.action(connection, tables, key, args)
        finally:
            engine.dispose()
    except SuppressionError as error:
        print(f"suppression check refused: {error}", file=sys.stderr)
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        print(f"suppression check failed: the database could not be read ({reason})", file=sys.stderr)
    except Exception:  # exiting 1 would say "suppressed", and a caller may import what is not listed
        traceback.print_exc()
        print("suppression check failed: nothing was checked", file=sys.stderr)
    return REFUSED_EXIT


def _database_url(args) -> str:
    try:
        return args.database_url or environment_database_url()
    except ValueError as error:
        raise SuppressionError(f"AIRFLOW_CONN_SMICE_APP cannot be read: {error}") from None


def _listed_tables(connection: Connection) -> LifecycleTables:
    """The pipeline's tables; a database without the list is refused: the wrong database would pass
    every address."""
    tables = lifecycle_tables(connection.engine)
    if not inspect(connection).has_table(tables.suppressions.name, schema=tables.suppressions.schema):
        raise SuppressionError(
            f"the database has no suppression list (table {tables.qualified(tables.suppressions)}): name the"
            " application database the pipeline runs on (--database-url, or AIRFLOW_CONN_SMICE_APP)"
        )
    return tables


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.suppression",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(required=True, metavar="{check}")
    check = commands.add_parser("check", help="check an address, or a CSV file's, against the suppression list")
    given = check.add_mutually_exclusive_group(required=True)
    given.add_argument("--email", help='the address to check ("-": read it from standard input)')
    given.add_argument("--csv", metavar="FILE", help="a CSV file (UTF-8, a header line) of addresses to check")
    check.add_argument("--column", help=f"the CSV column of the addresses (default: {DEFAULT_COLUMN}, else the first)")
    check.add_argument("--delimiter", default=",", help="the CSV delimiter (default: a comma)")
    check.add_argument("--database-url", "--db-url", help="the application database (SQLAlchemy URL)")
    args = parser.parse_args(argv)
    if args.csv is None and args.column is not None:
        check.error("--column goes with --csv")
    if len(args.delimiter) != 1:
        check.error("--delimiter is one character")
    args.action = _check_email if args.csv is None else _check_csv
    return args


# The statements this module runs: Jinja templates (lifecycle.sql).

SUPPRESS = """\
{# An entry, unless its digest is on the list already (the entry there stays). MariaDB has no ON
   CONFLICT; its IGNORE passes over the duplicate key only, the values being checked before. #}
INSERT {{ 'IGNORE ' if dialect == 'mysql' }}INTO {{ suppressions }} (digest, key_id, reason, added_at, dag_id, run_id)
VALUES (:digest, :key_id, :reason, :added_at, :dag_id, :run_id)
{% if dialect != 'mysql' %}
ON CONFLICT (digest) DO NOTHING
{% endif %}
"""

ENTRIES = """\
SELECT digest, reason, added_at
  FROM {{ suppressions }}
 WHERE key_id = :key_id AND digest IN :digests
"""

OTHER_KEYS = """\
SELECT COUNT(*) FROM {{ suppressions }} WHERE key_id <> :key_id
"""


if __name__ == "__main__":
    sys.exit(main())
