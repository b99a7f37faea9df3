"""What SQLite lacks for the pipeline's statements, registered on every connection (lifecycle.store).

SQLite stores instants as text and has no calendar arithmetic with month-end clipping, so the
statements of include/sql/ call these functions there; PostgreSQL and MariaDB use their own. Each
reads a value exactly as the reference decision does (lifecycle.periods), so both agree by
construction: an instant is canonical UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff', which sorts as it
compares."""

from __future__ import annotations

from lifecycle.periods import MalformedValue, add_period, epoch_seconds, parse_period, to_utc

CANONICAL = "%Y-%m-%d %H:%M:%S.%f"


def canonical(value: object) -> str | None:
    """The UTC instant of a stored value as canonical text; None when absent or unreadable."""
    try:
        instant = to_utc(value)
    except MalformedValue:
        return None
    return None if instant is None else instant.strftime(CANONICAL)


def _unreadable(value: object) -> int:
    try:
        to_utc(value)
    except MalformedValue:
        return 1
    return 0


def _plus_period(value: object, period: str) -> str | None:
    try:
        instant = to_utc(value)
    except MalformedValue:
        return None
    return None if instant is None else add_period(instant, parse_period(period)).strftime(CANONICAL)


def _epoch(value: object) -> int | None:
    try:
        instant = to_utc(value)
    except MalformedValue:
        return None
    return None if instant is None else epoch_seconds(instant)


def _email_digest(value: object) -> str | None:
    from lifecycle.rows import email_digest

    return email_digest(value)


FUNCTIONS = {
    "lifecycle_utc": (1, canonical),
    "lifecycle_unreadable": (1, _unreadable),
    "lifecycle_plus_period": (2, _plus_period),
    "lifecycle_epoch": (1, _epoch),
    "lifecycle_email_digest": (1, _email_digest),
}


def register(dbapi_connection) -> None:
    for name, (arity, function) in FUNCTIONS.items():
        dbapi_connection.create_function(name, arity, function, deterministic=True)
