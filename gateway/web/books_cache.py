"""The month's reports as the screen reads them, computed once and kept for a short while.

A reconciliation reads the whole month (seconds at full size), and the screen asks for the same month over
and over: the list, each drill-down, the inspector's report and its download. :class:`MonthReports` keeps
each report by month for ``ttl_s`` (five minutes by default) so a drill-down is as fast as a page, and
recomputes it after; one computation at a time per report and month.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from fastapi import Query

from gateway.books import period as books_periods
from gateway.books.legs import Period, month_period
from gateway.books.reconcile import Reconciliation, reconcile
from gateway.store import GatewayStore
from gateway.web.context import WebContext

T = TypeVar("T")
TTL_S = 300.0


class MonthReports:
    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._kept: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, report: str, month: str, compute: Callable[[], T]) -> T:
        key = (report, month)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            kept = self._kept.get(key)
            if kept is not None and self._clock() - kept[0] < self.ttl_s:
                value: T = kept[1]
                return value
            value = compute()
            self._kept[key] = (self._clock(), value)
            return value


_REPORTS: weakref.WeakKeyDictionary[GatewayStore, MonthReports] = weakref.WeakKeyDictionary()
_REPORTS_LOCK = threading.Lock()


def reports_of(ctx: WebContext) -> MonthReports:
    """The reports kept for this store (one set per store, gone with it)."""
    with _REPORTS_LOCK:
        kept = _REPORTS.get(ctx.store)
        if kept is None:
            kept = _REPORTS[ctx.store] = MonthReports()
        return kept


def period_of(ctx: WebContext, month: str) -> Period:
    return month_period(month, utc_offset_minutes=ctx.config.utc_offset_minutes)


def month_reconciliation(ctx: WebContext, month: str) -> Reconciliation:
    """The month's three-way reconciliation (:func:`gateway.books.reconcile.reconcile`), kept five minutes."""
    return reports_of(ctx).get("reconciliation", month, lambda: reconcile(ctx.store, period_of(ctx, month)))


MONTH = Query(pattern=r"^(\d{4}-(0[1-9]|1[0-2]))?$",
              description="the month, YYYY-MM (site time); default this one")
"""The ``month`` parameter of every books page and its API (empty: this month, :func:`this_month`)."""


def this_month(ctx: WebContext, *, now: float | None = None) -> str:
    """The site's current month, ``YYYY-MM``."""
    at = time.time() if now is None else now
    return time.strftime("%Y-%m", time.gmtime(at + ctx.config.utc_offset_minutes * 60))


def site_zone(ctx: WebContext) -> ZoneInfo:
    """The site's zone for the settlement's local days: China Standard Time at +08:00, else the fixed offset."""
    minutes = ctx.config.utc_offset_minutes
    if minutes == 480:
        return books_periods.zone(books_periods.DEFAULT_TZ)
    if minutes % 60 == 0:
        return books_periods.zone(f"Etc/GMT{-minutes // 60:+d}" if minutes else "UTC")
    return books_periods.zone("UTC")


def books_period(ctx: WebContext, month: str) -> books_periods.Period:
    """The settlement's and the VBP view's period of ``month`` in the site's zone."""
    return books_periods.Period.month(month, site_zone(ctx))
