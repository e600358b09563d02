"""The ``not_linked`` check: an item taken from a cabinet must be charged to a patient, on any device, in time.

Only the gateway sees every fact: the cabinet's ``taken`` event, a ``consume``
scanned at that cabinet or on a handheld in the ward, the item coming back
into a cabinet. :class:`LinkWatch` follows the stored events with its own
cursor and keeps, per take, whether it is still open:

* a ``taken`` event (not by a restocker) opens a take of its item
  (``gtin/serial``, the same key a UDI scan gives) — unless a scan of that
  item was already stored within the window before it (a handheld's batch
  can arrive before the cabinet's);
* a ``consume`` of the item, from any device, links every open take of it;
* a ``returned``/``restocked`` event of the item, at any cabinet, closes it:
  the item is back in stock;
* a take still open ``window_s`` after it was stored raises one alarm
  (``link_alarms``), naming the cabinet, the item, who opened the door and in
  which session. A scan that arrives after the alarm does not withdraw it: it
  is noted on the alarm (``resolved_by``), so the on-call technician sees
  both that it was late and that it was charged.

Time is the gateway's clock (``events.stored_at``), not the devices': device
clocks step, and a cabinet that was offline delivers its takes late.
At the first start on a store that already holds events, takes stored more
than one window before that start are not alarmed (no flood of alarms for
history).

Several gateway instances may share a store: every write is keyed on the
event identity, and only the charging lease holder runs the check.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import bridge
from gateway.data.links import ItemScan, LinkBatch, TakeRow
from gateway.leader_loop import LeaderLoop
from gateway.store import GatewayStore
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.wire import EventKind

log = logging.getLogger(__name__)

CURSOR = "linking"
SINCE = "linking_since"  # cursors row: takes stored before this (unix seconds) are never alarmed
DEFAULT_WINDOW_S = 1800.0  # as the cabinet's own link_within_s used to default to

@dataclass(frozen=True, slots=True)
class LinkAlarm:
    """One ``not_linked`` alarm: the take (cabinet, seq) that was not charged within ``window_s``."""

    cabinet: str
    seq: int
    item_key: str
    epc: str
    user: str
    session: str
    dept: str
    taken_ms: int
    window_s: float
    raised_at: float
    resolved_by: str

    def __str__(self) -> str:
        taken = dt.datetime.fromtimestamp(self.taken_ms / 1000).astimezone().isoformat(timespec="seconds")
        who = self.user or "an unknown user (door opened without a session)"
        text = (f"not_linked: cabinet {self.cabinet} item {self.item_key} (EPC {self.epc or '?'}) taken by {who}"
                f"{f' in session {self.session}' if self.session else ''} at {taken} (cabinet seq {self.seq}),"
                f" not charged to a patient within {self.window_s:g} s")
        if self.resolved_by:
            text += f"; later {self.resolved_by}"
        return text


def link_alarms(store: GatewayStore) -> list[LinkAlarm]:
    """Every ``not_linked`` alarm, oldest first."""
    return [LinkAlarm(*r) for r in store.links.alarms()]


class LinkWatch(LeaderLoop):
    """Follows stored events and raises ``not_linked`` alarms; :meth:`run_once` is one pass."""

    def __init__(
        self,
        store: GatewayStore,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        check_every_s: float | None = None,
        batch_size: int = 2000,
        utc_offset_minutes: int = 480,
        may_run: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        heartbeats: HeartbeatRegistry | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.store = store
        self.window_s = window_s
        self.check_every_s = check_every_s if check_every_s is not None else max(0.05, min(30.0, window_s / 4))
        self.batch_size = batch_size
        self.utc_offset_minutes = utc_offset_minutes
        self.alarms_raised = 0
        self._clock = clock
        super().__init__("link-watch", self.check_every_s, may_run=may_run, heartbeats=heartbeats)
        store.devices.init_cursor(SINCE, int(self._clock() - window_s))

    # ------------------------------------------------------------ one pass

    def run_once(self) -> int:
        """Read new events, then raise the alarms that are due; returns how many events it read."""
        n = 0
        while True:
            read = self._follow()
            n += read
            if read < self.batch_size:
                break
        self.raise_due()
        return n

    def _follow(self) -> int:
        after = self.store.cursor(CURSOR)
        rows = self.store.events.events_of_kinds(
            (EventKind.TAKEN.value, EventKind.CONSUME.value, EventKind.RETURNED.value, EventKind.RESTOCKED.value),
            after_id=after, limit=self.batch_size)
        if not rows:
            return 0
        with self.store.links.batch() as db:
            scans: list[ItemScan] = []  # consecutive scans, written together before the next take or return
            for row in rows:
                body = json.loads(row.body)
                if row.kind == EventKind.CONSUME.value:
                    scan = self._scanned(row.device, row.seq, row.ts_ms, body, row.stored_at)
                    if scan is not None:
                        scans.append(scan)
                    continue
                self._link(db, scans)
                if row.kind == EventKind.TAKEN.value:
                    self._taken(db, row.device, row.seq, row.ts_ms, body, row.stored_at)
                else:
                    self._back(db, row.device, row.seq, body)
            self._link(db, scans)
            db.set_cursor(CURSOR, rows[-1].id)
        return len(rows)

    def _link(self, db: LinkBatch, scans: list[ItemScan]) -> None:
        """Write a run of scans and link the open takes of their items, as one by one in order would, then
        empty the list: the scans in one insert, and the takes closed only for the items that have open ones
        (one read for the run; usually none)."""
        if not scans:
            return
        db.add_scans(scans)
        first_by: dict[str, ItemScan] = {}
        for scan in scans:  # a second scan of an item finds its takes already linked by the first
            first_by.setdefault(scan.item_key, scan)
        for key in db.items_with_open_links(list(first_by)):
            scan = first_by[key]
            db.close_open_takes(key, "linked", f"charged by {scan.device} seq {scan.seq}", at=self._clock())
        scans.clear()

    def _taken(self, db: LinkBatch, device: str, seq: int, ts_ms: int, body: dict[str, object],
               stored_at: float) -> None:
        key = _cabinet_item_key(body)
        if key is None or body.get("role") == "restocker":
            return
        scan = db.latest_scan(key, stored_since=stored_at - self.window_s)
        state, closed_by = ("linked", f"charged by {scan[0]} seq {scan[1]}") if scan else ("open", "")
        db.add_take(TakeRow(device, seq, key, _s(body.get("epc")), _s(body.get("user")), _s(body.get("session")),
                            _s(body.get("dept")), ts_ms, stored_at, state, closed_by))

    def _scanned(self, device: str, seq: int, ts_ms: int, body: dict[str, object],
                 stored_at: float) -> ItemScan | None:
        """The item scan a ``consume`` event records, if its UDI names one item."""
        udi = body.get("udi")
        if not isinstance(udi, str):
            return None
        year = (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ts_ms + self.utc_offset_minutes * 60_000)).year
        try:
            item = bridge.read_item(udi, reference_year=year)
        except bridge.BridgeError:
            return None  # unreadable: refused by the bridge with its reason; it links nothing
        if not item.serial:
            return None
        return ItemScan(device, seq, f"{item.gtin}/{item.serial}", stored_at)

    def _back(self, db: LinkBatch, device: str, seq: int, body: dict[str, object]) -> None:
        key = _cabinet_item_key(body)
        if key is None:
            return
        db.close_open_takes(key, "back", f"put back into cabinet {device} (seq {seq})", at=self._clock())

    def raise_due(self) -> list[LinkAlarm]:
        """Alarm every take still open one window after it was stored; the new alarms."""
        now = self._clock()
        since = self.store.cursor(SINCE)
        raised = [LinkAlarm(*r) for r in self.store.links.raise_due(now=now, window_s=self.window_s, since=since)]
        for alarm in raised:
            log.warning("%s", alarm)
        self.alarms_raised += len(raised)
        return raised



def _cabinet_item_key(body: dict[str, object]) -> str | None:
    gtin, serial = body.get("gtin"), body.get("serial")
    if isinstance(gtin, str) and isinstance(serial, str) and gtin and serial:
        return f"{gtin}/{serial}"
    return None


def _s(value: object) -> str:
    return value if isinstance(value, str) else ""
