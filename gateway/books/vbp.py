"""The volume-based procurement (VBP, 集采) view: per category, how much of the use went to the winning products,
and whether the hospital is on course to use the volume it agreed for the year.

Units are lines of HIS-accepted use (one item each) less the HIS-accepted credits, by the same period rule as
settlement (use by local time of use, credits by local time of the return). Progress counts the winners'
units from 1 January to the end of the period (the month asked for, or the day ``as_of`` within the year)
against the category's agreed yearly volume; the pace puts the year-end figure at that count divided by the
fraction of the year gone, and a category whose year-end figure falls short of the agreed volume is behind.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction

from gateway.books.period import Period
from gateway.store import GatewayStore


@dataclass(frozen=True, slots=True)
class VbpCategoryUse:
    category: str
    name: str
    winner_units: int  # in the period
    other_units: int  # non-winning products of the category, in the period
    winner_share_pct: float | None  # winners / all, None when nothing was used
    agreed_volume: int
    year_to_date: int  # winners' units from 1 January to the end of the period
    progress_pct: float | None  # year to date / agreed, None without an agreed volume
    projected_year_end: int  # year to date at the pace so far
    behind_pace: bool


@dataclass(frozen=True, slots=True)
class VbpView:
    year: int
    period: Period  # the period whose use is shown (the month, or the year to ``as_of``)
    year_elapsed: Fraction  # of the year gone at the end of the period
    categories: list[VbpCategoryUse]


def vbp_view(store: GatewayStore, year: int, period: Period, *, as_of: dt.date | None = None) -> VbpView:
    """Use per VBP category in ``period`` (within ``year``) and the year's progress up to its end (or ``as_of``)."""
    end = min(period.last, as_of) if as_of is not None else period.last
    if end < period.first:
        end = period.first - dt.timedelta(days=1)
    shown = Period(period.first, end, period.tz, period.label)
    year_so_far = Period(dt.date(year, 1, 1), end, period.tz, f"{year}")
    days_in_year = (dt.date(year + 1, 1, 1) - dt.date(year, 1, 1)).days
    elapsed = Fraction(max(0, year_so_far.days), days_in_year)
    items = store.terms.vbp_items()
    in_period = _net_units(store, shown)
    to_date = _net_units(store, year_so_far)
    winners: dict[str, int] = defaultdict(int)
    others: dict[str, int] = defaultdict(int)
    ytd: dict[str, int] = defaultdict(int)
    for item in items:
        (winners if item.winner else others)[item.category] += in_period.get(item.gtin, 0)
        if item.winner:
            ytd[item.category] += to_date.get(item.gtin, 0)
    out: list[VbpCategoryUse] = []
    for cat in store.terms.vbp_categories(year):
        w, o, done = winners[cat.category], others[cat.category], ytd[cat.category]
        projected = int(done / elapsed) if elapsed > 0 else 0  # floor: a category is behind unless its pace holds
        out.append(VbpCategoryUse(
            category=cat.category, name=cat.name, winner_units=w, other_units=o,
            winner_share_pct=round(100 * w / (w + o), 1) if w + o else None, agreed_volume=cat.agreed_volume,
            year_to_date=done, progress_pct=round(100 * done / cat.agreed_volume, 1) if cat.agreed_volume else None,
            projected_year_end=projected, behind_pace=elapsed > 0 and projected < cat.agreed_volume))
    return VbpView(year, shown, elapsed, out)


def _net_units(store: GatewayStore, period: Period) -> dict[str, int]:
    if period.days <= 0:
        return {}
    units = dict(store.usage.used_counts(period.start_ms, period.end_ms))
    for credit in store.usage.credited_uses(period.start_ms, period.end_ms):
        units[credit.gtin] = units.get(credit.gtin, 0) - 1
    return units
