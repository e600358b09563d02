"""Monthly settlement: per supplier, what the hospital used in a month at the purchase price, to the cent.

Under the SPD model the supplier owns the stock until it is used and invoices monthly exactly the settlement
list. The rules (docs/books.md, "Settlement"):

* **Lines**: charges the HIS accepted (a ``consumption`` row), counted in the month of their *time of use*;
  credits the HIS accepted, counted as negative lines in the month of the *return*. A charge still pending at
  the HIS, or refused by it, is not in the list (the report counts them so nobody settles a month whose
  outbox has not drained); nor is a credit that is pending, refused or voided.
* **Month**: local calendar days in the hospital's zone (:mod:`gateway.books.period`).
* **Supplier**: the item's supplier in the catalog; without one, the supplier of the contract in force on
  the day of use; without either, "unknown supplier" (listed, never dropped).
* **Price**: the purchase price of the supplier's contract for the item in force on the day of use. Under zero
  mark-up that is the charged price; where they differ the line says so and is settled at the contract price.
  Without a contract in force the line is settled at the charged price and says so. A credit reverses its
  charge at the same price, so a charge and its credit net to zero whatever the contracts did in between.
* **Money**: integer fen throughout; a line's amount is units times unit price, a supplier's total the sum of its
  lines, the grand total the sum of the suppliers'.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.books.period import DayFinder, Period, local_time_text
from gateway.data.catalog import ItemRow
from gateway.data.terms import ContractRow
from gateway.store import GatewayStore

UNKNOWN_SUPPLIER = ""
UNKNOWN_SUPPLIER_NAME = "unknown supplier"


class LineKey(NamedTuple):
    supplier: str
    gtin: str
    entry: str  # "charge" or "credit"
    charged_unit_fen: int
    contract_unit_fen: int | None
    contract_no: str


@dataclass(frozen=True, slots=True)
class SettlementLine:
    """Units of one item at one price: charges (positive) or credits (negative)."""

    supplier: str
    gtin: str
    item_code: str
    name: str
    entry: str
    units: int  # signed: negative for credits
    charged_unit_fen: int
    settled_unit_fen: int
    contract_no: str
    charged_fen: int  # units times charged unit price
    settled_fen: int  # units times settled unit price: what the supplier is paid
    note: str


@dataclass(frozen=True, slots=True)
class TraceItem:
    """High-value trace summary: one item's uses and credits in the month and the net amount settled."""

    supplier: str
    gtin: str
    name: str
    used: int
    credited: int
    settled_fen: int


@dataclass(slots=True)
class SupplierSettlement:
    supplier: str  # "" for lines whose supplier is unknown
    name: str
    licence_no: str
    lines: list[SettlementLine] = field(default_factory=list)
    trace: list[TraceItem] = field(default_factory=list)

    @property
    def units(self) -> int:
        return sum(line.units for line in self.lines)

    @property
    def charged_fen(self) -> int:
        return sum(line.charged_fen for line in self.lines)

    @property
    def settled_fen(self) -> int:
        return sum(line.settled_fen for line in self.lines)

    @property
    def label(self) -> str:
        return self.supplier or UNKNOWN_SUPPLIER_NAME


@dataclass(frozen=True, slots=True)
class NotAccepted:
    """Charges used in the month that the HIS has not accepted: not settled."""

    pending: int
    pending_fen: int
    refused: int
    refused_fen: int


@dataclass(slots=True)
class Settlement:
    period: Period
    suppliers: list[SupplierSettlement]
    not_accepted: NotAccepted

    @property
    def charged_fen(self) -> int:
        return sum(s.charged_fen for s in self.suppliers)

    @property
    def settled_fen(self) -> int:
        return sum(s.settled_fen for s in self.suppliers)

    @property
    def units(self) -> int:
        return sum(s.units for s in self.suppliers)


@dataclass(frozen=True, slots=True)
class DetailLine:
    """One high-value line of the trace detail: a charge or its credit."""

    supplier: str
    entry: str
    gtin: str
    name: str
    lot: str
    serial: str
    admission: str
    dept: str
    operator: str
    at: str  # local time of use (charge) or of the return (credit)
    charge_id: str  # the credit's id for a credit
    his_ref: str
    settled_fen: int  # signed


class Terms:
    """Who supplies an item and at what price on a day, from the catalog and the contracts (read once)."""

    def __init__(self, store: GatewayStore) -> None:
        self.items: dict[str, ItemRow] = {i.gtin: i for i in store.catalog.items()}
        self._contracts: dict[str, list[ContractRow]] = defaultdict(list)
        for c in store.terms.contracts():
            self._contracts[c.gtin].append(c)
        for rows in self._contracts.values():
            rows.sort(key=lambda c: (c.valid_from, c.supplier), reverse=True)  # latest-starting first
        self.suppliers = {s.supplier: s for s in store.terms.suppliers()}

    def resolve(self, gtin: str, day: dt.date) -> tuple[str, ContractRow | None]:
        """(supplier, contract in force on ``day``) of an item; supplier "" when unknown."""
        item = self.items.get(gtin)
        named = item.supplier if item is not None else ""
        iso = day.isoformat()
        for c in self._contracts.get(gtin, ()):
            if c.valid_from <= iso <= c.valid_to and (not named or c.supplier == named):
                return c.supplier, c
        return named or UNKNOWN_SUPPLIER, None

    def change_days(self, period: Period) -> list[dt.date]:
        """Days inside the period (after its first) on which some contract starts or ends: the segments' starts."""
        days: set[dt.date] = set()
        for rows in self._contracts.values():
            for c in rows:
                for d in (c.valid_from, _day_after(c.valid_to)):
                    if d is not None and period.first < (day := dt.date.fromisoformat(d)) <= period.last:
                        days.add(day)
        return sorted(days)

    def high_value(self, gtin: str) -> bool:
        item = self.items.get(gtin)
        return True if item is None else item.high_value


def settle(store: GatewayStore, period: Period, *, supplier: str | None = None) -> Settlement:
    """The settlement of ``period``: every supplier's lines and totals (only ``supplier``'s when given)."""
    terms = Terms(store)
    finder = DayFinder(period)
    acc: dict[LineKey, int] = defaultdict(int)
    # charges: one aggregate query per stretch of days with the same contracts in force (usually the month)
    starts = [period.first, *terms.change_days(period)]
    for i, first in enumerate(starts):
        last = starts[i + 1] - dt.timedelta(days=1) if i + 1 < len(starts) else period.last
        segment = Period(first, last, period.tz, period.label)
        for used in store.usage.used_items(segment.start_ms, segment.end_ms):
            who, contract = terms.resolve(used.gtin, first)
            acc[_key(who, used.gtin, "charge", used.price_fen, contract)] += used.units
    for credit in store.usage.credited_uses(period.start_ms, period.end_ms):
        who, contract = terms.resolve(credit.gtin, finder.day(credit.used_at_ms))
        acc[_key(who, credit.gtin, "credit", credit.price_fen, contract)] -= 1
    by_supplier: dict[str, SupplierSettlement] = {}
    for key in sorted(acc, key=lambda k: (k.supplier, k.gtin, k.entry, k.charged_unit_fen, k.contract_no)):
        if supplier is not None and key.supplier != supplier:
            continue
        s = by_supplier.get(key.supplier)
        if s is None:
            known = terms.suppliers.get(key.supplier)
            s = by_supplier[key.supplier] = SupplierSettlement(
                key.supplier, known.name if known else ("" if key.supplier else UNKNOWN_SUPPLIER_NAME),
                known.licence_no if known else "")
        s.lines.append(_line(key, acc[key], terms))
    if supplier is not None and supplier not in by_supplier:
        known = terms.suppliers.get(supplier)
        by_supplier[supplier] = SupplierSettlement(supplier, known.name if known else "",
                                                   known.licence_no if known else "")
    for s in by_supplier.values():
        s.trace = _trace(s, terms)
    ordered = sorted(by_supplier.values(), key=lambda s: (s.supplier == UNKNOWN_SUPPLIER, s.supplier))
    return Settlement(period, ordered, _not_accepted(store, period, terms, supplier, finder))


def detail(store: GatewayStore, period: Period, *, supplier: str | None = None) -> Iterator[DetailLine]:
    """Every high-value line of the period (charges by time of use, credits by time of return), streamed."""
    terms = Terms(store)
    finder = DayFinder(period)
    for u in store.usage.lines(period.start_ms, period.end_ms, high_value_only=True):
        who, contract = terms.resolve(u.gtin, finder.day(u.used_at_ms))
        if supplier is not None and who != supplier:
            continue
        unit = contract.purchase_price_fen if contract is not None else u.price_fen
        sign = 1 if u.entry == "charge" else -1
        yield DetailLine(who, u.entry, u.gtin, u.name, u.lot, u.serial, u.admission, u.dept, u.operator,
                         local_time_text(u.at_ms, period.tz), u.charge_id, u.his_ref, sign * unit)


def _key(supplier: str, gtin: str, entry: str, charged: int, contract: ContractRow | None) -> LineKey:
    if contract is None:
        return LineKey(supplier, gtin, entry, charged, None, "")
    return LineKey(supplier, gtin, entry, charged, contract.purchase_price_fen, contract.contract_no)


def _line(key: LineKey, units: int, terms: Terms) -> SettlementLine:
    item = terms.items.get(key.gtin)
    settled_unit = key.charged_unit_fen if key.contract_unit_fen is None else key.contract_unit_fen
    if key.contract_unit_fen is None:
        note = "no contract in force: settled at the charged price"
    elif key.contract_unit_fen < key.charged_unit_fen:
        note = (f"charged {_yuan(key.charged_unit_fen)} above the contract price {_yuan(key.contract_unit_fen)} "
                "(mark-up): settled at the contract price")
    elif key.contract_unit_fen > key.charged_unit_fen:
        note = (f"charged {_yuan(key.charged_unit_fen)} below the contract price {_yuan(key.contract_unit_fen)}: "
                "settled at the contract price")
    else:
        note = ""
    return SettlementLine(
        supplier=key.supplier, gtin=key.gtin, item_code=item.item_code if item else "",
        name=item.name if item else "(not in the catalog)", entry=key.entry, units=units,
        charged_unit_fen=key.charged_unit_fen, settled_unit_fen=settled_unit, contract_no=key.contract_no,
        charged_fen=units * key.charged_unit_fen, settled_fen=units * settled_unit, note=note)


def _trace(s: SupplierSettlement, terms: Terms) -> list[TraceItem]:
    used: dict[str, int] = defaultdict(int)
    credited: dict[str, int] = defaultdict(int)
    amount: dict[str, int] = defaultdict(int)
    for line in s.lines:
        if not terms.high_value(line.gtin):
            continue
        (used if line.entry == "charge" else credited)[line.gtin] += abs(line.units)
        amount[line.gtin] += line.settled_fen
    return [TraceItem(s.supplier, g, terms.items[g].name if g in terms.items else "(not in the catalog)",
                      used[g], credited[g], amount[g]) for g in sorted(amount)]


def _not_accepted(store: GatewayStore, period: Period, terms: Terms, supplier: str | None,
                  finder: DayFinder) -> NotAccepted:
    counts = {"pending": [0, 0], "parked": [0, 0]}
    for c in store.usage.not_accepted():
        if not period.start_ms <= c.ts_ms < period.end_ms:
            continue
        if supplier is not None and terms.resolve(c.gtin, finder.day(c.ts_ms))[0] != supplier:
            continue
        counts[c.status][0] += 1
        counts[c.status][1] += c.price_fen
    return NotAccepted(counts["pending"][0], counts["pending"][1], counts["parked"][0], counts["parked"][1])


def _day_after(iso: str) -> str | None:
    day = dt.date.fromisoformat(iso)
    return None if day == dt.date.max else (day + dt.timedelta(days=1)).isoformat()


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def supplier_totals(settlement: Settlement) -> Sequence[tuple[str, int, int, int]]:
    """(supplier, units, charged fen, settled fen) per supplier, for reports and tests."""
    return [(s.supplier, s.units, s.charged_fen, s.settled_fen) for s in settlement.suppliers]
