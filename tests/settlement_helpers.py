"""A ward for the books' tests: devices writing signed events into a gateway store, the real charging worker
turning them into charges and credits, and the HIS's answers recorded as the sender records them.

Imported by module name (``from settlement_helpers import ...``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from gateway import bridge
from gateway.charging import ChargingWorker
from gateway.store import GatewayStore
from spd_common.gtin import check_digit
from spd_common.wire import GENESIS_HASH, Batch, Event, EventKind, event_hash

SHANGHAI = ZoneInfo("Asia/Shanghai")
CONFIG = bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")


def gtin(n: int) -> str:
    body = f"0401234{n:06d}"
    return body + str(check_digit(body))


def udi(item: str, serial: str, lot: str = "LOT-A1") -> str:
    return f"]d201{item}17291231\x1d10{lot}\x1d21{serial}"


def local_ms(text: str) -> int:
    """Device time (UTC ms) of a local Shanghai time ``YYYY-MM-DD HH:MM``."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp() * 1000)


class Device:
    """Writes hash-chained events of one device straight into the gateway store (as ingest stores them)."""

    def __init__(self, store: GatewayStore, device: str) -> None:
        self.store, self.device, self.seq, self.prev = store, device, 0, GENESIS_HASH
        self._queued: list[Event] = []

    def make(self, kind: EventKind, body: dict[str, Any], ts_ms: int) -> tuple[str, int]:
        self.seq += 1
        prev, self.prev = self.prev, event_hash(self.device, self.seq, ts_ms, kind.value, body, self.prev)
        self._queued.append(Event(self.device, self.seq, ts_ms, kind.value, body, prev, self.prev))
        return self.device, self.seq

    def consume(self, item: str, serial: str, ts_ms: int, *, admission: str = "ZY0001", lot: str = "LOT-A1",
                dept: str = "心内科", operator: str = "N042") -> tuple[str, int]:
        return self.make(EventKind.CONSUME, {"admission": admission, "udi": udi(item, serial, lot),
                                             "operator": operator, "dept": dept}, ts_ms)

    def give_back(self, item: str, serial: str, ts_ms: int, *, restocked: bool = True) -> tuple[str, int]:
        return self.make(EventKind.RETURN_UNUSED, {"udi": udi(item, serial), "operator": "N043", "dept": "心内科",
                                                   "restocked": restocked}, ts_ms)

    def send(self) -> None:
        if self._queued:
            self.store.ingest(Batch(self.device, "H1", self._queued))
            self._queued = []


def charge(store: GatewayStore) -> None:
    """Run the charging worker over everything stored."""
    worker = ChargingWorker(store, CONFIG)
    while worker.run_once():
        pass


def outbox_id(store: GatewayStore, key: tuple[str, int]) -> str:
    """The charge or credit id the outbox holds for the event ``key`` (device, seq)."""
    return str(store._engine.query("SELECT charge_id FROM charges WHERE device = ? AND seq = ?", key)[0][0])


def answer(store: GatewayStore, ids: Sequence[str], verdict: str) -> None:
    """The HIS's answer to these outbox rows, recorded as the sender records it: accept, refuse, or none yet."""
    for cid in ids:
        if verdict == "accept":
            store.mark_accepted(cid, "AA", f"HIS-{cid[-6:]}")
        elif verdict == "refuse":
            store.mark_parked(cid, "AE", "refused by the HIS")
        elif verdict != "pending":
            raise ValueError(verdict)


def catalog(store: GatewayStore, items: Sequence[tuple[str, int, str, bool]]) -> None:
    """(gtin, price fen, supplier, high value) into the catalog with its terms."""
    from gateway.data.catalog import TermsRow

    store.upsert_catalog([(g, f"IT{g[-4:]}", f"C{g[-6:]}", f"item {g[-4:]}", "", "ACME", p, 1, int(hv))
                          for g, p, _, hv in items])
    store.catalog.upsert_terms([TermsRow(g, s, False, None) for g, _, s, _ in items])
