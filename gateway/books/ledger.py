"""The stock ledger: what is on hand where, receipts and restocks from the operator, counts and their
discrepancies. Every function returns data (dataclasses); ``spd-gateway stock`` and the web pages print it.

On hand at a location is the sum of its movements (:mod:`gateway.books.projection` says which event makes
which): serialised items per serial (one unit, or 0 once it left), others per lot. ``dept:X`` holds the
department's own store and what its staff took out of cabinets and have not used or put back yet.
A count compares, per item, what the ledger expects at the location at the count's time with what was
counted, records both, and records a ``count_adjust`` movement of the difference so the ledger then agrees
with the shelf; the differences stay listed as discrepancies.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.books.imports import CountedLine, ReceiptLine
from gateway.books.projection import OPERATOR_STORE
from gateway.data.stock import COUNT_ADJUST, RECEIPT, RESTOCK, MovementRow
from gateway.data.stocktake import CountLineRow, CountRow
from gateway.store import GatewayStore


@dataclass(frozen=True, slots=True)
class StockLine:
    location: str
    dept: str
    gtin: str
    name: str
    lot: str
    serial: str  # "" for items kept per lot
    qty: int
    expiry: str  # ISO date, "" when no movement said
    last_ms: int


@dataclass(frozen=True, slots=True)
class CountedItem:
    gtin: str
    lot: str
    serial: str
    counted: int


@dataclass(frozen=True, slots=True)
class CountLine:
    gtin: str
    lot: str
    serial: str
    expected: int  # what the ledger held at the location at the count's time
    counted: int

    @property
    def difference(self) -> int:
        return self.counted - self.expected


@dataclass(frozen=True, slots=True)
class CountOutcome:
    count_id: str
    location: str
    at_ms: int
    recorded: bool  # False: this count was recorded before (nothing changed)
    lines: tuple[CountLine, ...]

    @property
    def discrepancies(self) -> list[CountLine]:
        return [line for line in self.lines if line.difference]


@dataclass(frozen=True, slots=True)
class Discrepancy:
    count_id: str
    location: str
    at_ms: int
    counted_by: str
    gtin: str
    name: str
    lot: str
    serial: str
    expected: int
    counted: int

    @property
    def difference(self) -> int:
        return self.counted - self.expected


def item_names(store: GatewayStore) -> dict[str, str]:
    return {r.gtin: r.name for r in store.catalog.items()}


def on_hand(store: GatewayStore, *, location: str | None = None, dept: str | None = None,
            gtin: str | None = None, as_of_ms: int | None = None) -> list[StockLine]:
    """What is on hand (non-zero) per location and item; only ``dept``'s cabinets and store when given."""
    names = item_names(store)
    depts = store.stock.location_depts()
    out = []
    for b in store.stock.balances(location=location, gtin=gtin, as_of_ms=as_of_ms):
        d = depts.get(b.location, b.location[5:] if b.location.startswith("dept:") else "")
        if dept is not None and d != dept:
            continue
        out.append(StockLine(b.location, d, b.gtin, names.get(b.gtin, ""), b.lot, b.serial, b.qty, b.expiry,
                             b.last_ms))
    return out


def record_receipts(store: GatewayStore, lines: Sequence[ReceiptLine], *, by: str,
                    now_ms: int | None = None) -> int:
    """Record receipts into the operator's store and restocks from it (a line of a note already recorded changes
    nothing); how many lines were given."""
    at_default = int(time.time() * 1000) if now_ms is None else now_ms
    depts = store.stock.location_depts()
    rows = []
    for r in lines:
        at = r.at_ms if r.at_ms is not None else at_default
        dept = r.location[5:] if r.location.startswith("dept:") else depts.get(r.location, "")
        if r.kind == "receipt":
            rows.append(MovementRow(f"note:{r.ref}", at, RECEIPT, r.location, dept, r.gtin, r.lot, r.serial, r.qty,
                                    by, "", "", 0, "", r.expiry))
        else:
            rows.append(MovementRow(f"note:{r.ref}", at, RESTOCK, r.location, dept, r.gtin, r.lot, r.serial, r.qty,
                                    by, "", "", 0, OPERATOR_STORE, r.expiry))
    return store.stock.record(rows)


def _key(gtin: str, lot: str, serial: str) -> tuple[str, str]:
    return (gtin, "#" + serial) if serial else (gtin, lot)


def record_count(store: GatewayStore, location: str, counted: Sequence[CountedItem], *, at_ms: int, by: str,
                 origin: str, count_id: str | None = None, serialised_only: bool = False) -> CountOutcome:
    """Count a whole location: expected (the ledger at ``at_ms``) against counted, recorded with the
    ``count_adjust`` movements of the differences. An item expected and not in ``counted`` was counted 0
    (with ``serialised_only``, an RFID count, items kept per lot are not counted at all)."""
    if count_id is None:
        digest = hashlib.sha256(repr((location, at_ms, sorted((c.gtin, c.lot, c.serial, c.counted)
                                                              for c in counted))).encode()).hexdigest()
        count_id = f"C{digest[:16]}"
    expected: dict[tuple[str, str], tuple[str, str, str, int]] = {}
    for b in store.stock.balances(location=location, as_of_ms=at_ms + 1):
        if serialised_only and not b.serial:
            continue
        expected[_key(b.gtin, b.lot, b.serial)] = (b.gtin, b.lot, b.serial, b.qty)
    found: dict[tuple[str, str], tuple[str, str, str, int]] = {}
    for c in counted:
        k = _key(c.gtin, c.lot, c.serial)
        lot = c.lot or (expected[k][1] if k in expected else "")
        prior = found.get(k, (c.gtin, lot, c.serial, 0))
        found[k] = (c.gtin, lot, c.serial, prior[3] + c.counted)
    lines = []
    for k in sorted(set(expected) | set(found)):
        gtin, lot, serial, exp = expected[k] if k in expected else (*found[k][:3], 0)
        got = found[k][3] if k in found else 0
        lines.append(CountLine(gtin, lot or (found[k][1] if k in found else ""), serial, exp, got))
    dept = location[5:] if location.startswith("dept:") else store.stock.location_depts().get(location, "")
    adjustments = [MovementRow(f"count:{count_id}", at_ms, COUNT_ADJUST, location, dept, ln.gtin, ln.lot, ln.serial,
                               ln.difference, by, "", "", 0) for ln in lines if ln.difference]
    recorded = store.stocktake.record(
        CountRow(count_id, location, at_ms, by, origin),
        [CountLineRow(count_id, ln.gtin, ln.lot, ln.serial, ln.expected, ln.counted) for ln in lines], adjustments)
    return CountOutcome(count_id, location, at_ms, recorded, tuple(lines))


def import_count(store: GatewayStore, lines: Sequence[CountedLine], *, at_ms: int, by: str,
                 origin: str) -> list[CountOutcome]:
    """One count per location in an imported stock-take."""
    per_location: dict[str, list[CountedItem]] = defaultdict(list)
    for ln in lines:
        per_location[ln.location].append(CountedItem(ln.gtin, ln.lot, ln.serial, ln.counted))
    return [record_count(store, loc, items, at_ms=at_ms, by=by, origin=origin)
            for loc, items in sorted(per_location.items())]


def discrepancies(store: GatewayStore, *, location: str | None = None,
                  count_id: str | None = None) -> list[Discrepancy]:
    """Every count line whose count differed from the ledger, oldest count first."""
    names = item_names(store)
    return [Discrepancy(c.count_id, c.location, c.at_ms, c.counted_by, ln.gtin, names.get(ln.gtin, ""), ln.lot,
                        ln.serial, ln.expected, ln.counted)
            for c, ln in store.stocktake.discrepancies(location=location, count_id=count_id)]
