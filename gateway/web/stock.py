"""What is in a cabinet, and its door and lock, as the gateway knows them.

Stock is the stock ledger's on hand at the cabinet (``stock_balances``, kept by the gateway's ``stock-ledger``
projection from the cabinet's events as they arrive, :mod:`gateway.books.projection`), per item with its lots
and the earliest expiry. Door and latch are the cabinet's latest access events.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from gateway.data.dashboard import CabinetEvent
from gateway.data.stock import Balance
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
    since_ms: int | None  # the ledger's earliest movement (None: an empty ledger)
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
    """The ledger's on hand at the cabinet ``device``, one line per item."""
    by_gtin: dict[str, list[Balance]] = defaultdict(list)
    for b in store.stock.balances(location=device):
        by_gtin[b.gtin].append(b)
    names = store.dashboard.item_names(sorted(by_gtin))
    lines = []
    for gtin, held in sorted(by_gtin.items()):
        expiries = sorted(b.expiry for b in held if b.expiry)
        lines.append(StockLine(gtin, names.get(gtin, ""), sum(b.qty for b in held),
                               tuple(sorted({b.lot for b in held if b.lot})), expiries[0] if expiries else ""))
    return CabinetStock(device, tuple(lines), store.stock.first_at_ms(),
                        "on hand by the stock ledger, kept from the cabinet's events as they arrive")


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
