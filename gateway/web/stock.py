"""What is in a cabinet, and its door and lock, as far as the cabinet's events tell.

:func:`cabinet_stock` is the one place the cabinets page and API read stock from: the books' stock ledger
(:mod:`gateway.books.ledger`), which balances every movement of the cabinet: restocks, takes, returns, and
the counts that correct it. Items on the shelves before the gateway stored the cabinet's first event are known
once a count records them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.books.ledger import StockLine as LedgerLine
from gateway.books.ledger import on_hand
from gateway.books.projection import catch_up
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


def cabinet_stock(store: GatewayStore, device: str, *, utc_offset_minutes: int = 480) -> CabinetStock:
    """The cabinet's stock on hand from the books' stock ledger (:func:`gateway.books.ledger.on_hand`), brought
    up to date with the stored events first (:func:`gateway.books.projection.catch_up`: only what arrived since
    the last pass; inside ``spd-gateway run`` the ``stock-ledger`` thread keeps it current)."""
    catch_up(store, utc_offset_minutes=utc_offset_minutes)
    by_gtin: dict[str, list[LedgerLine]] = {}
    for line in on_hand(store, location=device):
        if line.qty > 0:
            by_gtin.setdefault(line.gtin, []).append(line)
    lines = []
    for gtin in sorted(by_gtin):
        mine = by_gtin[gtin]
        lots = tuple(sorted({x.lot for x in mine if x.lot}))
        expiries = sorted(x.expiry for x in mine if x.expiry)
        lines.append(StockLine(gtin, mine[0].name, sum(x.qty for x in mine), lots, expiries[0] if expiries else ""))
    return CabinetStock(device, tuple(lines), None,
                        "the stock ledger's balance of the cabinet (receipts, restocks, takes, returns and counts)")


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
