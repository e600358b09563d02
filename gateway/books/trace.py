"""Trace, forward and backward (``spd-gateway trace``): an item to its patient, a patient to every item, a
lot to every patient and to where the rest of it still is.

A use (:class:`TraceRecord`) is a ``consume`` (or an opened pack) in the stock ledger with, from the same
event, its charge: the charge id, the HIS's answer (``accepted``, ``pending``, ``parked``; ``refused`` with
the reason when the gateway refused to charge it) and the HIS's reference, and a credit if the item came back
unused. For a serialised item, ``cabinet`` is the cabinet it was last taken from before the use, and
``taken_by`` who opened the door.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.books.ledger import StockLine, item_names, on_hand
from gateway.data.stock import TAKE, MovementRow
from gateway.data.trace import UseRow
from gateway.store import GatewayStore


@dataclass(frozen=True, slots=True)
class TraceRecord:
    at_ms: int
    admission: str
    gtin: str
    name: str
    lot: str
    serial: str
    qty: int  # units used (a pack's count)
    dept: str
    operator: str  # who scanned it to the patient
    device: str  # the handheld or cabinet that scanned it
    seq: int
    cabinet: str  # the cabinet it was taken from ("" when not known)
    taken_by: str
    charge_id: str
    charge_status: str
    his_ref: str
    refusal: str
    credit_id: str


@dataclass(frozen=True, slots=True)
class ItemTrace:
    gtin: str
    serial: str
    name: str
    uses: list[TraceRecord]  # more than one: the serial was consumed twice (re-use, or a duplicate charge)
    movements: list[MovementRow]  # its whole life in the ledger, oldest first
    on_hand: list[StockLine]  # where it is now (empty once used; a store that gave it without a receipt is not)


@dataclass(frozen=True, slots=True)
class LotTrace:
    gtin: str
    lot: str
    name: str
    uses: list[TraceRecord]  # every patient who received the lot
    on_hand: list[StockLine]  # where the rest of the lot still is


def _taken_from(movements: list[MovementRow], before_ms: int) -> tuple[str, str]:
    last = ("", "")
    for m in movements:
        if m.at_ms > before_ms:
            break
        if m.kind == TAKE:
            last = (m.location, m.operator)
    return last


def _records(store: GatewayStore, rows: list[UseRow]) -> list[TraceRecord]:
    names = item_names(store)
    lives: dict[tuple[str, str], list[MovementRow]] = {}
    out = []
    for u in rows:
        cabinet, taken_by = "", ""
        if u.serial:
            life = lives.get((u.gtin, u.serial))
            if life is None:
                life = lives[(u.gtin, u.serial)] = store.stock.of_item(u.gtin, serial=u.serial)
            cabinet, taken_by = _taken_from(life, u.at_ms)
        out.append(TraceRecord(u.at_ms, u.admission, u.gtin, names.get(u.gtin, ""), u.lot, u.serial, -u.qty, u.dept,
                               u.operator, u.device, u.seq, cabinet, taken_by, u.charge_id, u.charge_status,
                               u.his_ref, u.refusal, u.credit_id))
    return out


def trace_item(store: GatewayStore, gtin: str, serial: str) -> ItemTrace:
    """One serialised item: who received it, and everything that moved it."""
    uses = _records(store, store.trace.uses(gtin=gtin, serial=serial))
    stock = [line for line in on_hand(store, gtin=gtin) if line.serial == serial and line.qty > 0]
    return ItemTrace(gtin, serial, item_names(store).get(gtin, ""), uses, store.stock.of_item(gtin, serial=serial),
                     stock)


def trace_lot(store: GatewayStore, gtin: str, lot: str) -> LotTrace:
    """A lot (for a recall): every patient who received it, and where the rest of it is on hand."""
    rows = store.trace.uses(gtin=gtin, lot=lot)
    seen = {(r.device, r.seq) for r in rows}
    for serial in store.trace.serials_of_lot(gtin, lot):  # a use whose code carried no lot, of a known serial
        rows += [r for r in store.trace.uses(gtin=gtin, serial=serial) if (r.device, r.seq) not in seen]
    rows.sort(key=lambda r: (r.at_ms, r.device, r.seq))
    stock = [line for line in on_hand(store, gtin=gtin) if line.lot == lot and line.qty > 0]
    return LotTrace(gtin, lot, item_names(store).get(gtin, ""), _records(store, rows), stock)


def trace_patient(store: GatewayStore, admission: str) -> list[TraceRecord]:
    """Every item, lot and serial used on one patient, with its charge, oldest first."""
    return _records(store, store.trace.uses(admission=admission))
