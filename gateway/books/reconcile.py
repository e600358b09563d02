"""Three-way reconciliation of a month: the HIS's charge lines, the consumption records, the stock movements.

Every mismatch is a :class:`Finding` with a stable kind, an identifying key, the department and operator it
is charged to, the amount at stake and its evidence (device events ``device:seq``, the gateway's charge ids,
the HIS's line ids and references). The kinds and their keys:

================  =============  =================================================================
kind              key            what it is
================  =============  =================================================================
charged_not_taken HIS line id    a standing HIS charge with no stock movement of its item
taken_not_charged gtin/serial    an item taken (or used) and neither put back nor charged
swapped_charge    HIS line id    the HIS line of a scanned item carries another item's charge code
serial_reused     gtin/serial    one serial used twice with no return between
expired_charged   gtin/serial    a charged item whose lot had expired on the day of use
credit_without_.. HIS line id    a HIS credit reversing a charge the HIS does not hold
charged_twice     gtin/serial    one item with more than one standing HIS charge
price_markup      HIS line id    a HIS unit price other than the contract price in force that day
================  =============  =================================================================

Only high-value items (serial-tracked) are reconciled item by item; a HIS line whose charge code is not a
high-value item of the catalog is out of scope. A HIS charge *stands* unless a HIS credit reverses it.

Period rule: every leg is read over the month widened by the grace margin (7 days by default) on each
side, and a finding belongs to the month of its anchor: the HIS line's time for the HIS-keyed kinds, the
take or use for the item-keyed ones (the second use for a re-use, the second charge for a double charge).
So a take on the 31st charged on the 1st is matched and reported nowhere; a take on the 31st never
charged is reported in the month of the take, once the grace days have passed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from gateway.books.legs import Period, ensure_projected, stock_leg
from gateway.books.output import progress
from gateway.data.books_reads import ConsumptionRecord, ReturnRecord
from gateway.data.his_lines import INTERFACE, HisLineRow
from gateway.data.stock import RESTOCK, RETURN, TAKE, USE, MovementRow
from gateway.store import GatewayStore

CHARGED_NOT_TAKEN: Final = "charged_not_taken"
TAKEN_NOT_CHARGED: Final = "taken_not_charged"
SWAPPED_CHARGE: Final = "swapped_charge"
SERIAL_REUSED: Final = "serial_reused"
EXPIRED_CHARGED: Final = "expired_charged"
CREDIT_WITHOUT_CHARGE: Final = "credit_without_charge"
CHARGED_TWICE: Final = "charged_twice"
PRICE_MARKUP: Final = "price_markup"
KINDS: Final = (CHARGED_NOT_TAKEN, TAKEN_NOT_CHARGED, SWAPPED_CHARGE, SERIAL_REUSED, EXPIRED_CHARGED,
                CREDIT_WITHOUT_CHARGE, CHARGED_TWICE, PRICE_MARKUP)

ItemKey = tuple[str, str]  # (gtin, serial)


@dataclass(slots=True)
class Finding:
    kind: str
    key: str
    at_ms: int  # the anchor: the month it belongs to
    dept: str
    operator: str
    amount_fen: int  # what is at stake: the amount billed, the price of the item, or the mark-up
    admission: str = ""
    gtin: str = ""
    serial: str = ""
    events: list[str] = field(default_factory=list)  # device:seq
    charge_ids: list[str] = field(default_factory=list)  # the gateway's charge ids
    his_ids: list[str] = field(default_factory=list)  # the HIS's line ids
    his_refs: list[str] = field(default_factory=list)  # the HIS's answers (its references)
    detail: str = ""
    event_hashes: list[str] = field(default_factory=list)  # the stored hash of each event, as the device chained it

    @property
    def ident(self) -> tuple[str, str]:
        return self.kind, self.key


@dataclass(slots=True)
class CatalogFacts:
    code_of: dict[str, str]  # gtin -> charge code (high-value items)
    gtin_of: dict[str, str]  # charge code -> gtin
    price_of: dict[str, int]  # gtin -> catalog price
    name_of: dict[str, str]


@dataclass(slots=True)
class Reconciliation:
    period: Period
    findings: list[Finding]
    his_lines: int
    consumption_records: int
    movements: int
    standing_charges: int  # HIS charges of high-value items not reversed by a credit
    standing_fen: int
    items: int  # serial-tracked items followed through their movements


def load_catalog(store: GatewayStore) -> CatalogFacts:
    facts = CatalogFacts({}, {}, {}, {})
    for r in store.load_catalog_rows():
        gtin, code, name, price, high_value = str(r[0]), str(r[2]), str(r[3]), int(r[6]), bool(r[8])
        if not high_value:
            continue
        facts.code_of[gtin] = code
        facts.gtin_of.setdefault(code, gtin)
        facts.price_of[gtin] = price
        facts.name_of[gtin] = name
    return facts


def reconcile(store: GatewayStore, period: Period, *, project: bool = True) -> Reconciliation:
    """Every mismatch of ``period`` between the three legs (see the module's docstring for the rules)."""
    if project:
        ensure_projected(store)
    catalog = load_catalog(store)
    run = _Run(store, period, catalog)
    credits = store.his_lines.credits(period.read_from_ms, period.read_to_ms)
    reversed_ids = run.check_credits(credits)
    returns = store.books.returns(period.read_from_ms, period.read_to_ms)
    codes_of: dict[str, list[str]] = defaultdict(list)
    for code, gtin in catalog.gtin_of.items():
        codes_of[gtin].append(code)
    his_lines, records_read, moves_read, standing, standing_fen, items = len(credits), 0, 0, 0, 0, 0
    for gtin in progress(sorted(catalog.code_of), total=len(catalog.code_of), description="reconciling"):
        lines = store.his_lines.charges_of_item(gtin, codes_of[gtin], period.read_from_ms, period.read_to_ms)
        records = store.books.consumption_of(gtin, period.read_from_ms, period.read_to_ms,
                                             [ln.his_id for ln in lines if ln.source == INTERFACE])
        moves = stock_leg(store, period, gtin)
        part = run.product(records, moves, [r for r in returns if r.item_key.startswith(gtin + "/")])
        part.check_his([ln for ln in lines if ln.his_id not in reversed_ids])
        part.check_items()
        his_lines, records_read, moves_read, items = (his_lines + len(lines), records_read + len(records),
                                                      moves_read + len(moves), items + len(part.moves_of))
        held = [ln for ls in part.lines_of.values() for ln in ls if period.holds(ln.at_ms)]
        standing, standing_fen = standing + len(held), standing_fen + sum(ln.amount_fen for ln in held)
    findings = sorted((f for f in run.findings.values() if period.holds(f.at_ms)),
                      key=lambda f: (KINDS.index(f.kind), f.at_ms, f.key))
    _add_event_hashes(store, findings)
    return Reconciliation(period, findings, his_lines, records_read, moves_read, standing, standing_fen, items)


def _add_event_hashes(store: GatewayStore, findings: list[Finding]) -> None:
    keys = [(d, int(s)) for f in findings for d, _, s in (e.rpartition(":") for e in f.events)]
    hashes = store.books.event_hashes(keys)
    for f in findings:
        f.event_hashes = [hashes.get((d, int(s)), "") for d, _, s in (e.rpartition(":") for e in f.events)]


class _Run:
    """What one reconciliation keeps across products: the findings, contract prices, lots' expiry dates."""

    def __init__(self, store: GatewayStore, period: Period, catalog: CatalogFacts) -> None:
        self.store = store
        self.period = period
        self.catalog = catalog
        self.findings: dict[tuple[str, str], Finding] = {}
        self.contract_cache: dict[tuple[str, str], int | None] = {}
        self.lot_expiry = store.books.lot_expiry()

    def add(self, f: Finding) -> None:
        self.findings.setdefault(f.ident, f)

    def check_credits(self, credits: list[HisLineRow]) -> set[str]:
        """Flag the credits that reverse no charge the HIS holds; the ids of the charges reversed."""
        known = self.store.his_lines.charges_named(sorted({c.reverses for c in credits}))
        for c in credits:
            if c.reverses in known:
                continue
            self.add(Finding(CREDIT_WITHOUT_CHARGE, c.his_id, c.at_ms, c.dept, c.operator, c.amount_fen,
                             admission=c.admission, gtin=c.gtin, serial=c.serial, his_ids=[c.his_id],
                             his_refs=_nonempty([c.his_ref]),
                             detail=f"credit reverses HIS charge {c.reverses or '(none named)'}, which the HIS "
                                    "does not hold"))
        return {c.reverses for c in credits if c.reverses in known}

    def product(self, records: list[ConsumptionRecord], moves: list[MovementRow],
                returns: list[ReturnRecord]) -> _Product:
        return _Product(self, records, moves, returns)


class _Product:
    """One product's month: its standing HIS charges, consumption records and items' movements."""

    def __init__(self, run: _Run, records: list[ConsumptionRecord], moves: list[MovementRow],
                 returns: list[ReturnRecord]) -> None:
        self.run = run
        self.store = run.store
        self.period = run.period
        self.catalog = run.catalog
        self.add = run.add
        self.record_of_charge = {r.charge_id: r for r in records if r.charge_id}
        self.record_of_event = {(r.device, r.seq): r for r in records}
        self.moves_of: dict[ItemKey, list[MovementRow]] = defaultdict(list)
        for m in moves:
            self.moves_of[(m.gtin, m.serial)].append(m)
        for ms in self.moves_of.values():
            ms.sort(key=lambda m: m.at_ms)
        self.credited_back: dict[ItemKey, list[ReturnRecord]] = defaultdict(list)
        for r in returns:
            if r.outcome == "credited" and "/" in r.item_key:
                gtin, serial = r.item_key.split("/", 1)
                self.credited_back[(gtin, serial)].append(r)
        self.lines_of: dict[ItemKey, list[HisLineRow]] = defaultdict(list)
        self.record_of_item: dict[ItemKey, ConsumptionRecord] = {}

    # ------------------------------------------------------------ the HIS leg

    def check_his(self, standing: list[HisLineRow]) -> None:
        """``standing``: the product's HIS charges that no credit reverses, in time order."""
        standing = [ln for ln in standing if ln.charge_code in self.catalog.gtin_of]
        # lines that name their item first; then lines without a serial, each matched to an item still out of
        # its cabinet (its last movement a take) of the billed product in the line's department, if any
        bare = [ln for ln in standing if ln.source != INTERFACE and not ln.serial]
        for ln in standing:
            if ln.source == INTERFACE or ln.serial:
                self._check_charge(ln, {})
        out_by: dict[tuple[str, str], list[MovementRow]] = defaultdict(list)  # (gtin, dept) -> takes still out
        for key, ms in self.moves_of.items():
            if ms[-1].kind == TAKE and key not in self.lines_of:
                out_by[(key[0], ms[-1].dept)].append(ms[-1])
        for takes in out_by.values():
            takes.sort(key=lambda m: m.at_ms)
        for ln in bare:
            self._check_charge(ln, out_by)
        for key, lines in self.lines_of.items():
            if len(lines) > 1:
                second = sorted(lines, key=lambda ln: (ln.at_ms, ln.his_id))[1]
                rec = self.record_of_item.get(key)
                self.add(Finding(CHARGED_TWICE, _k(key), second.at_ms, second.dept, second.operator,
                                 sum(ln.amount_fen for ln in lines) - lines[0].amount_fen,
                                 admission=second.admission, gtin=key[0], serial=key[1],
                                 events=[f"{rec.device}:{rec.seq}"] if rec else [],
                                 charge_ids=[rec.charge_id] if rec else [],
                                 his_ids=[ln.his_id for ln in lines],
                                 his_refs=_nonempty([ln.his_ref for ln in lines]),
                                 detail=f"{len(lines)} standing HIS charges for one item "
                                        f"({', '.join(ln.source for ln in lines)})"))

    def _check_charge(self, ln: HisLineRow, out_by: dict[tuple[str, str], list[MovementRow]]) -> None:
        billed_gtin = self.catalog.gtin_of[ln.charge_code]
        rec = self.record_of_charge.get(ln.his_id) if ln.source == INTERFACE else None
        key: ItemKey | None = None
        swapped = False
        if rec is not None:
            key = (rec.gtin, rec.serial)
            self.record_of_item[key] = rec
            scanned_code = self.catalog.code_of.get(rec.gtin, "")
            if scanned_code != ln.charge_code:
                swapped = True
                self.add(Finding(SWAPPED_CHARGE, ln.his_id, ln.at_ms, rec.dept, rec.operator, ln.amount_fen,
                                 admission=ln.admission, gtin=rec.gtin, serial=rec.serial,
                                 events=[f"{rec.device}:{rec.seq}"], charge_ids=[rec.charge_id],
                                 his_ids=[ln.his_id], his_refs=_nonempty([rec.his_ref, ln.his_ref]),
                                 detail=f"HIS bills code {ln.charge_code} ({self.catalog.name_of.get(billed_gtin, '')})"
                                        f" for a scanned {scanned_code} ({self.catalog.name_of.get(rec.gtin, '')})"))
        elif ln.serial:
            candidate = (ln.gtin or billed_gtin, ln.serial)
            if any(m.kind in (TAKE, USE) for m in self.moves_of.get(candidate, ())):
                key = candidate
        else:
            out = out_by.get((billed_gtin, ln.dept))
            if out:
                m = out.pop(0)
                key = (m.gtin, m.serial)
        if key is None:
            self.add(Finding(CHARGED_NOT_TAKEN, ln.his_id, ln.at_ms, ln.dept, ln.operator, ln.amount_fen,
                             admission=ln.admission, gtin=ln.gtin or billed_gtin, serial=ln.serial,
                             his_ids=[ln.his_id], his_refs=_nonempty([ln.his_ref]),
                             detail=f"{ln.source} charge of {ln.charge_code} with no take or use of "
                                    f"{'serial ' + ln.serial if ln.serial else 'such an item in ' + ln.dept}"))
            return
        self.lines_of[key].append(ln)
        if not swapped:
            self._check_price(ln, billed_gtin, rec)

    def _check_price(self, ln: HisLineRow, gtin: str, rec: ConsumptionRecord | None) -> None:
        at = rec.used_at_ms if rec is not None else ln.at_ms
        day = self.period.local_date(at).isoformat()
        price = self._contract_price(gtin, day)
        if price is None or ln.unit_price_fen == price:
            return
        self.add(Finding(PRICE_MARKUP, ln.his_id, ln.at_ms, rec.dept if rec else ln.dept,
                         rec.operator if rec else ln.operator, ln.qty * (ln.unit_price_fen - price),
                         admission=ln.admission, gtin=gtin, serial=rec.serial if rec else ln.serial,
                         events=[f"{rec.device}:{rec.seq}"] if rec else [], charge_ids=[rec.charge_id] if rec else [],
                         his_ids=[ln.his_id], his_refs=_nonempty([rec.his_ref if rec else "", ln.his_ref]),
                         detail=f"HIS unit price {_yuan(ln.unit_price_fen)}, contract price {_yuan(price)} "
                                f"on {day}"))

    def _contract_price(self, gtin: str, day: str) -> int | None:
        cache = self.run.contract_cache
        if (gtin, day) not in cache:
            c = self.store.terms.contract_on(gtin, day)
            cache[(gtin, day)] = None if c is None else c.purchase_price_fen
        return cache[(gtin, day)]

    # ------------------------------------------------------------ items: stock against charges

    def check_items(self) -> None:
        for key, ms in self.moves_of.items():
            self._walk(key, ms)
        for key, standing in self.lines_of.items():
            self._check_expiry(key, standing)

    def _walk(self, key: ItemKey, ms: list[MovementRow]) -> None:
        """Follow one item through its movements (and credited returns): re-use, and what was never charged."""
        charged = bool(self.lines_of.get(key))
        steps: list[tuple[int, str, MovementRow | ReturnRecord]] = [(m.at_ms, m.kind, m) for m in ms]
        steps += [(r.returned_at_ms, RETURN, r) for r in self.credited_back.get(key, ())]
        steps.sort(key=lambda s: (s[0], 0 if s[1] in (RETURN, RESTOCK) else 1))
        in_use: MovementRow | None = None
        reused: list[MovementRow] = []
        for i, (_at, kind, what) in enumerate(steps):
            if kind in (RETURN, RESTOCK):
                in_use = None
                continue
            assert isinstance(what, MovementRow)
            if kind == USE:
                if in_use is not None:
                    reused.append(what)
                    continue
                in_use = what
                later = [s for s in steps[i + 1:] if s[1] in (RETURN, RESTOCK)]
                if not later and not charged:
                    self._not_charged(key, what, "used on a patient, never charged")
            elif kind == TAKE:
                after = [s[1] for s in steps[i + 1:]]
                if not after and not charged:
                    self._not_charged(key, what, "taken from the cabinet, never used, put back or charged")
        if reused:
            first = next(s[2] for s in steps if s[1] == USE)
            assert isinstance(first, MovementRow)
            again = reused[0]
            refusals = self.store.books.refused_charges([(m.device, m.seq) for m in reused])
            why = "; ".join(f"{r.device}:{r.seq} {r.reason}" for r in refusals.values())
            self.add(Finding(SERIAL_REUSED, _k(key), again.at_ms, again.dept, again.operator,
                             self.catalog.price_of.get(key[0], 0) * len(reused), admission=again.admission,
                             gtin=key[0], serial=key[1], events=[m.source for m in (first, *reused)],
                             charge_ids=_nonempty([self._charge_of(first)]),
                             his_refs=_nonempty([self._his_ref_of(first)]),
                             detail=f"used {1 + len(reused)} times without a return between"
                                    + (f" (refused: {why})" if why else "")))

    def _not_charged(self, key: ItemKey, m: MovementRow, what: str) -> None:
        self.add(Finding(TAKEN_NOT_CHARGED, _k(key), m.at_ms, m.dept, m.operator, self.catalog.price_of.get(key[0], 0),
                         admission=m.admission, gtin=key[0], serial=key[1], events=[m.source], detail=what))

    def _charge_of(self, m: MovementRow) -> str:
        rec = self.record_of_event.get((m.device, m.seq))
        return rec.charge_id if rec else ""

    def _his_ref_of(self, m: MovementRow) -> str:
        rec = self.record_of_event.get((m.device, m.seq))
        return rec.his_ref if rec else ""

    def _check_expiry(self, key: ItemKey, standing: list[HisLineRow]) -> None:
        rec = self.record_of_item.get(key)
        uses = [m for m in self.moves_of.get(key, ()) if m.kind in (USE, TAKE)]
        lot = rec.lot if rec else (standing[0].lot or next((m.lot for m in uses if m.lot), ""))
        expiry = self.run.lot_expiry.get((key[0], lot)) or (rec.expiry if rec else "")
        at = rec.used_at_ms if rec else (uses[0].at_ms if uses else standing[0].at_ms)
        day = self.period.local_date(at).isoformat()
        if not expiry or expiry >= day:
            return
        first = standing[0]
        self.add(Finding(EXPIRED_CHARGED, _k(key), at, rec.dept if rec else first.dept,
                         rec.operator if rec else first.operator, first.amount_fen, admission=first.admission,
                         gtin=key[0], serial=key[1], events=[f"{rec.device}:{rec.seq}"] if rec else [],
                         charge_ids=[rec.charge_id] if rec else [], his_ids=[ln.his_id for ln in standing],
                         his_refs=_nonempty([rec.his_ref if rec else "", *(ln.his_ref for ln in standing)]),
                         detail=f"lot {lot} expired {expiry}, used {day}"))


def _k(key: ItemKey) -> str:
    return f"{key[0]}/{key[1]}"


def _nonempty(values: Iterable[str]) -> list[str]:
    return [v for v in values if v]


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
