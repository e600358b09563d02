"""What is in a cabinet, and its door and lock, as far as the cabinet's events tell.

:func:`cabinet_stock` is the one place the cabinets page and API read stock from. Until the books' stock
ledger exists it replays the cabinet's ``restocked``, ``returned`` and ``taken`` events: an item is in the
cabinet after its last ``restocked``/``returned`` and before a later ``taken``. Items that were on the
shelves before the gateway stored the cabinet's first event are not known here (``since`` says from when
the picture holds). The books' stock query replaces this function's body and keeps its result type.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from gateway.data.dashboard import CabinetEvent
from gateway.store import GatewayStore


@dataclass(frozen=True, slots=True)
class StockLine:
    gtin: str
    name: str
    count: int
    lots: tuple[str, ...]
    next_expiry: str  # the earliest expiry among them (ISO date), or ""


@dataclass(frozen=True, slots=True)
class CabinetStock:
    device: str
    lines: tuple[StockLine, ...]
    since_ms: int | None  # the first inventory event the picture is built from (None: no events)
    source: str  # how it was worked out, shown beside the table

    @property
    def items(self) -> int:
        return sum(line.count for line in self.lines)


@dataclass(frozen=True, slots=True)
class DoorState:
    door: str  # "open", "closed" or "unknown"
    lock: str  # "released" (badge granted or remote unlock, door not closed since), "latched", "unknown"
    lockdown: bool
    since_ms: int | None


def cabinet_stock(store: GatewayStore, device: str) -> CabinetStock:
    events = store.dashboard.inventory_events(device)
    present: dict[str, dict[str, str]] = {}
    for ev in events:
        body = _body(ev)
        gtin, serial = body.get("gtin"), body.get("serial")
        if not isinstance(gtin, str) or not isinstance(serial, str):
            continue
        key = f"{gtin}/{serial}"
        if ev.kind == "taken":
            present.pop(key, None)
        else:
            present[key] = {"gtin": gtin, "lot": str(body.get("lot", "")), "expiry": str(body.get("expiry", ""))}
    counts = Counter(p["gtin"] for p in present.values())
    names = store.dashboard.item_names(sorted(counts))
    lines = []
    for gtin in sorted(counts):
        mine = [p for p in present.values() if p["gtin"] == gtin]
        lots = tuple(sorted({p["lot"] for p in mine if p["lot"]}))
        expiries = sorted(p["expiry"] for p in mine if p["expiry"])
        lines.append(StockLine(gtin, names.get(gtin, ""), counts[gtin], lots, expiries[0] if expiries else ""))
    return CabinetStock(device, tuple(lines), events[0].ts_ms if events else None,
                        "replayed from the cabinet's restocked, returned and taken events")


def door_state(store: GatewayStore, device: str) -> DoorState:
    """The door and latch as the cabinet's latest access events leave them."""
    door = lock = "unknown"
    lockdown = False
    since: int | None = None
    for ev in reversed(store.dashboard.cabinet_events(device, kinds=("access",), limit=200)):  # oldest first
        body = _body(ev)
        result, kind = body.get("result"), body.get("type")
        if result == "door_opened":
            door, since = "open", ev.ts_ms
        elif result == "door_closed":
            door, lock, since = "closed", "latched", ev.ts_ms
        elif result == "granted" or (kind == "remote_command" and body.get("cmd") == "unlock"):
            lock, since = "released", ev.ts_ms
        elif kind == "lockdown":
            lockdown = bool(body.get("on"))
    return DoorState(door, lock, lockdown, since)


def _body(ev: CabinetEvent) -> dict[str, object]:
    try:
        body = json.loads(ev.body)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
