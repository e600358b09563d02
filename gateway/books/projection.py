"""Device events become stock movements: the ledger's projection, run from a cursor.

What each stored event means for the stock (``location`` is a cabinet's device id, ``dept:X`` department
X's store, ``operator`` the SPD operator's store; a movement with a counterpart is a transfer, counted
again, negated, there):

==================  ============  ===========================  ====  ==========================================
event               kind          location                     qty   counterpart
==================  ============  ===========================  ====  ==========================================
``taken``           take          the cabinet                  -1    ``dept:X`` (in the department's hands);
                                                                     ``operator`` when a restocker took it
``returned``        return        the cabinet                  +1    ``dept:X`` (back from the department)
``restocked``       restock       the cabinet                  +1    ``operator`` (out of the operator's store)
``consume``         use           ``dept:X``                   -1    none: used on the patient (``admission``)
``return_unused``   return        ``dept:X``                   +1    none (only when ``restocked``: a discarded
                                                                     item does not come back)
``pack_opened``     pack_open     ``dept:X``                   -N    none: N from the label's count (AI 30)
``stock_counted``   count_adjust  the cabinet                  ±n    none: a count (below)
==================  ============  ===========================  ====  ==========================================

A ``stock_counted`` event (a cabinet's full RFID inventory, in parts committed together) is a count of the
cabinet's serialised items (:func:`gateway.books.ledger.record_count`, id ``<device>:<seq of the last
part>``, by ``rfid``): the movements before it are recorded first, then what the ledger expected there is
compared with what the reader saw, and the differences become ``count_adjust`` movements and discrepancies.
The first snapshot of a cabinet whose stock predates the ledger is its opening balance.

A movement's ``source`` is ``device:seq`` (a pack's is ``pack:<gtin>/<pack serial>``, so a pack scanned twice
is opened once), and recording a source again changes nothing: the projection can run any number of times,
from several gateways, and a crash between recording and moving the cursor repeats nothing.
An event whose item cannot be read (an unreadable UDI, a body without GTIN) moves nothing; it is counted in
:attr:`StockProjection.skipped` and the charging path reports it with its reason.

:class:`StockProjection` runs inside the gateway (thread ``stock-ledger``, lease holder only) and
:func:`catch_up` runs it to the end before every books command, so a command on a store the gateway never
projected is still right.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from gateway import bridge
from gateway.data.events import EventRow
from gateway.data.stock import PACK_OPEN, RESTOCK, RETURN, TAKE, USE, MovementRow
from gateway.leader_loop import LeaderLoop
from gateway.store import GatewayStore
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.wire import EventKind

log = logging.getLogger(__name__)

CURSOR = "stock_ledger"
OPERATOR_STORE = "operator"
KINDS = (EventKind.TAKEN.value, EventKind.RETURNED.value, EventKind.RESTOCKED.value, EventKind.CONSUME.value,
         EventKind.RETURN_UNUSED.value, EventKind.PACK_OPENED.value, EventKind.STOCK_COUNTED.value)
RFID = "rfid"  # who counted, for a cabinet's own count
_TAKEN, _RETURNED, _RESTOCKED = EventKind.TAKEN.value, EventKind.RETURNED.value, EventKind.RESTOCKED.value
_CONSUME, _RETURN_UNUSED = EventKind.CONSUME.value, EventKind.RETURN_UNUSED.value
_STOCK_COUNTED = EventKind.STOCK_COUNTED.value
_CABINET_KINDS = (_TAKEN, _RETURNED, _RESTOCKED)


_CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_X = f"[{re.escape(_CSET82)}]"
_PLAIN_UDI = re.compile(rf"(?:\]d2|\]C1|\]Q3|\]e0)?01([0-9]{{14}})(?:17([0-9]{{6}}))?(?:10({_X}{{1,20}})(?:\x1d|$))?"
                        rf"(?:21({_X}{{1,20}}))?")


def read_item(udi: str, reference_year: int) -> bridge.ItemFields:
    """GTIN, lot, serial and expiry of a UDI, as :func:`gateway.bridge.read_item` reads it.

    The usual label, (01)(17)(10)(21) in that order, is read by one regular expression (the projection reads
    every scanned code; this is most of its time); anything else goes to the bridge's reader. Raises
    :class:`gateway.bridge.UdiUnreadable`.
    """
    m = _PLAIN_UDI.fullmatch(udi)
    if m is None or not _check_digit_ok(m.group(1)):
        return bridge.read_item(udi, reference_year=reference_year)
    gtin, yymmdd, lot, serial = m.groups()
    return bridge.ItemFields(gtin, lot or "", serial or "", _expiry(yymmdd, reference_year) if yymmdd else "")


@functools.lru_cache(maxsize=65536)
def _check_digit_ok(gtin: str) -> bool:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(gtin[:13]))
    return (10 - total % 10) % 10 == int(gtin[13])


@functools.lru_cache(maxsize=4096)
def _expiry(yymmdd: str, reference_year: int) -> str:
    return bridge.read_item(f"01{'0' * 14}17{yymmdd}", reference_year=reference_year).expiry


def dept_store(dept: str) -> str:
    """The location of a department's own store (and of what its staff hold after a take)."""
    return f"dept:{dept}" if dept else ""


class StockProjection(LeaderLoop):
    """Follows the stored events with its own cursor and records their stock movements."""

    def __init__(self, store: GatewayStore, *, batch_size: int = 5000, every_s: float = 5.0,
                 utc_offset_minutes: int = 480, may_run: Callable[[], bool] = lambda: True,
                 heartbeats: HeartbeatRegistry | None = None) -> None:
        self.store = store
        self.batch_size = batch_size
        self.every_s = every_s
        self.utc_offset_minutes = utc_offset_minutes
        self.skipped = 0
        super().__init__("stock-ledger", every_s, may_run=may_run, heartbeats=heartbeats)

    def run_once(self) -> int:
        """Project every event stored after the cursor; how many events were read."""
        n = 0
        while True:
            read = self._step()
            self._beat()  # a first pass over a large store is many steps, each one batch
            n += read
            if read < self.batch_size:
                return n

    def pending(self) -> int:
        """Events stored after the cursor (an upper bound: every kind counts)."""
        return max(0, self.store.last_event_id() - self.store.cursor(CURSOR))

    def _step(self) -> int:
        after = self.store.cursor(CURSOR)
        rows = self.store.events.events_of_kinds(KINDS, after_id=after, limit=self.batch_size)
        if not rows:
            return 0
        movements: list[MovementRow] = []
        for row in rows:
            try:
                if row.kind == _STOCK_COUNTED:
                    self.store.stock.record(movements)  # the count compares with everything before it
                    movements = []
                    self._counted(row)
                    continue
                movements += self.movements_of(row)
            except (ValueError, TypeError, KeyError) as err:  # a body this code cannot read moves nothing
                self.skipped += 1
                log.debug("event %s seq %d moves no stock: %s", row.device, row.seq, err)
        self.store.stock.record(movements)
        self.store.devices.set_cursor(CURSOR, rows[-1].id)
        return len(rows)

    def movements_of(self, row: EventRow) -> list[MovementRow]:
        """The stock movements one stored event makes (none for an event that moves no stock)."""
        body: dict[str, Any] = json.loads(row.body)
        source = f"{row.device}:{row.seq}"
        dept = _text(body.get("dept"))

        def move(kind: str, location: str, qty: int, gtin: str, lot: str, serial: str, *, operator: str = "",
                 admission: str = "", counterpart: str = "", expiry: str = "", src: str = source) -> MovementRow:
            return MovementRow(src, row.ts_ms, kind, location, dept, gtin, lot, serial, qty, operator, admission,
                               row.device, row.seq, counterpart, expiry)

        if row.kind in _CABINET_KINDS:
            gtin, serial = _text(body.get("gtin")), _text(body.get("serial"))
            if not gtin:
                raise ValueError("no gtin")
            lot, expiry, user = _text(body.get("lot")), _text(body.get("expiry")), _text(body.get("user"))
            if row.kind == _TAKEN:
                back_to = OPERATOR_STORE if body.get("role") == "restocker" else dept_store(dept)
                return [move(TAKE, row.device, -1, gtin, lot, serial, operator=user, counterpart=back_to,
                             expiry=expiry)]
            if row.kind == _RETURNED:
                return [move(RETURN, row.device, 1, gtin, lot, serial, operator=user, counterpart=dept_store(dept),
                             expiry=expiry)]
            return [move(RESTOCK, row.device, 1, gtin, lot, serial, operator=user, counterpart=OPERATOR_STORE,
                         expiry=expiry)]
        item = self._item(body, row.ts_ms)
        operator = _text(body.get("operator"))
        if not dept:
            raise ValueError("no dept")
        if row.kind == _CONSUME:
            return [move(USE, dept_store(dept), -1, item.gtin, item.lot, item.serial, operator=operator,
                         admission=_text(body.get("admission")), expiry=item.expiry)]
        if row.kind == _RETURN_UNUSED:
            if body.get("restocked", True) is not True:
                return []
            return [move(RETURN, dept_store(dept), 1, item.gtin, item.lot, item.serial, operator=operator,
                         expiry=item.expiry)]
        qty = body.get("qty")
        if type(qty) is not int or qty <= 0:
            raise ValueError(f"pack count {qty!r} is not a positive integer")
        src = f"pack:{item.gtin}/{item.serial}" if item.serial else source
        return [move(PACK_OPEN, dept_store(dept), -qty, item.gtin, item.lot, "", operator=operator,
                     expiry=item.expiry, src=src)]

    def _counted(self, row: EventRow) -> None:
        """The last part of a cabinet's snapshot: count the cabinet with every part's items."""
        from gateway.books.ledger import CountedItem, record_count

        body: dict[str, Any] = json.loads(row.body)
        part, parts = body.get("part"), body.get("parts")
        if type(part) is not int or type(parts) is not int or not 1 <= part <= parts:
            raise ValueError("stock_counted without part/parts")
        if part != parts:
            return  # the count is taken with its last part
        rows = self.store.events.device_events(row.device, EventKind.STOCK_COUNTED.value,
                                               first_seq=row.seq - parts + 1, last_seq=row.seq)
        bodies = [json.loads(r.body) for r in rows]
        if [b.get("part") for b in bodies] != list(range(1, parts + 1)):
            raise ValueError(f"stock_counted parts missing before seq {row.seq}")
        counted = [CountedItem(str(gtin), "", str(serial), 1) for b in bodies for gtin, serial in b["items"]]
        record_count(self.store, row.device, counted, at_ms=row.ts_ms, by=RFID, origin=f"device:{row.device}",
                     count_id=f"{row.device}:{row.seq}", serialised_only=True)

    def _item(self, body: dict[str, Any], ts_ms: int) -> bridge.ItemFields:
        udi = body.get("udi")
        if not isinstance(udi, str):
            raise ValueError("no udi")
        year = (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ts_ms + self.utc_offset_minutes * 60_000)).year
        try:
            return read_item(udi, year)
        except bridge.BridgeError as err:
            raise ValueError(str(err)) from None



def catch_up(store: GatewayStore, *, utc_offset_minutes: int = 480, show_progress: bool = False) -> int:
    """Project every event not yet in the ledger (before a books command); how many events were read.

    With ``show_progress`` a bar runs on a terminal (:func:`gateway.books.output.progress`).
    """
    started = time.monotonic()
    projection = StockProjection(store, utc_offset_minutes=utc_offset_minutes)
    if show_progress:
        from gateway.books.output import progress

        total = projection.pending()
        steps = progress(iter(projection._step, 0), total=-(-total // projection.batch_size),
                         description="stock ledger")
        n = sum(steps)
    else:
        n = projection.run_once()
    if n:
        log.info("stock ledger: %d events projected in %.1f s", n, time.monotonic() - started)
    return n


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
