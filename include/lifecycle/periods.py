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


def due_anchors(as_of: datetime, period: relativedelta) -> list[tuple[datetime | None, datetime]]:
    """The anchors due as of `as_of` (anchor + period <= as_of) as closed intervals, the first unbounded below.

    Calendar addition moves the date and keeps the time of day. On dates it is monotone, but month-end
    clipping sends several dates to one (2024-02-28 and 2024-02-29 + 1 year are both 2025-02-28), so
    on each date that lands on the as-of's own date only the times up to the as-of's time are due:
    2024-02-28 23:00 + 1 year is not due as of 2025-02-28 00:00, although 2024-02-29 00:00 is."""
    as_of_day = as_of.date()
    time_of_day = as_of - _midnight(as_of_day)

    def landing(day: date) -> date:
        return add_period(_midnight(day), period).date()

    last_whole_day = (as_of - period).date() + timedelta(days=4)
    while landing(last_whole_day) >= as_of_day:
        last_whole_day -= timedelta(days=1)
    intervals = [(None, _midnight(last_whole_day + timedelta(days=1)) - timedelta(microseconds=1))]
    day = last_whole_day + timedelta(days=1)
    while landing(day) == as_of_day:
        start, end = _midnight(day), _midnight(day) + time_of_day
        if intervals[-1][1] == start - timedelta(microseconds=1):
            intervals[-1] = (intervals[-1][0], end)
        else:
            intervals.append((start, end))
        day += timedelta(days=1)
    return intervals


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
