"""The charging worker: stored consumption events → bridge → durable HIS outbox.

It reads events after its cursor, runs them through the charging bridge in
batches, and in one transaction writes the charge lines to the outbox, the
refusals with their reasons, and the new cursor. A crash anywhere repeats the
batch, and every insert is keyed on the event identity, so nothing doubles.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from gateway import bridge
from gateway.store import GatewayStore

log = logging.getLogger(__name__)

CURSOR = "charging"


@dataclass(slots=True)
class ChargingStats:
    batches: int = 0
    lines: int = 0
    rejects: int = 0
    duplicate_items: int = 0


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
    ) -> None:
        self.store = store
        self.config = config
        self.batch_size = batch_size
        self.idle_wait_s = idle_wait_s
        self.stats = ChargingStats()
        self._on_charges = on_charges
        self._may_run = may_run
        self._catalog = load_catalog(store)
        self._consumed = bridge.new_consumed_set(store.charged_item_keys())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reload_catalog(self) -> None:
        self._catalog = load_catalog(self.store)

    def notify(self) -> None:
        self._wake.set()

    def run_once(self) -> int:
        """Process one batch; returns how many events it consumed from the cursor."""
        after = self.store.cursor(CURSOR)
        stored = self.store.consumption_events(after_id=after, limit=self.batch_size)
        if not stored:
            return 0
        tuples = [_event_tuple(s.event) for s in stored]
        consumed = self._consumed.copy()
        result = bridge.charge_batch(tuples, self._catalog, consumed, self.config)
        now = time.time()
        dup_items: list[bridge.ChargeLine] = []
        with self.store.transaction() as db:
            for line in result.lines:
                cur = db.execute(
                    "INSERT OR IGNORE INTO charges (charge_id, device, seq, admission, item_key, line, message, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        line.charge_id, line.device, line.seq, line.admission, item_key(line),
                        json.dumps(_line_record(line), ensure_ascii=False), line.message, now,
                    ),
                )
                if cur.rowcount == 0:
                    mine = db.execute(
                        "SELECT 1 FROM charges WHERE device = ? AND seq = ?", (line.device, line.seq)
                    ).fetchone()
                    if mine is None:  # the item key is already charged by another event
                        dup_items.append(line)
                        db.execute(
                            "INSERT OR IGNORE INTO charge_rejects (device, seq, reason, detail, at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (line.device, line.seq, "serial_already_consumed",
                             f"item {line.gtin}/{line.serial} is already charged", now),
                        )
            for rej in [*result.rejects, *result.uncharged]:
                db.execute(
                    "INSERT OR IGNORE INTO charge_rejects (device, seq, reason, detail, at) VALUES (?, ?, ?, ?, ?)",
                    (rej.device, rej.seq, str(rej.reason), rej.detail, now),
                )
            db.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (CURSOR, stored[-1].id),
            )
        self._consumed = consumed
        for line in dup_items:
            log.error("charge refused: item %s/%s already charged (device %s seq %d)",
                      line.gtin, line.serial, line.device, line.seq)
        for rej in result.rejects:
            log.warning("charge refused: device %s seq %d: %s (%s)", rej.device, rej.seq, rej.reason, rej.detail)
        if result.lines and self._on_charges is not None:
            self._on_charges(len(result.lines))
        self.stats.batches += 1
        self.stats.lines += len(result.lines) - len(dup_items)
        self.stats.rejects += len(result.rejects) + len(dup_items)
        self.stats.duplicate_items += len(dup_items)
        return len(stored)

    # ------------------------------------------------------------ thread

    def start(self) -> ChargingWorker:
        self._thread = threading.Thread(target=self._run, name="charging", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        leading = False
        while not self._stop.is_set():
            if not self._may_run():
                leading = False
                self._stop.wait(0.5)
                continue
            if not leading:  # (re)gained the right to charge: another instance may have charged meanwhile
                leading = True
                self._consumed = bridge.new_consumed_set(self.store.charged_item_keys())
                self.reload_catalog()
            try:
                n = self.run_once()
            except Exception:
                log.exception("charging pass failed; retrying")
                self._consumed = bridge.new_consumed_set(self.store.charged_item_keys())
                n = 0
                self._stop.wait(1.0)
            if n < self.batch_size:
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()


def item_key(line: bridge.ChargeLine) -> str:
    """One item, one code: ``gtin/serial``, the key the bridge keeps in its consumed set.

    An item without a serial (low-value chargeable) cannot be identified, so
    its key is the charge itself and never collides.
    """
    return f"{line.gtin}/{line.serial}" if line.serial else f"charge:{line.charge_id}"


def _event_tuple(ev: object) -> bridge.EventTuple:
    from device.wire import Event

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


def _line_record(line: bridge.ChargeLine) -> dict[str, object]:
    rec = asdict(line) if hasattr(line, "__dataclass_fields__") else dict(line.__dict__)
    rec.pop("message", None)
    return rec
