"""The books' settings: the ``[books]`` section of the gateway configuration (all keys optional).

::

    [books]
    expiry_windows_days = [90, 30, 7]   # alert on stock, licences and certificates expiring within these
    abnormal_weeks = 8                  # abnormal use: compared with this many weeks before this one
    abnormal_k = 3.0                    # ... above mean + k * standard deviation of those weeks
    abnormal_min_count = 5              # ... and at least this many used this week
    replenish_period_days = 7           # suggestions: enough for this long (weekly rounds)
    replenish_history_days = 28         # ... at the average use over this many days
    utc_offset_minutes = 480            # the hospital's clock (weeks and days start at its midnight)

    [books.routes]                      # pick-list routes: locations in walking order
    ward-east = ["CB01", "CB02", "dept:ICU-2"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from spd_common.toml_config import Section

_ROUTE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class BooksSettings:
    expiry_windows_days: tuple[int, ...] = (90, 30, 7)
    abnormal_weeks: int = 8
    abnormal_k: float = 3.0
    abnormal_min_count: int = 5
    replenish_period_days: int = 7
    replenish_history_days: int = 28
    utc_offset_minutes: int = 480
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def parse_books_section(s: Section) -> BooksSettings:
    """The settings a ``[books]`` section gives (defaults for the rest); raises ``ConfigError``."""
    out: dict[str, Any] = {}
    if s.has("expiry_windows_days"):
        windows = s.get_list("expiry_windows_days")
        if not windows or not all(type(w) is int and 1 <= w <= 3650 for w in windows):
            raise s.error("expiry_windows_days", "a non-empty list of whole days, 1 to 3650")
        out["expiry_windows_days"] = tuple(sorted(set(windows), reverse=True))
    if s.has("abnormal_weeks"):
        out["abnormal_weeks"] = s.get_int("abnormal_weeks", min=2, max=104)
    if s.has("abnormal_k"):
        out["abnormal_k"] = s.get_float("abnormal_k", min=0.0, max=100.0)
    if s.has("abnormal_min_count"):
        out["abnormal_min_count"] = s.get_int("abnormal_min_count", min=1, max=1_000_000)
    if s.has("replenish_period_days"):
        out["replenish_period_days"] = s.get_int("replenish_period_days", min=1, max=90)
    if s.has("replenish_history_days"):
        out["replenish_history_days"] = s.get_int("replenish_history_days", min=1, max=365)
    if s.has("utc_offset_minutes"):
        out["utc_offset_minutes"] = s.get_int("utc_offset_minutes", min=-720, max=840)
    routes = s.section("routes", optional=True)
    if routes is not None:
        found: dict[str, tuple[str, ...]] = {}
        for name in sorted(routes.raw()):
            if not _ROUTE.fullmatch(name):
                raise routes.error(name, "a route name is letters, digits and _ . : -")
            stops = routes.get_list(name)
            if not stops or not all(isinstance(x, str) and _ROUTE.fullmatch(x) for x in stops):
                raise routes.error(name, "a non-empty list of locations (cabinet ids or dept:<code>)")
            found[name] = tuple(stops)
        routes.done()
        out["routes"] = found
    s.done()
    return BooksSettings(**out)
