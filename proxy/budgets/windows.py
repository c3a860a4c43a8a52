"""Budget windows aligned to the calendar of an IANA time zone: pure functions.

A ``daily`` window starts at local midnight, a ``weekly`` one at midnight on Monday
(ISO weeks), a ``monthly`` one at midnight on the first; ``total`` never resets. Bounds
are returned as aware UTC datetimes, so they compare with stored ``created_at`` values
directly. Across a daylight-saving change a local day is 23 or 25 hours long: the
bounds follow the local calendar, not a fixed 24 h.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

__all__ = ["TOTAL_START", "Window", "window_bounds"]

# The start of a ``total`` window: before any record.
TOTAL_START = datetime(1970, 1, 1, tzinfo=UTC)


class Window(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    TOTAL = "total"


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    # fold=0: a midnight that happens twice (rare, but zones have moved midnight) is
    # the first one; one that never happens (skipped by a spring-forward) is normalised
    # by the UTC conversion to the first instant after the gap.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def window_bounds(window: Window, zone: ZoneInfo, at: datetime) -> tuple[datetime, datetime | None]:
    """The ``[start, end)`` of the window containing ``at`` (aware), in UTC.

    ``end`` is None for ``total``. ``at`` must be timezone-aware.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be a timezone-aware datetime")
    if window is Window.TOTAL:
        return TOTAL_START, None
    today = at.astimezone(zone).date()
    if window is Window.DAILY:
        first, following = today, today + timedelta(days=1)
    elif window is Window.WEEKLY:
        first = today - timedelta(days=today.weekday())
        following = first + timedelta(days=7)
    else:
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    return _local_midnight(first, zone), _local_midnight(following, zone)
