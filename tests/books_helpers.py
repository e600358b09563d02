"""A small hospital for the books' tests: cabinets and handhelds whose events reach the store as devices
send them (signed in a real event log, encoded, decoded and ingested), on a clock the test moves."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

from device.eventlog import EventLog
from device.handheld import Handheld
from device.udi import GS, to_element_string
from gateway.store import GatewayStore
from hw_sim.udi_gen import make_gtin
from spd_common.wire import EventKind, decode_batch, encode_batch

_rng = random.Random(14)
STENT, CATHETER, GAUZE = make_gtin(_rng), make_gtin(_rng), make_gtin(_rng)
T0 = 1_795_000_000.0  # 2026-11-18, a Wednesday
DAY = 86_400.0
PATIENT, PATIENT2 = "ZY0000000001", "ZY0000000002"


def gs1(gtin: str, *, lot: str = "", serial: str = "", expiry: dt.date | None = None, count: int | None = None,
        symbology: str = "]d2") -> str:
    """An item label as a scanner sends it (expiry, count, lot, serial in that order)."""
    elements = [("01", gtin)]
    if expiry is not None:
        elements.append(("17", expiry.strftime("%y%m%d")))
    if count is not None:
        elements.append(("30", str(count)))
    if lot:
        elements.append(("10", lot))
    if serial:
        elements.append(("21", serial))
    return symbology + to_element_string(elements, gs=GS, today=expiry or dt.date(2026, 1, 1))


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def ms(self) -> int:
        return int(self.t * 1000)


class Site:
    """One store and the devices that report to it."""

    def __init__(self, tmp: Path, store: GatewayStore, clock: Clock) -> None:
        self.tmp, self.store, self.clock = tmp, store, clock

    def log(self, device: str) -> EventLog:
        return EventLog(self.tmp / f"{device}.db", device=device, clock=self.clock, retention_s=10**9)

    def deliver(self, log: EventLog) -> None:
        """Everything the device recorded, as one batch off the wire (resent batches store nothing twice)."""
        events = log.events()
        if events:
            self.store.ingest(decode_batch(f"spd/v1/H1/{log.device}/events", encode_batch("H1", log.device, events)),
                              now=self.clock.t)


class CabinetFeed:
    """A cabinet's item events with the bodies the cabinet writes (device/cabinet/session.py ``_item_body``)."""

    def __init__(self, site: Site, name: str, dept: str) -> None:
        self.site, self.name, self.dept = site, name, dept
        self.log = site.log(name)

    def _item(self, kind: EventKind, gtin: str, serial: str, user: str, role: str, lot: str,
              expiry: dt.date | None) -> None:
        body: dict[str, Any] = {"epc": f"3034{serial}", "gtin": gtin, "serial": serial, "dept": self.dept,
                                "session": "S1", "user": user, "role": role}
        if lot:
            body["lot"] = lot
        if expiry is not None:
            body["expiry"] = expiry.isoformat()
        self.log.append(kind.value, body)
        self.site.deliver(self.log)

    def restock(self, gtin: str, serial: str, *, lot: str = "", expiry: dt.date | None = None) -> None:
        self._item(EventKind.RESTOCKED, gtin, serial, "R0001", "restocker", lot, expiry)

    def take(self, gtin: str, serial: str, *, user: str = "N0001", lot: str = "") -> None:
        self._item(EventKind.TAKEN, gtin, serial, user, "nurse", lot, None)

    def put_back(self, gtin: str, serial: str, *, user: str = "N0001") -> None:
        self._item(EventKind.RETURNED, gtin, serial, user, "nurse", "", None)


class HandheldFeed:
    """A nurse's handheld (the real :class:`device.handheld.Handheld`) whose log reaches the store."""

    def __init__(self, site: Site, name: str, dept: str, operator: str = "N0001") -> None:
        self.site = site
        self.log = site.log(name)
        self.handheld = Handheld(self.log, operator=operator, dept=dept)

    def consume(self, admission: str, udi: str) -> None:
        assert self.handheld.scan_pair(admission, udi).accepted
        self.site.deliver(self.log)

    def return_unused(self, udi: str, *, restocked: bool = True) -> None:
        assert self.handheld.return_unused(udi, restocked=restocked).accepted
        self.site.deliver(self.log)

    def open_pack(self, udi: str) -> None:
        assert self.handheld.open_pack(udi).accepted
        self.site.deliver(self.log)
