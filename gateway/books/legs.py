"""The three legs of reconciliation and the period they are read over.

* the HIS leg: the HIS's own charge and credit lines (``spd-gateway his-import``), the source of truth;
* the consumption leg: this gateway's consumption records (HIS-accepted charges, their credits), the
  bridge's refusals and the settled returns;
* the stock leg: stock movements (take, return, restock, use), read through :func:`stock_leg` only.

Reconciliation goes product by product (every rule is about one item, and an item is one product), so what
it holds at once is one product's month, not the hospital's.

The period is a calendar month in hospital local time. Each leg is read over the month widened by a grace
margin on both sides, so that the other half of a pair across the boundary is found; a mismatch belongs to
the month of its anchor (see :mod:`gateway.books.reconcile`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from gateway.books.projection import catch_up
from gateway.data.stock import RESTOCK, RETURN, TAKE, USE, MovementRow
from gateway.store import GatewayStore

DAY_MS: Final = 86_400_000
DEFAULT_GRACE_DAYS: Final = 7
DEFAULT_UTC_OFFSET_MINUTES: Final = 480  # the bridge's default (China Standard Time)
STOCK_KINDS: Final = (RESTOCK, TAKE, RETURN, USE)


@dataclass(frozen=True, slots=True)
class Period:
    month: str  # YYYY-MM
    start_ms: int  # local midnight of the 1st, as UTC epoch ms
    end_ms: int  # local midnight of the next month's 1st
    grace_ms: int
    utc_offset_minutes: int

    @property
    def read_from_ms(self) -> int:
        return self.start_ms - self.grace_ms

    @property
    def read_to_ms(self) -> int:
        return self.end_ms + self.grace_ms

    def holds(self, at_ms: int) -> bool:
        return self.start_ms <= at_ms < self.end_ms

    def local_date(self, at_ms: int) -> dt.date:
        return (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=at_ms + self.utc_offset_minutes * 60_000)).date()

    def local_time(self, at_ms: int) -> str:
        t = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=at_ms + self.utc_offset_minutes * 60_000)
        return t.strftime("%Y-%m-%d %H:%M:%S")


def month_period(month: str, *, grace_days: int = DEFAULT_GRACE_DAYS,
                 utc_offset_minutes: int = DEFAULT_UTC_OFFSET_MINUTES) -> Period:
    """The period of ``YYYY-MM``; ValueError for anything else."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise ValueError(f"month must be YYYY-MM, not {month!r}")
    if grace_days < 0:
        raise ValueError("grace days cannot be negative")
    year, mon = int(month[:4]), int(month[5:])
    first = dt.datetime(year, mon, 1)
    nxt = dt.datetime(year + (mon == 12), mon % 12 + 1, 1)
    epoch = dt.datetime(1970, 1, 1)
    off = dt.timedelta(minutes=utc_offset_minutes)
    start_ms = int((first - off - epoch).total_seconds() * 1000)
    end_ms = int((nxt - off - epoch).total_seconds() * 1000)
    return Period(month, start_ms, end_ms, grace_days * DAY_MS, utc_offset_minutes)


def ensure_projected(store: GatewayStore) -> int:
    """Bring the stock movements up to date with the device events (the stock ledger's projection)."""
    return catch_up(store)


def stock_leg(store: GatewayStore, period: Period, gtin: str) -> list[MovementRow]:
    """The stock movements reconciliation looks at: one product's serial-tracked items over the widened period,
    item by item in time order."""
    return store.books.movements_of(gtin, period.read_from_ms, period.read_to_ms, STOCK_KINDS)
