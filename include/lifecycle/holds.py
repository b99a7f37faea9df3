"""An operator's legal holds: placed by email or by table and key, with a reason and an optional end
date; lifted; listed. An active hold keeps what it reaches from every rule (include/sql/decision.sql);
once it is lifted, or its `until` date has come, the next run acts on those records again.

The address is stored trimmed and lower-cased, as the rules compare it, and nowhere else: errors
never name it, and a listing names an email hold by the first characters of its SHA-256 digest (the
digest the archive keeps in archived_records.subject_digest).

    python -m lifecycle.holds place --email ADDRESS --reason TEXT [--until YYYY-MM-DD]
    python -m lifecycle.holds place --table TABLE --key KEY --reason TEXT [--until YYYY-MM-DD]
    python -m lifecycle.holds lift ID [--reason TEXT]
    python -m lifecycle.holds list [--all]
        each with [--database-url URL] [--policy PATH] [--by NAME]

The database is --database-url, else the Airflow connection smice_app given in the environment
(AIRFLOW_CONN_SMICE_APP, a URI or JSON), else the demo's SQLite file; the policy is --policy, else
LIFECYCLE_POLICY_PATH, else the shipped one. Exit status: 0 done, 2 request refused (the message says why).
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from datetime import UTC, date, datetime

from sqlalchemy import Engine, insert, inspect, select, update

from lifecycle.app_database import environment_database_url
from lifecycle.mail import valid_address
from lifecycle.policy import Policy
from lifecycle.rows import email_digest
from lifecycle.run import now_utc_naive
from lifecycle.store import ensure_lifecycle_tables, lifecycle_tables, make_engine

DIGEST_LENGTH = 12
MAX_REASON_LENGTH = 2000
MAX_EMAIL_LENGTH = 320  # the column's size
BIGINT = range(-(2**63), 2**63)
ADDRESS_IN_TEXT = re.compile(r"\S@\S+\.\S")
REFUSED_EXIT = 2


class HoldError(ValueError):
    """A refused request on legal holds; the message says what is wrong and never names the address."""


def place_hold(
    engine: Engine,
    policy: Policy,
    *,
    email: str | None = None,
    table: str | None = None,
    key: int | str | None = None,
    reason: str,
    until: date | str | None = None,
    placed_by: str | None = None,
    today: date | None = None,
) -> int:
    """Hold every record carrying `email` (and its smicer's bundle), or the record `key` of `table`;
    returns the hold's id."""
    values = _target(policy, email, table, key) | {
        "reason": _reason(reason),
        "until": _until(until, today or _today()),
        "placed_by": _given(placed_by),
        "created_at": now_utc_naive(),
    }
    holds = ensure_lifecycle_tables(engine).legal_holds
    with engine.begin() as connection:
        return connection.execute(insert(holds).values(**values)).inserted_primary_key[0]


def lift_hold(engine: Engine, hold_id: int, *, lifted_by: str | None = None, reason: str | None = None) -> None:
    """End a hold now: the rules act again on what it kept from their next run."""
    if not isinstance(hold_id, int) or isinstance(hold_id, bool):
        raise HoldError("lifting a hold needs its id, an integer (as listed)")
    values = {
        "lifted_at": now_utc_naive(),
        "lifted_by": _given(lifted_by),
        "lift_reason": None if _given(reason) is None else _reason(reason),
    }
    holds = ensure_lifecycle_tables(engine).legal_holds
    with engine.begin() as connection:
        still_active = holds.c.id == hold_id, holds.c.lifted_at.is_(None)
        if connection.execute(update(holds).where(*still_active).values(**values)).rowcount == 0:
            hold = connection.execute(select(holds.c.lifted_at).where(holds.c.id == hold_id)).one_or_none()
            if hold is None:
                raise HoldError(f"there is no legal hold {hold_id}")
            raise HoldError(f"legal hold {hold_id} was already lifted on {hold.lifted_at:%Y-%m-%d %H:%M} UTC")


def list_holds(engine: Engine, *, include_lifted: bool = False, today: date | None = None) -> list[dict]:
    """The holds not lifted (all with include_lifted), oldest first, as JSON-ready rows without the address.
    Reads only: a database whose pipeline tables do not exist yet has no holds (a dry run creates nothing)."""
    holds = lifecycle_tables(engine).legal_holds
    if not inspect(engine).has_table(holds.name, schema=holds.schema):
        return []
    query = select(holds).order_by(holds.c.id)
    if not include_lifted:
        query = query.where(holds.c.lifted_at.is_(None))
    with engine.connect() as connection:
        return [_listed(row, today or _today()) for row in connection.execute(query).mappings()]


def format_holds(rows: list[dict]) -> str:
    """A plain-text table of list_holds' rows."""
    if not rows:
        return "no legal holds"
    header = ("id", "state", "holds", "until", "placed", "lifted", "placed by", "reason")
    lines = [header] + [
        (
            str(row["id"]),
            row["state"],
            f"email sha256:{row['digest']}" if row["kind"] == "email" else f"{row['table']} #{row['key']}",
            row["until"] or "-",
            row["created_at"][:10],
            (row["lifted_at"] or "-")[:10],
            row["placed_by"] or "-",
            " ".join(row["reason"].split()),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[-1]]) for line in lines)


def _today() -> date:
    return datetime.now(UTC).date()


def _given(value):
    """None for an absent or blank value (a trigger form sends empty fields), else the value, trimmed."""
    if isinstance(value, str):
        return value.strip() or None
    return value


def _target(policy: Policy, email, table, key) -> dict:
    email, table, key = _given(email), _given(table), _given(key)
    if email is not None and (table is not None or key is not None):
        raise HoldError("a hold is by email or by table and key, not both")
    if email is not None:
        return {"email_normalized": _normalised_email(email)}
    if table is None or key is None:
        raise HoldError("a hold needs an email, or a table and a key")
    return {"table_name": _policy_table(policy, table), "record_key": _record_key(key)}


def _normalised_email(email) -> str:
    address = valid_address(email)
    if address is None:
        raise HoldError("the email is not a valid address (one @, a local part, a dotted domain, no white space)")
    if len(address) > MAX_EMAIL_LENGTH:
        raise HoldError(f"the email is longer than {MAX_EMAIL_LENGTH} characters")
    return address.lower()


def _policy_table(policy: Policy, table) -> str:
    # The value is not repeated: an address typed in the wrong field must not end up in a message.
    if table not in policy.tables:
        raise HoldError(f"the table is not one of the policy's: {', '.join(sorted(policy.tables))}")
    return table


def _record_key(key) -> int:
    if isinstance(key, str) and re.fullmatch(r"[+-]?\d{1,19}", key):
        key = int(key)
    if not isinstance(key, int) or isinstance(key, bool) or key not in BIGINT:
        raise HoldError("the key must be an integer (the record's key in its table)")
    return key


def _reason(reason) -> str:
    reason = _given(reason)
    if not isinstance(reason, str):
        raise HoldError("a reason is required")
    if len(reason) > MAX_REASON_LENGTH:
        raise HoldError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
    if ADDRESS_IN_TEXT.search(reason):
        raise HoldError("the reason must not contain an email address (personal data): name the case instead")
    return reason


def _until(until, today: date) -> date | None:
    until = _given(until)
    if until is None:
        return None
    if isinstance(until, str):
        try:
            until = date.fromisoformat(until)
        except ValueError:
            raise HoldError("until is not a date (YYYY-MM-DD)") from None
    if isinstance(until, datetime) or not isinstance(until, date):
        raise HoldError("until must be a date (YYYY-MM-DD)")
    if until <= today:
        raise HoldError(f"until ({until.isoformat()}) must be after today ({today.isoformat()}); lift a hold to end it")
    return until


def _listed(row, today: date) -> dict:
    digest = email_digest(row["email_normalized"])
    return {
        "id": row["id"],
        "kind": "email" if digest else "record",
        "digest": digest[:DIGEST_LENGTH] if digest else None,
        "table": row["table_name"],
        "key": row["record_key"],
        "reason": row["reason"],
        "until": _iso(row["until"]),
        "created_at": _iso(row["created_at"]),
        "lifted_at": _iso(row["lifted_at"]),
        "state": _state(row, today),
        "placed_by": row["placed_by"],
        "lifted_by": row["lifted_by"],
        "lift_reason": row["lift_reason"],
    }


def _state(row, today: date) -> str:
    if row["lifted_at"] is not None:
        return "lifted"
    if row["until"] is not None and row["until"] <= today:
        return "expired"
    return "active"


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    engine = make_engine(args.database_url or environment_database_url())
    try:
        print(args.action(engine, args))
    except HoldError as error:
        print(f"legal hold refused: {error}", file=sys.stderr)
        return REFUSED_EXIT
    finally:
        engine.dispose()
    return 0


def _place(engine: Engine, args) -> str:
    from lifecycle.policy import load_policy

    policy = load_policy(args.policy or os.environ.get("LIFECYCLE_POLICY_PATH"))
    target = {"email": args.email, "table": args.table, "key": args.key}
    hold_id = place_hold(engine, policy, **target, reason=args.reason, until=args.until, placed_by=args.by)
    return f"legal hold {hold_id} placed"


def _lift(engine: Engine, args) -> str:
    lift_hold(engine, args.hold_id, lifted_by=args.by, reason=args.reason)
    return f"legal hold {args.hold_id} lifted: the rules act again on what it kept from their next run"


def _list(engine: Engine, args) -> str:
    return format_holds(list_holds(engine, include_lifted=args.all))


def _arguments(argv):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", "--db-url", help="the application database (SQLAlchemy URL)")
    common.add_argument("--policy", help="the policy file (default: LIFECYCLE_POLICY_PATH, else the shipped one)")
    common.add_argument("--by", default=_login_name(), help="who places or lifts the hold (default: your login)")
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.holds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True, metavar="{place,lift,list}")
    place = commands.add_parser("place", parents=[common], help="place a hold")
    place.add_argument("--email", help="hold every record carrying this address")
    place.add_argument("--table", help="or hold one record: its table (one of the policy's)")
    place.add_argument("--key", help="and its key")
    place.add_argument("--reason", required=True, help="why (no personal data)")
    place.add_argument("--until", help="the day the hold ends (YYYY-MM-DD; default: when lifted)")
    place.set_defaults(action=_place)
    lift = commands.add_parser("lift", parents=[common], help="lift a hold")
    lift.add_argument("hold_id", type=int, metavar="ID", help="the hold's id, as listed")
    lift.add_argument("--reason", help="why it ends")
    lift.set_defaults(action=_lift)
    listing = commands.add_parser("list", parents=[common], help="list the holds not lifted")
    listing.add_argument("--all", action="store_true", help="lifted holds too")
    listing.set_defaults(action=_list)
    return parser.parse_args(argv)


def _login_name() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return None


if __name__ == "__main__":
    sys.exit(main())
