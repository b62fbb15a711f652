"""The store's time range (every instant Python holds in UTC, on both backends alike), the
one check every time (the clock's, `until`, as-of, occurred_at) goes through before any
I/O, and the text form times are hashed (and stored on SQLite) in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from event_sourcing.errors import EventValidationError

MIN_TIME = datetime.min.replace(tzinfo=UTC)  # 0001-01-01T00:00:00Z
MAX_TIME = datetime.max.replace(tzinfo=UTC)  # 9999-12-31T23:59:59.999999Z


def utc_time(value: Any, what: str) -> datetime:
    """`value` as a UTC datetime, or EventValidationError if it is not a timezone-aware
    datetime between MIN_TIME and MAX_TIME (checked before any I/O)."""
    if type(value) is datetime and value.tzinfo is UTC:
        return value  # the common case: the default clock
    if not isinstance(value, datetime):
        raise EventValidationError(
            f"{what} must be a timezone-aware datetime, got {type(value).__name__} {value!r}"
        )
    try:
        offset = value.utcoffset()
    except (TypeError, ValueError) as exc:
        raise EventValidationError(f"{what} {value!r} has a broken time zone: {exc}") from None
    if offset is None:
        raise EventValidationError(
            f"{what} {value!r} is naive; give a timezone-aware time, e.g. "
            "datetime.now(UTC) or value.replace(tzinfo=UTC)"
        )
    try:
        value = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise EventValidationError(
            f"{what} {value.isoformat()} is outside the store's time range "
            f"({MIN_TIME.isoformat()} to {MAX_TIME.isoformat()} in UTC)"
        ) from None
    if type(value) is not datetime:  # a subclass (e.g. pandas.Timestamp): keep plain values
        value = datetime(
            value.year, value.month, value.day, value.hour, value.minute, value.second,
            value.microsecond, tzinfo=UTC,
        )
    return value


def occurred_text(value: Any, what: str) -> str:
    """A given occurred_at (business time) as stored and hashed: checked like every time,
    then fixed-width ISO 8601 in UTC (integrity.hashing's timestamp_text)."""
    return utc_time(value, what).isoformat(timespec="microseconds")


parse_time = datetime.fromisoformat  # the inverse of occurred_text
