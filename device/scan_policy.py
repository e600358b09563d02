"""Validation at the scan, offline: the checks a wristband + item pair must pass before it is consumed.

Checks, in this order (the first failing one is the reason given to the nurse):

1. unknown item — the GTIN is not in the cached catalog (skipped while no catalog is cached);
2. recalled lot — the lot, or every lot of the GTIN, is on the cached recall list;
3. expired — the expiry date is before today at the device (usable on its expiry day); a code without
   an expiry date is checked against the lot's date in the cached expiry list;
4. missing serial — a high-value item (one item, one code) whose code carries no serial;
5. serial already consumed — known consumed at the gateway, or consumed earlier on this device;
6. not stocked in this department — a stock list is cached for the department and lacks the GTIN;
7. discharged / unknown patient — a census is cached and says so (no census: no refusal); a patient
   discharged less than the document's grace period ago is still accepted (the day's last items).

The device's own consumptions are kept in a small SQLite table (:class:`ConsumedSerials`), written
after each consume commits and caught up from the event log at start, so a crash between the two
loses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from device.catalog_cache import CatalogCache, PatientStatus
from device.eventlog import EventLog
from device.udi import HibcCode, Udi, parse_udi
from spd_common.wire import Event, EventKind

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consumed_serials (
    item TEXT NOT NULL,
    serial TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (item, serial)
);
CREATE TABLE IF NOT EXISTS consumed_serials_mark (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL
);
"""


class ScanRefusal(StrEnum):
    """Why the policy refused a scan; the values are stable and go into the ``refused_scan`` event."""

    UNKNOWN_ITEM = "unknown_item"
    RECALLED_LOT = "recalled_lot"
    EXPIRED = "expired"
    MISSING_SERIAL = "missing_serial"
    SERIAL_ALREADY_CONSUMED = "serial_already_consumed"
    NOT_STOCKED_IN_DEPT = "not_stocked_in_dept"
    PATIENT_DISCHARGED = "patient_discharged"
    PATIENT_UNKNOWN = "patient_unknown"


@dataclass(frozen=True, slots=True)
class PolicyRefusal:
    """A refusal: the stable reason and the sentence shown to the nurse."""

    reason: ScanRefusal
    message: str


class ConsumedSerials:
    """Items consumed on this device, ``(item id, serial)`` once each; may live in the event log's file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def contains(self, item: str, serial: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM consumed_serials WHERE item = ? AND serial = ?", (item, serial)
            ).fetchone()
        return row is not None

    def record(self, event: Event) -> bool:
        """Remember the item of a committed ``consume`` event; False when it was known or carries no serial."""
        if event.kind != EventKind.CONSUME.value:
            return False
        key = _event_item(event)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = 0
                if key is not None:
                    added = self._db.execute(
                        "INSERT OR IGNORE INTO consumed_serials (item, serial, seq, ts_ms) VALUES (?, ?, ?, ?)",
                        (key[0], key[1], event.seq, event.ts_ms),
                    ).rowcount
                self._db.execute(
                    "INSERT INTO consumed_serials_mark (id, last_seq) VALUES (1, ?) ON CONFLICT (id) DO UPDATE "
                    "SET last_seq = MAX(last_seq, excluded.last_seq)",
                    (event.seq,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added == 1

    def catch_up(self, eventlog: EventLog, *, page: int = 1000) -> int:
        """Record consume events the log holds past the last one recorded; returns how many were added."""
        with self._lock:
            row = self._db.execute("SELECT last_seq FROM consumed_serials_mark WHERE id = 1").fetchone()
        after = int(row[0]) if row else 0
        added = 0
        while True:
            events = eventlog.events(from_seq=after + 1, limit=page)
            for ev in events:
                added += self.record(ev)
            if len(events) < page:
                return added
            after = events[-1].seq

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM consumed_serials").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ScanPolicy:
    """Decides, from the cached lists and the device's own consumptions, whether a scan may be consumed."""

    def __init__(
        self,
        cache: CatalogCache,
        consumed: ConsumedSerials,
        *,
        today: Callable[[], dt.date] = dt.date.today,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.consumed = consumed
        self._today = today
        self._clock = clock  # the discharge grace period ends by this clock

    def check_pack(self, *, udi: Udi | HibcCode) -> PolicyRefusal | None:
        """The refusal for opening a fixed-quantity pack (no patient): unknown item, recalled lot, expired."""
        key = udi.device_identifier or ""
        item = self.cache.item(key) if udi.gtin else None
        if self.cache.loaded and item is None:
            return PolicyRefusal(ScanRefusal.UNKNOWN_ITEM,
                                 f"Item {key or 'without GTIN'} is not in the catalog: do not use, call the SPD desk.")
        name = f"{item.name} ({key})" if item is not None else key
        recall = self.cache.recall_reason(key, udi.lot) if udi.gtin else None
        if recall is not None:
            return PolicyRefusal(ScanRefusal.RECALLED_LOT, f"Lot {udi.lot or '-'} of {name} is recalled"
                                 f"{f': {recall}' if recall else ''}. Do not open it; return it to the SPD.")
        expiry = udi.expiry if udi.expiry is not None else self.cache.lot_expiry(key, udi.lot) if udi.gtin else None
        if expiry is not None and expiry < self._today():
            return PolicyRefusal(ScanRefusal.EXPIRED,
                                 f"{name} expired on {expiry.isoformat()}. Do not open it; return it to the SPD.")
        return None

    def check(self, *, admission: str, udi: Udi | HibcCode, dept: str) -> PolicyRefusal | None:
        """The refusal for this scan, or None when it may be consumed."""
        key = udi.device_identifier or ""
        item = self.cache.item(key) if udi.gtin else None
        if self.cache.loaded and item is None:
            return PolicyRefusal(ScanRefusal.UNKNOWN_ITEM,
                                 f"Item {key or 'without GTIN'} is not in the catalog: do not use, call the SPD desk.")
        name = f"{item.name} ({key})" if item is not None else key
        recall = self.cache.recall_reason(key, udi.lot) if udi.gtin else None
        if recall is not None:
            why = f": {recall}" if recall else ""
            return PolicyRefusal(ScanRefusal.RECALLED_LOT,
                                 f"Lot {udi.lot or '-'} of {name} is recalled{why}. Do not use; return it to the SPD.")
        today = self._today()
        expiry = udi.expiry if udi.expiry is not None else self.cache.lot_expiry(key, udi.lot) if udi.gtin else None
        if expiry is not None and expiry < today:
            return PolicyRefusal(ScanRefusal.EXPIRED,
                                 f"{name} expired on {expiry.isoformat()}. Do not use; return it to the SPD.")
        if item is not None and item.high_value and not udi.serial:
            return PolicyRefusal(ScanRefusal.MISSING_SERIAL,
                                 f"The code of {name} has no serial number: scan the item's full UDI label.")
        if udi.serial and (self.cache.consumed_at_gateway(key, udi.serial) or self.consumed.contains(key, udi.serial)):
            return PolicyRefusal(ScanRefusal.SERIAL_ALREADY_CONSUMED,
                                 f"{name} serial {udi.serial} was already used. A single-use item cannot be "
                                 "charged twice; keep it aside and report it.")
        stock = self.cache.stock_list(dept)
        if stock is not None and key not in stock:
            return PolicyRefusal(ScanRefusal.NOT_STOCKED_IN_DEPT,
                                 f"{name} is not stocked in department {dept}: check the item, call the SPD desk.")
        now = self._clock()
        status = self.cache.patient_status(admission, now=now)
        if status is PatientStatus.DISCHARGED:
            info = self.cache.patient(admission, now=now)
            when = ""
            if info is not None and info.discharged_at is not None:
                when = f" on {dt.datetime.fromtimestamp(info.discharged_at).strftime('%Y-%m-%d %H:%M')}"
            return PolicyRefusal(ScanRefusal.PATIENT_DISCHARGED,
                                 f"Patient {admission} has been discharged{when}: check the wristband.")
        if status is PatientStatus.UNKNOWN:
            return PolicyRefusal(ScanRefusal.PATIENT_UNKNOWN,
                                 f"Patient {admission} is not an admitted inpatient: check the wristband.")
        return None

    def committed(self, event: Event) -> None:
        """Tell the policy a consume event was committed (the device now knows its serial as consumed)."""
        self.consumed.record(event)


def _event_item(event: Event) -> tuple[str, str] | None:
    udi_text = event.body.get("udi")
    if not isinstance(udi_text, str):
        return None
    try:
        udi = parse_udi(udi_text, today=dt.datetime.fromtimestamp(event.ts_ms / 1000).date())
    except ValueError:
        return None
    if not udi.serial or not udi.device_identifier:
        return None
    return udi.device_identifier, udi.serial
