"""The books' periods: a calendar month or year in the hospital's local time zone, as device-time bounds.

Devices stamp events in UTC milliseconds; the books count a line in the period of its local calendar day in
the hospital's zone (``Asia/Shanghai`` unless configured), so a stent used at 23:30 on 30 November in Beijing
belongs to November even though it is 15:30 UTC. A period is ``[start_ms, end_ms)``: local midnight at the
start of its first day up to local midnight at the start of the day after its last.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ = "Asia/Shanghai"
_MONTH = re.compile(r"(\d{4})-(\d{2})")


class PeriodError(ValueError):
    """A month, year or time zone the books cannot use."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise PeriodError(f"unknown time zone {name!r}") from err


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` as (year, month)."""
    m = _MONTH.fullmatch(text.strip())
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise PeriodError(f"expected a month as YYYY-MM, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def midnight_ms(day: dt.date, tz: ZoneInfo) -> int:
    """Device time (UTC ms) of local midnight at the start of ``day``."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def local_day(ms: int, tz: ZoneInfo) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, tz).date()


def local_time_text(ms: int, tz: ZoneInfo) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in the hospital's zone."""
    return dt.datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class Period:
    """Local days ``first`` to ``last`` (inclusive) in ``tz``."""

    first: dt.date
    last: dt.date
    tz: ZoneInfo
    label: str

    @classmethod
    def month(cls, text: str, tz: ZoneInfo) -> Period:
        year, month = parse_month(text)
        first = dt.date(year, month, 1)
        nxt = dt.date(year + 1, 1, 1) if month == 12 else dt.date(year, month + 1, 1)
        return cls(first, nxt - dt.timedelta(days=1), tz, f"{year:04d}-{month:02d}")

    @classmethod
    def year(cls, year: int, tz: ZoneInfo) -> Period:
        return cls(dt.date(year, 1, 1), dt.date(year, 12, 31), tz, f"{year:04d}")

    @property
    def start_ms(self) -> int:
        return midnight_ms(self.first, self.tz)

    @property
    def end_ms(self) -> int:
        return midnight_ms(self.last + dt.timedelta(days=1), self.tz)

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def day_starts(self) -> list[int]:
        """Device time of each local midnight from the first day to the day after the last."""
        return [midnight_ms(self.first + dt.timedelta(days=i), self.tz) for i in range(self.days + 1)]


class DayFinder:
    """The local day of a device time: by bisection within a period (fast), by the zone outside it."""

    def __init__(self, period: Period) -> None:
        self._period = period
        self._starts = period.day_starts()

    def day(self, ms: int) -> dt.date:
        i = bisect.bisect_right(self._starts, ms) - 1
        if 0 <= i < len(self._starts) - 1:
            return self._period.first + dt.timedelta(days=i)
        return local_day(ms, self._period.tz)
