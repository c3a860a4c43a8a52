"""Budget windows: calendar alignment in a non-UTC zone, DST days, month ends.

Expected bounds are worked by hand from the zones' published offsets: Europe/Berlin is
UTC+1 in winter and UTC+2 in summer (DST from 2026-03-29 02:00 to 2026-10-25 03:00 local);
America/Los_Angeles is UTC-8 / UTC-7 (DST 2026-03-08 to 2026-11-01).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from proxy.budgets.windows import TOTAL_START, Window, window_bounds

BERLIN = ZoneInfo("Europe/Berlin")
LA = ZoneInfo("America/Los_Angeles")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "zone", "at", "start", "end"),
    [
        # 23:30 UTC on 28 Nov is 00:30 on 29 Nov in Berlin (UTC+1): the 29th's window
        (
            Window.DAILY,
            BERLIN,
            utc(2026, 11, 28, 23, 30),
            utc(2026, 11, 28, 23),
            utc(2026, 11, 29, 23),
        ),
        # 22:59 UTC is still the 28th in Berlin
        (
            Window.DAILY,
            BERLIN,
            utc(2026, 11, 28, 22, 59),
            utc(2026, 11, 27, 23),
            utc(2026, 11, 28, 23),
        ),
        # the spring-forward day in Berlin is 23 hours long: 28 Mar 23:00 UTC to 29 Mar 22:00
        (Window.DAILY, BERLIN, utc(2026, 3, 29, 12), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
        # the fall-back day is 25 hours long: 24 Oct 22:00 UTC to 25 Oct 23:00
        (Window.DAILY, BERLIN, utc(2026, 10, 25, 12), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)),
        # Sunday 29 Nov 2026 in LA (UTC-8): the ISO week began Monday 23 Nov, 08:00 UTC
        (Window.WEEKLY, LA, utc(2026, 11, 29, 20), utc(2026, 11, 23, 8), utc(2026, 11, 30, 8)),
        # 1 Dec 05:00 UTC is still 30 Nov 21:00 in LA: November's window
        (Window.MONTHLY, LA, utc(2026, 12, 1, 5), utc(2026, 11, 1, 7), utc(2026, 12, 1, 8)),
        # February 2028 is a leap month; Berlin in winter
        (Window.MONTHLY, BERLIN, utc(2028, 2, 29, 12), utc(2028, 1, 31, 23), utc(2028, 2, 29, 23)),
        (
            Window.MONTHLY,
            BERLIN,
            utc(2026, 12, 31, 23, 30),
            utc(2026, 12, 31, 23),
            utc(2027, 1, 31, 23),
        ),
    ],
)
def test_windows_follow_the_local_calendar(window, zone, at, start, end):
    assert window_bounds(window, zone, at) == (start, end)


def test_total_never_resets():
    assert window_bounds(Window.TOTAL, BERLIN, utc(2030, 1, 1)) == (TOTAL_START, None)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="aware"):
        window_bounds(Window.DAILY, BERLIN, datetime(2026, 11, 29))
