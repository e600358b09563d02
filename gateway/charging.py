"""The charging worker: stored consumption events → bridge → durable HIS outbox, and credits for returns.

It reads events after its cursor, runs them through the charging bridge in
batches, and in one transaction writes the charge lines to the outbox, the
refusals with their reasons, the credits for items given back unused
(``return_unused`` events, and a charged item that comes back into a cabinet:
``returned``/``restocked`` events), and the new cursor. A crash anywhere
repeats the batch, and every insert is keyed on the event identity, so
nothing doubles.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from gateway import bridge
from gateway.data.charges import ChargingBatch, ReturnRow, StandingCharge
from gateway.store import GatewayStore, ReturnOutcome, StoredEvent
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.wire import Event, EventKind

log = logging.getLogger(__name__)

CURSOR = "charging"
DEADLINE_S = 90.0  # one pass: a batch through the bridge and its transaction, which may wait 30 s on a busy store
RETURN_KINDS = (EventKind.RETURN_UNUSED, EventKind.RETURNED, EventKind.RESTOCKED)
CABINET_RETURN_KINDS = (EventKind.RETURNED.value, EventKind.RESTOCKED.value)


@dataclass(slots=True)
class ChargingStats:
    batches: int = 0
    lines: int = 0
    rejects: int = 0
    duplicate_items: int = 0
    returns: int = 0
    credits: int = 0


def load_catalog(store: GatewayStore) -> bridge.Catalog:
    items = [
        bridge.CatalogItem(
            gtin=r[0], item_code=r[1], charge_code=r[2], name=r[3], spec=r[4], manufacturer=r[5],
            price_fen=int(r[6]), chargeable=bool(r[7]), high_value=bool(r[8]),
        )
        for r in store.load_catalog_rows()
    ]
    return bridge.Catalog(items)


class ChargingWorker:
    """Turns consumption events into outbox charges, batch by batch."""

    def __init__(
        self,
        store: GatewayStore,
        config: bridge.BridgeConfig,
        *,
        batch_size: int = 2000,
        idle_wait_s: float = 0.2,
        on_charges: Callable[[int], None] | None = None,
        may_run: Callable[[], bool] = lambda: True,
        lease_term: Callable[[], int] | None = None,
        heartbeats: HeartbeatRegistry | None = None,
    ) -> None:
        """``lease_term``: the charging lease's term (:attr:`gateway.lease.Leadership.term`); the consumed items
        are read again when charging resumes in a new term, not after a pause within one (without it: after
        every pause)."""
        self.store = store
        self.config = config
        self.batch_size = batch_size
        self.idle_wait_s = idle_wait_s
        self.stats = ChargingStats()
        self._on_charges = on_charges
        self._may_run = may_run
        self._lease_term = lease_term
        self._loaded_term: int | None = None
        self._catalog = load_catalog(store)
        self._release_cursor = store.last_release_id()  # before the keys: a release in between is applied twice
        self._consumed = bridge.new_consumed_set(store.charged_item_keys())
        self._consumed_stale = False  # set when a batch failed after the bridge added its items
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat("charging", deadline_s=DEADLINE_S)

    def reload_catalog(self) -> None:
        self._catalog = load_catalog(self.store)

    def notify(self) -> None:
        self._wake.set()

    def run_once(self) -> int:
        """Process one batch; returns how many events it consumed from the cursor."""
        if self._consumed_stale:
            self._consumed = bridge.new_consumed_set(self.store.charged_item_keys())
            self._consumed_stale = False
        self._apply_releases()
        after = self.store.cursor(CURSOR)
        stored = self.store.charging_events(after_id=after, limit=self.batch_size)
        if not stored:
            return 0
        returns = [s for s in stored if s.event.kind in RETURN_KINDS]
        tuples = [_event_tuple(s.event) for s in stored if s.event.kind == EventKind.CONSUME]
        try:
            return self._charge(stored, returns, tuples)
        except BaseException:
            # the bridge added this batch's items to the consumed set, but the batch was not stored
            self._consumed_stale = True
            raise

    def _charge(self, stored: list[StoredEvent], returns: list[StoredEvent], tuples: list[bridge.EventTuple]) -> int:
        result = bridge.charge_batch(tuples, self._catalog, self._consumed, self.config)
        now = time.time()
        dup_items: list[bridge.ChargeLine] = []
        new_lines: list[bridge.ChargeLine] = []
        with self.store.charges.batch() as db:
            rows = [(line.charge_id, line.device, line.seq, line.admission, item_key(line),
                     json.dumps(_line_record(line), ensure_ascii=False), line.message, now) for line in result.lines]
            if db.add_charges(rows):  # all new: the usual case, a few statements for the batch
                new_lines = [line for line in result.lines if line.serial]
            else:  # some are there already (a batch repeated after a crash, an item charged by another event)
                for line, row in zip(result.lines, rows, strict=True):
                    added = db.add_charge(*row)
                    if added and line.serial:
                        new_lines.append(line)
                    if not added and not db.has_charge(line.device, line.seq):
                        # the item key is already charged by another event
                        dup_items.append(line)
                        db.reject(line.device, line.seq, "serial_already_consumed",
                                  f"item {line.gtin}/{line.serial} is already charged", now)
            for rej in [*result.rejects, *result.uncharged]:
                db.reject(rej.device, rej.seq, str(rej.reason), rej.detail, now)
            # after this batch's charges: a return finds charges of events stored before it, this batch's too
            event_ids = {(s.event.device, s.event.seq): s.id for s in stored}
            credited = self._credit_earlier_returns(db, new_lines, event_ids, now)
            credited += sum(self._record_return(db, ret, now) for ret in returns)
            db.set_cursor(CURSOR, stored[-1].id)
        for line in dup_items:
            log.error("charge refused: item %s/%s already charged (device %s seq %d)",
                      line.gtin, line.serial, line.device, line.seq)
        for rej in result.rejects:
            log.warning("charge refused: device %s seq %d: %s (%s)", rej.device, rej.seq, rej.reason, rej.detail)
        if (result.lines or credited) and self._on_charges is not None:
            self._on_charges(len(result.lines) + credited)
        self.stats.batches += 1
        self.stats.lines += len(result.lines) - len(dup_items)
        self.stats.rejects += len(result.rejects) + len(dup_items)
        self.stats.duplicate_items += len(dup_items)
        self.stats.returns += len(returns)
        self.stats.credits += credited
        return len(stored)

    # ------------------------------------------------------------ returns and credits

    def _apply_releases(self) -> None:
        """Drop from the consumed set the items the HIS credited and that went back to stock."""
        for release_id, key in self.store.released_item_keys(after_id=self._release_cursor):
            self._consumed.discard(key)
            self._release_cursor = release_id

    def _record_return(self, db: ChargingBatch, stored: StoredEvent, now: float) -> int:
        """Handle one return event inside the batch transaction; 1 when it queued a credit.

        ``return_unused`` (a handheld or a cabinet's screen) always gets a ``returns`` row. A cabinet
        ``returned``/``restocked`` event (the RFID count saw the item come back in) gets one only when
        the item stands charged: an item taken and put back without a charge is stock, not a credit.
        """
        ev = stored.event
        if db.has_return(ev.device, ev.seq):
            return 0
        if ev.kind != EventKind.RETURN_UNUSED:
            return self._record_cabinet_return(db, stored, now)
        body = ev.body
        operator, dept, reason = _text(body.get("operator")), _text(body.get("dept")), _text(body.get("reason"))
        restocked = body.get("restocked", True)
        item_key = ""
        try:
            if type(restocked) is not bool:
                raise _ReturnRefused("restocked must be true or false")
            year = _local_year(ev.ts_ms, self.config.utc_offset_minutes)
            item = bridge.read_item(_text(body.get("udi")), reference_year=year)
            if not item.serial:
                raise _ReturnRefused(f"GTIN {item.gtin} without serial cannot be matched to a charge")
            item_key = f"{item.gtin}/{item.serial}"
        except (_ReturnRefused, bridge.BridgeError) as refused:
            log.warning("return refused: device %s seq %d: %s", ev.device, ev.seq, refused)
            self._insert_return(db, ev, item_key, reason, restocked is True, ReturnOutcome.REFUSED, str(refused),
                                None, None, operator, dept, now)
            return 0
        return self._settle_return(db, ev, item_key, reason, restocked, operator, dept,
                                   self._standing_charge(db, item_key, stored), now)

    def _record_cabinet_return(self, db: ChargingBatch, stored: StoredEvent, now: float) -> int:
        ev = stored.event
        gtin, serial = _text(ev.body.get("gtin")), _text(ev.body.get("serial"))
        if not gtin or not serial:
            return 0
        item_key = f"{gtin}/{serial}"
        charge = self._standing_charge(db, item_key, stored)
        if charge is None:
            return 0
        reason = f"put back into cabinet {ev.device} ({ev.kind})"
        return self._settle_return(db, ev, item_key, reason, True, _text(ev.body.get("user")),
                                   _text(ev.body.get("dept")), charge, now)

    @staticmethod
    def _standing_charge(db: ChargingBatch, item_key: str, stored: StoredEvent) -> StandingCharge | None:
        """The latest charge of this item that the return can be about: (charge id, status, line).

        Of another device: one from an event stored before the return, and used no later than the return
        happened by the devices' clocks (a restock made before the use, delivered late, is not its return).
        Of the return's own device: one it recorded before the return, whenever it was stored (in the same
        batch or later: see
        `_credit_earlier_returns`), and never one it recorded after it (that charge is a later use of an
        item the return had already brought back, even if its batch reached the gateway first).
        """
        return db.standing_charge(item_key, stored.event.device, stored.event.seq, stored.id, stored.event.ts_ms)

    def _settle_return(
        self, db: ChargingBatch, ev: Event, item_key: str, reason: str, restocked: bool, operator: str,
        dept: str, charge: StandingCharge | None, now: float,
    ) -> int:
        """Credit, void or record as not charged one return whose item is known; 1 when it queued a credit."""
        outcome, detail, charge_id, credit_id = ReturnOutcome.NOT_CHARGED, "", None, None
        if charge is None:
            detail = "no charge for this item: stock restored"
        else:
            charge_id = str(charge[0])
            earlier = db.returned_by(charge_id)
            if earlier is not None:
                outcome, detail = ReturnOutcome.REFUSED, f"charge {charge_id} already returned by {earlier[0]} seq " \
                    f"{earlier[1]}"
                log.warning("return refused: device %s seq %d: %s", ev.device, ev.seq, detail)
            elif charge[1] == "parked":
                outcome, detail = ReturnOutcome.VOIDED, f"charge {charge_id} was parked, never booked: voided"
            else:
                credit_id = self._queue_credit(db, ev, charge_id, json.loads(charge[2]), operator, dept, now)
                outcome = ReturnOutcome.CREDITED
        self._insert_return(db, ev, item_key, reason, restocked, outcome, detail, charge_id, credit_id, operator,
                            dept, now)
        return 1 if credit_id is not None else 0

    @staticmethod
    def _insert_return(
        db: ChargingBatch, ev: Event, item_key: str, reason: str, restocked: bool, outcome: ReturnOutcome,
        detail: str, charge_id: str | None, credit_id: str | None, operator: str, dept: str, now: float,
    ) -> None:
        db.add_return(ReturnRow(ev.device, ev.seq, item_key, reason, restocked, outcome, detail, charge_id, credit_id,
                                operator, dept, ev.ts_ms, now))

    def _credit_earlier_returns(
        self, db: ChargingBatch, lines: list[bridge.ChargeLine], event_ids: dict[tuple[str, int], int],
        now: float,
    ) -> int:
        """Credit the returns that the same device recorded *after* one of these new charges' consumptions but
        that were stored before it (a device's batches can reach two gateway instances in either order).

        A ``return_unused`` of that kind was recorded as ``not_charged``: it becomes ``credited``. A cabinet
        ``returned``/``restocked`` got no row then; it gets one now. One read per batch (never per line or
        device): for each device, its events with a later seq but a smaller store id. Returns how many
        credits were queued.
        """
        by_device: dict[str, list[bridge.ChargeLine]] = {}
        for line in lines:
            by_device.setdefault(line.device, []).append(line)
        credited = 0
        ranges = [(device, min(line.seq for line in mine), max(event_ids[(device, line.seq)] for line in mine))
                  for device, mine in by_device.items()]
        later_by_device = db.later_events(ranges, kinds=(EventKind.RETURN_UNUSED.value, *CABINET_RETURN_KINDS))
        for device, later in later_by_device.items():
            for line in by_device[device]:
                key, line_id = item_key(line), event_ids[(device, line.seq)]
                charge = StandingCharge(line.charge_id, "pending", json.dumps(_line_record(line), ensure_ascii=False))
                for ev_id, seq, kind, body_text in later:
                    if seq <= line.seq or ev_id >= line_id:
                        continue
                    body = json.loads(body_text)
                    if kind != EventKind.RETURN_UNUSED.value and (
                            _text(body.get("gtin")), _text(body.get("serial"))) != (line.gtin, line.serial):
                        continue
                    settled = db.settled_return(device, seq)
                    if kind == EventKind.RETURN_UNUSED.value:
                        if settled is None or settled[0] != key or settled[1] != ReturnOutcome.NOT_CHARGED.value:
                            continue
                        db.delete_return(device, seq)
                        log.info("return device %s seq %d matched to charge %s stored after it", device, seq,
                                 line.charge_id)
                        credited += self._settle_return(db, db.event_at(device, int(seq)), key, str(settled[2]),
                                                        bool(settled[3]), str(settled[4]), str(settled[5]), charge,
                                                        now)
                        break
                    if settled is not None:
                        continue
                    credited += self._settle_return(db, db.event_at(device, int(seq)), key,
                                                    f"put back into cabinet {device} ({kind})", True,
                                                    _text(body.get("user")), _text(body.get("dept")), charge, now)
                    break
        return credited

    def _queue_credit(
        self, db: ChargingBatch, ev: Event, charge_id: str, line: dict[str, Any], operator: str, dept: str,
        now: float,
    ) -> str:
        """Render the credit for a charge and put it in the outbox behind it (same patient); its credit id."""
        item = self._catalog.get(str(line["gtin"]))
        request = bridge.CreditRequest(
            device=ev.device, seq=ev.seq, ts_ms=ev.ts_ms, operator=operator, dept=dept,
            original_charge_id=charge_id, admission=str(line["admission"]), gtin=str(line["gtin"]),
            lot=str(line["lot"]), serial=str(line["serial"]), expiry=str(line["expiry"]),
            item_code=str(line["item_code"]), charge_code=str(line["charge_code"]), name=str(line["name"]),
            spec=item.spec if item is not None else "", manufacturer=item.manufacturer if item is not None else "",
            price_fen=int(line["price_fen"]),
        )
        message = bridge.render_credit(request, self.config)
        credit_id = message.split("|", 10)[9]
        record = {**request._asdict(), "credit_id": credit_id}
        db.add_credit(credit_id, ev.device, ev.seq, request.admission, json.dumps(record, ensure_ascii=False), message,
                      now)
        log.info("credit %s queued for charge %s (device %s seq %d)", credit_id, charge_id, ev.device, ev.seq)
        return credit_id

    # ------------------------------------------------------------ thread

    def start(self) -> ChargingWorker:
        self._beat.watch()
        self._thread = threading.Thread(target=self._run, name="charging", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._beat.retire()

    def _run(self) -> None:
        leading = False
        while not self._stop.is_set():
            self._beat()
            if not self._may_run():
                leading = False
                self._stop.wait(0.5)
                continue
            if not leading:  # (re)gained the right to charge: in a new term another instance may have charged
                leading = True
                term = self._lease_term() if self._lease_term is not None else None
                if term is None or term != self._loaded_term:
                    self._consumed = bridge.new_consumed_set(self.store.charged_item_keys())
                    self._loaded_term = term
                self.reload_catalog()
            try:
                n = self.run_once()
            except Exception:  # the next run_once reloads the consumed set from the store
                log.exception("charging pass failed; retrying")
                n = 0
                self._stop.wait(1.0)
            if n < self.batch_size:
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()


class _ReturnRefused(Exception):
    """Internal signal: a return cannot be matched to a charge; the message is the detail."""


def _local_year(ts_ms: int, utc_offset_minutes: int) -> int:
    """The hospital-local year of a device timestamp (the reference for two-digit years in a UDI)."""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ts_ms + utc_offset_minutes * 60_000)).year


def item_key(line: bridge.ChargeLine) -> str:
    """One item, one code: ``gtin/serial``, the key the bridge keeps in its consumed set.

    An item without a serial (low-value chargeable) cannot be identified, so
    its key is the charge itself and never collides.
    """
    return f"{line.gtin}/{line.serial}" if line.serial else f"charge:{line.charge_id}"


def _event_tuple(ev: object) -> bridge.EventTuple:
    from spd_common.wire import Event

    assert isinstance(ev, Event)
    b = ev.body
    return (
        ev.device,
        ev.seq,
        ev.ts_ms,
        _text(b.get("admission")),
        _text(b.get("udi")),
        _text(b.get("operator")),
        _text(b.get("dept")),
    )


def _text(v: object) -> str:
    return v if isinstance(v, str) else ""


_LINE_FIELDS: dict[type, tuple[str, ...]] = {}


def _line_record(line: bridge.ChargeLine) -> dict[str, object]:
    """The charge line as a dict without its message (for the outbox ``line`` column).

    Every field is a str or an int, so a shallow copy is the line (``dataclasses.asdict`` deep-copies each
    value and was two thirds of the charging worker's time at group-commit rates); the field names are
    looked up once per line class.
    """
    names = _LINE_FIELDS.get(type(line))
    if names is None:
        names = tuple(f.name for f in fields(line)) if is_dataclass(line) else tuple(vars(line))
        names = _LINE_FIELDS.setdefault(type(line), tuple(n for n in names if n != "message"))
    return {n: getattr(line, n) for n in names}
