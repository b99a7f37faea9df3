"""Calendar periods and UTC instants, the arithmetic every decision rests on."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from dateutil.relativedelta import relativedelta

_PERIOD = re.compile(r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?$")


class MalformedValue(ValueError):
    """A stored value that cannot be read as the instant a rule needs."""


def parse_period(text: str) -> relativedelta:
    """An ISO 8601 duration of years, months, weeks and days: P3Y, P3M, P30D, P0D."""
    match = _PERIOD.match(str(text))
    if not match or text == "P":
        raise ValueError(f"not an ISO 8601 period of years, months, weeks or days: {text!r}")
    parts = {name: int(value) for name, value in match.groupdict().items() if value}
    return relativedelta(**parts)


def add_period(instant: datetime, period: relativedelta) -> datetime:
    """Calendar addition with month-end clipping: 2024-02-29 + 1 year = 2025-02-28."""
    return instant + period


def to_utc(value: object) -> datetime | None:
    """The UTC instant of a stored value; a DATE means 00:00 UTC of that day; naive means UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        return _parse_text(value)
    raise MalformedValue(f"unsupported value type {type(value).__name__}")


def _parse_text(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MalformedValue("not an ISO 8601 date or timestamp") from None
    return to_utc(parsed)


def utc_date(instant: datetime) -> date:
    return instant.astimezone(UTC).date()


def epoch_seconds(instant: datetime) -> int:
    return int(instant.timestamp())


def latest_due_anchor(as_of: datetime, period: relativedelta) -> datetime:
    """An instant no due anchor exceeds: month-end clipping moves a date by at most 3 days."""
    return as_of - period + timedelta(days=3)
