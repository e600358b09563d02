"""A minimal projection of device events into ``stock_movements``: enough for reconciliation's stock leg.

Only four event kinds, one movement each, item by item:

* ``restocked`` (a restocker put the item into a cabinet) → ``restock`` +1 at the cabinet;
* ``taken`` (the RFID count saw it leave) → ``take`` -1 at the cabinet;
* ``returned`` (it came back into a cabinet) → ``return`` +1 at the cabinet;
* ``consume`` (a nurse scanned it on a patient) → ``use`` -1 at the scanning device, with the patient.

The stock ledger's full projection (counts, receipts, packs, department stores) replaces this module; the
reconciliation reads movements only through :func:`gateway.books.legs.stock_leg`, so the swap touches
nothing else. The source of a movement is ``device:seq``: projecting an event twice records it once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from gateway import bridge
from gateway.data.books_reads import DeviceEvent
from gateway.data.stock import RESTOCK, RETURN, TAKE, USE, MovementRow
from gateway.store import GatewayStore

CURSOR: Final = "movements_min"
KIND_OF_EVENT: Final = {"restocked": RESTOCK, "taken": TAKE, "returned": RETURN, "consume": USE}
PAGE: Final = 5000


def project_events(store: GatewayStore) -> int:
    """Project every event stored since the last call; returns how many movements were recorded."""
    after = store.devices.cursor(CURSOR)
    recorded = 0
    while True:
        page = store.books.events(after_id=after, kinds=tuple(KIND_OF_EVENT), limit=PAGE)
        if not page:
            return recorded
        rows = [m for m in (movement_of(ev) for ev in page) if m is not None]
        recorded += store.stock.record(rows)
        after = page[-1].id
        store.devices.set_cursor(CURSOR, after)


def movement_of(ev: DeviceEvent) -> MovementRow | None:
    """The movement of one event, or None (an unreadable code, an item without GTIN)."""
    kind = KIND_OF_EVENT[ev.kind]
    b = ev.body
    source = f"{ev.device}:{ev.seq}"
    if kind == USE:
        try:
            item = bridge.read_item(_text(b.get("udi")), reference_year=_year(ev.ts_ms))
        except bridge.BridgeError:
            return None
        return MovementRow(source, ev.ts_ms, USE, ev.device, _text(b.get("dept")), item.gtin, item.lot, item.serial,
                           -1, _text(b.get("operator")), _text(b.get("admission")), ev.device, ev.seq)
    gtin = _text(b.get("gtin"))
    if not gtin:
        return None
    qty = -1 if kind == TAKE else 1
    return MovementRow(source, ev.ts_ms, kind, ev.device, _text(b.get("dept")), gtin, _text(b.get("lot")),
                       _text(b.get("serial")), qty, _text(b.get("user")), "", ev.device, ev.seq)


def _year(ts_ms: int) -> int:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ts_ms)).year


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ""
