"""A hospital's month, made up in advance: what every cabinet and handheld records, and what the HIS's clerks
do by hand, with anomalies of every reconciliation kind injected the way they happen.

Pure and deterministic (same seed, same month): :func:`make_month` returns each device's events in time
order (timestamps in the simulated month, not now) and the HIS-side acts; :mod:`hw_sim.month` sends the
events through the real wire and performs the acts. Normal flows, which must give no mismatch:

* plain: a restocker puts the item in a cabinet, a nurse takes it, the department's handheld scans it on a
  patient (the gateway charges it through the HIS interface);
* put back: taken, and put back into the cabinet unused (nothing charged);
* credited at the cabinet: taken, scanned, and put back the next day (the gateway credits the charge);
* credited at the handheld: taken, scanned, and returned unused the next day to the department store;
* manual with serial: taken, not scanned; the clerk charges it at the HIS by hand with its serial;
* manual without serial: taken, not scanned; the clerk charges the product by hand (one of the three
  cheapest products, kept for this: no anomaly is of those, so the match to the take is never ambiguous);
* across the month boundary: taken before midnight on the last day of a month, scanned after it.

Injected, ``per_kind`` of each (keys as ``spd-gateway reconcile`` names them):

* taken_not_charged: taken from a cabinet and never scanned, put back or charged;
* serial_reused: a handheld that was offline scans a serial another handheld had already scanned;
* expired_charged: a code without expiry, charged; the lot's expiry, imported after use, is before the use;
* charged_not_taken: a manual HIS charge of an item no cabinet gave out (no serial, no take);
* swapped_charge: the HIS line of a scanned item edited at the HIS to another item's charge code;
* price_markup: the HIS line of a scanned item edited at the HIS to a price above the contract;
* charged_twice: the clerk enters by hand a second charge for an item the interface already charged;
* credit_without_charge: a manual HIS credit reversing a charge the HIS never booked.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any, Final

from device.cabinet.epc import encode_sgtin96
from device.udi.gs1 import GS, to_element_string
from hw_sim.catalog import SimCatalogItem
from hw_sim.udi_gen import DEFAULT_COMPANY_PREFIX, make_udi

MIN_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
INJECTED_KINDS: Final = ("charged_not_taken", "taken_not_charged", "swapped_charge", "serial_reused",
                         "expired_charged", "credit_without_charge", "charged_twice", "price_markup")


@dataclass(slots=True)
class SimEvent:
    device: str
    ts_ms: int
    kind: str
    body: dict[str, Any]
    seq: int = 0  # set when the device's log is put in order


@dataclass(frozen=True, slots=True)
class Item:
    gtin: str
    lot: str
    serial: str
    expiry: dt.date | None  # None: the code carries no expiry
    catalog: SimCatalogItem

    @property
    def key(self) -> str:
        return f"{self.gtin}/{self.serial}"

    def udi(self) -> str:
        if self.expiry is not None:
            return make_udi(gtin=self.gtin, lot=self.lot, serial=self.serial, expiry=self.expiry, symbology="]d2")
        return "]d2" + to_element_string([("01", self.gtin), ("10", self.lot), ("21", self.serial)], gs=GS)


@dataclass(slots=True)
class Flow:
    """One item's story; ``scan`` is its consume event when scanned."""

    kind: str
    item: Item
    dept: str
    nurse: str
    admission: str
    take: SimEvent | None = None
    scan: SimEvent | None = None
    again: SimEvent | None = None  # a second scan of the same serial (re-use)


@dataclass(frozen=True, slots=True)
class ManualLine:
    """A line a HIS clerk enters by hand (a charge, or with ``reverses`` a credit)."""

    his_id: str
    entry: str
    admission: str
    charge_code: str
    gtin: str
    lot: str
    serial: str
    qty: int
    unit_price_fen: int
    at_ms: int
    dept: str
    operator: str
    reverses: str = ""


@dataclass(frozen=True, slots=True)
class LineEdit:
    """A clerk's change to a charge line the interface booked: its charge code or its unit price."""

    flow_index: int  # the scanned flow whose charge is edited (its charge id is known once seqs are set)
    charge_code: str | None = None
    unit_price_fen: int | None = None


@dataclass(slots=True)
class Injection:
    kind: str
    key: str  # filled for HIS-line keys once the charge ids are known
    dept: str
    operator: str
    note: str
    flow_index: int = -1


@dataclass(slots=True)
class Month:
    month: str
    start_ms: int  # local midnight of the 1st, UTC epoch ms
    days: int
    devices: dict[str, list[SimEvent]] = field(default_factory=dict)
    flows: list[Flow] = field(default_factory=list)
    manual: list[ManualLine] = field(default_factory=list)
    edits: list[LineEdit] = field(default_factory=list)
    lot_expiry: list[tuple[str, str, str]] = field(default_factory=list)  # (gtin, lot, expiry ISO), every lot
    injections: list[Injection] = field(default_factory=list)
    offline: set[str] = field(default_factory=set)  # devices that send only at the end
    counts: dict[str, int] = field(default_factory=dict)


def month_start_ms(month: str, utc_offset_minutes: int) -> int:
    first = dt.datetime(int(month[:4]), int(month[5:]), 1) - dt.timedelta(minutes=utc_offset_minutes)
    return int((first - dt.datetime(1970, 1, 1)).total_seconds() * 1000)


class _Maker:
    def __init__(self, month: str, cabinets: int, days: int, seed: int, uses_per_day: int, per_kind: int,
                 catalog: list[SimCatalogItem], utc_offset_minutes: int) -> None:
        self.rng = random.Random(f"month/{seed}/{month}")
        self.catalog = catalog
        self.offset_ms = utc_offset_minutes * MIN_MS
        self.m = Month(month, month_start_ms(month, utc_offset_minutes), days)
        self.cabinets = [f"CAB{i:04d}" for i in range(1, cabinets + 1)]
        self.n_depts = max(1, min(12, cabinets // 8 or 1))
        self.depts = [f"DEP{d:02d}" for d in range(1, self.n_depts + 1)]
        self.dept_of = {c: self.depts[i % self.n_depts] for i, c in enumerate(self.cabinets)}
        self.cabinets_of = {d: [c for c in self.cabinets if self.dept_of[c] == d] for d in self.depts}
        self.handheld_of = {d: f"HH{d[3:]}" for d in self.depts}
        self.nurses = {d: [f"N{d[3:]}{k}" for k in range(1, 4)] for d in self.depts}
        self.uses_per_day = uses_per_day
        by_price = sorted(catalog, key=lambda c: c.price_fen)
        self.by_hand = by_price[:3]  # the cheapest, the ones clerks still charge by hand from the label
        self.others = by_price[3:]
        self.per_kind = per_kind
        self.serial = 100_000 + seed % 1000 * 1000_000
        self.lot_no = 0
        self.his_no = 0

    # ------------------------------------------------------------ building blocks

    def ev(self, device: str, ts_ms: int, kind: str, body: dict[str, Any]) -> SimEvent:
        e = SimEvent(device, ts_ms, kind, body)
        self.m.devices.setdefault(device, []).append(e)
        return e

    def item(self, *, expiry: bool = True, use_ms: int = 0, expired: bool = False,
             products: list[SimCatalogItem] | None = None) -> Item:
        self.serial += 1
        self.lot_no += 1
        cat = self.rng.choice(products or self.catalog)
        lot = f"{'LX' if expired else 'L'}{self.lot_no:06d}"
        use_day = self.local_date(use_ms or self.m.start_ms)
        exp = use_day + dt.timedelta(days=self.rng.randrange(200, 900))
        if expired:
            exp = use_day - dt.timedelta(days=self.rng.randrange(3, 40))
        it = Item(cat.gtin, lot, str(self.serial), exp if expiry else None, cat)
        self.m.lot_expiry.append((it.gtin, it.lot, exp.isoformat()))
        return it

    def local_date(self, at_ms: int) -> dt.date:
        return (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=at_ms + self.offset_ms)).date()

    def admission(self) -> str:
        return f"ZY{self.rng.randrange(10**9, 10**10)}"

    def cabinet_body(self, cab: str, it: Item, user: str, role: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "epc": encode_sgtin96(it.gtin, it.serial, company_prefix_digits=len(DEFAULT_COMPANY_PREFIX)),
            "gtin": it.gtin, "serial": it.serial, "dept": self.dept_of[cab], "session": f"S{self.rng.randrange(10**8)}",
            "user": user, "role": role, "lot": it.lot}
        if it.expiry is not None:
            body["expiry"] = it.expiry.isoformat()
        return body

    def consume(self, device: str, at: int, it: Item, admission: str, nurse: str, dept: str) -> SimEvent:
        return self.ev(device, at, "consume", {"admission": admission, "udi": it.udi(), "operator": nurse,
                                                "dept": dept})

    def his_id(self) -> str:
        self.his_no += 1
        return f"M{self.his_no:08d}"

    # ------------------------------------------------------------ a flow

    def flow(self, kind: str, cab: str, take_ms: int, *, expiry: bool = True, expired: bool = False) -> Flow:
        dept = self.dept_of[cab]
        nurse = self.rng.choice(self.nurses[dept])
        scan_ms = take_ms + self.rng.randrange(5, 90) * MIN_MS
        # items charged by hand without a serial are of the products kept for that; no anomaly is of those
        products = self.by_hand if kind == "manual_bare" else self.others if kind in INJECTED_KINDS else None
        it = self.item(expiry=expiry, use_ms=scan_ms, expired=expired, products=products)
        f = Flow(kind, it, dept, nurse, self.admission())
        self.m.flows.append(f)
        restock_ms = take_ms - self.rng.randrange(2, 48) * HOUR_MS
        self.ev(cab, restock_ms, "restocked", self.cabinet_body(cab, it, "R01", "restocker"))
        f.take = self.ev(cab, take_ms, "taken", self.cabinet_body(cab, it, nurse, "nurse"))
        hh = self.handheld_of[dept]
        if kind in ("plain", "boundary", "credit_cabinet", "credit_handheld", "expired_charged", "serial_reused"):
            f.scan = self.consume(hh, scan_ms, it, f.admission, nurse, dept)
        back_ms = take_ms + DAY_MS + self.rng.randrange(1, 6) * HOUR_MS  # the next day: after the charge is stored
        if kind == "put_back":
            self.ev(cab, take_ms + self.rng.randrange(10, 120) * MIN_MS, "returned",
                    self.cabinet_body(cab, it, nurse, "nurse"))
        elif kind == "credit_cabinet":
            self.ev(cab, back_ms, "returned", self.cabinet_body(cab, it, nurse, "nurse"))
        elif kind == "credit_handheld":
            self.ev(hh, back_ms, "return_unused", {"udi": it.udi(), "operator": nurse, "dept": dept,
                                                   "reason": "not opened", "restocked": False})
        elif kind == "manual_bare":  # charged by hand from the label's product, no serial: matched to the take
            self.m.manual.append(ManualLine(self.his_id(), "charge", f.admission, it.catalog.charge_code, "", "", "",
                                            1, it.catalog.price_fen, scan_ms, dept, f"HIS-{nurse}"))
        elif kind == "manual_serial":
            price = it.catalog.price_fen
            self.m.manual.append(ManualLine(self.his_id(), "charge", f.admission, it.catalog.charge_code, it.gtin,
                                            it.lot, it.serial, 1, price, scan_ms, dept, f"HIS-{nurse}"))
        elif kind == "serial_reused":
            other = f"HX{dept[3:]}"
            self.m.offline.add(other)
            f.again = self.consume(other, scan_ms + self.rng.randrange(2, 30) * HOUR_MS, it, self.admission(),
                         self.rng.choice(self.nurses[dept]), dept)
        return f

    # ------------------------------------------------------------ the month

    def make(self) -> Month:
        m = self.m
        plain: list[int] = []
        for day in range(m.days):
            for cab in self.cabinets:
                for _ in range(self.uses_per_day):
                    take_ms = m.start_ms + day * DAY_MS + self.rng.randrange(7 * 60, 22 * 60) * MIN_MS
                    r = self.rng.random()
                    kind = ("plain" if r < 0.80 else "put_back" if r < 0.88 else "credit_cabinet" if r < 0.93
                            else "credit_handheld" if r < 0.96 else "manual_serial" if r < 0.98 else "manual_bare")
                    self.flow(kind, cab, take_ms)
                    if kind == "plain" and day < m.days - 1:
                        plain.append(len(m.flows) - 1)
        for cab in self.rng.sample(self.cabinets, min(2, len(self.cabinets))):  # both ends of the month
            self.flow("boundary", cab, m.start_ms - self.rng.randrange(5, 40) * MIN_MS)
            self.flow("boundary", cab, m.start_ms + m.days * DAY_MS - self.rng.randrange(5, 40) * MIN_MS)
        self.inject(plain)
        for events in m.devices.values():
            events.sort(key=lambda e: e.ts_ms)
            for seq, e in enumerate(events, start=1):
                e.seq = seq
        m.counts = {"flows": len(m.flows), "events": sum(len(v) for v in m.devices.values()),
                    "devices": len(m.devices), "manual_lines": len(m.manual), "line_edits": len(m.edits)}
        return m

    def some_time(self) -> tuple[str, int]:
        """A cabinet and a daytime moment inside the month, not on its last day."""
        day = self.rng.randrange(max(1, self.m.days - 1))
        at = self.m.start_ms + day * DAY_MS + self.rng.randrange(8 * 60, 20 * 60) * MIN_MS
        return self.rng.choice(self.cabinets), at

    def inject(self, plain: list[int]) -> None:
        m, n = self.m, self.per_kind
        targets = self.rng.sample(plain, 3 * n)
        not_charged_at: set[tuple[str, str]] = set()
        for _ in range(n):
            cab, at = self.some_time()
            f = self.flow("taken_not_charged", cab, at)
            not_charged_at.add((f.item.gtin, f.dept))
            m.injections.append(Injection("taken_not_charged", f.item.key, f.dept, f.nurse,
                                          "taken from the cabinet, never scanned", len(m.flows) - 1))
        for _ in range(n):
            cab, at = self.some_time()
            f = self.flow("serial_reused", cab, at)
            assert f.again is not None
            m.injections.append(Injection("serial_reused", f.item.key, f.dept, str(f.again.body["operator"]),
                                          "scanned again by a handheld that was offline", len(m.flows) - 1))
        for _ in range(n):
            cab, at = self.some_time()
            f = self.flow("expired_charged", cab, at, expiry=False, expired=True)
            m.injections.append(Injection("expired_charged", f.item.key, f.dept, f.nurse,
                                          "code without expiry; the lot's expiry imported after use", len(m.flows) - 1))
        for _ in range(n):
            cab, at = self.some_time()
            dept = self.dept_of[cab]
            cat = self.rng.choice([c for c in self.others if (c.gtin, dept) not in not_charged_at])
            line = ManualLine(self.his_id(), "charge", self.admission(), cat.charge_code, "", "", "", 1, cat.price_fen,
                              at, dept, f"HIS-{self.rng.choice(self.nurses[dept])}")
            m.manual.append(line)
            m.injections.append(Injection("charged_not_taken", line.his_id, dept, line.operator,
                                          "charged by hand at the HIS; no item taken"))
        for i in targets[:n]:
            f = m.flows[i]
            other = self.rng.choice([c for c in self.catalog if c.charge_code != f.item.catalog.charge_code])
            m.edits.append(LineEdit(i, charge_code=other.charge_code))
            m.injections.append(Injection("swapped_charge", "", f.dept, f.nurse,
                                          f"HIS line edited to charge code {other.charge_code}", i))
        for i in targets[n:2 * n]:
            f = m.flows[i]
            price = f.item.catalog.price_fen * (100 + self.rng.randrange(5, 30)) // 100
            m.edits.append(LineEdit(i, unit_price_fen=price))
            m.injections.append(Injection("price_markup", "", f.dept, f.nurse, "HIS line price raised by hand", i))
        for i in targets[2 * n:]:
            f = m.flows[i]
            assert f.scan is not None
            it = f.item
            line = ManualLine(self.his_id(), "charge", f.admission, it.catalog.charge_code, it.gtin, it.lot, it.serial,
                              1, it.catalog.price_fen, f.scan.ts_ms + self.rng.randrange(1, 8) * HOUR_MS, f.dept,
                              f"HIS-{f.nurse}")
            m.manual.append(line)
            m.injections.append(Injection("charged_twice", it.key, f.dept, line.operator,
                                          f"the clerk entered {line.his_id} for an item already charged", i))
        for _ in range(n):
            cab, at = self.some_time()
            dept = self.dept_of[cab]
            cat = self.rng.choice(self.catalog)
            line = ManualLine(self.his_id(), "credit", self.admission(), cat.charge_code, "", "", "", -1, cat.price_fen,
                              at, dept, f"HIS-{self.rng.choice(self.nurses[dept])}",
                              reverses=f"X{self.rng.randrange(10**9, 10**10)}")
            m.manual.append(line)
            m.injections.append(Injection("credit_without_charge", line.his_id, dept, line.operator,
                                          f"credit by hand reversing {line.reverses}, which was never charged"))


def make_month(month: str, *, cabinets: int, days: int, seed: int, catalog: list[SimCatalogItem],
               uses_per_day: int = 6, per_kind: int = 5, utc_offset_minutes: int = 480) -> Month:
    if not 1 <= days <= 31 or cabinets < 1 or uses_per_day < 1 or per_kind < 0:
        raise ValueError("days must be 1..31, cabinets and uses per day at least 1")
    return _Maker(month, cabinets, days, seed, uses_per_day, per_kind, catalog, utc_offset_minutes).make()
