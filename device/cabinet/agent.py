"""The cabinet agent: wires the hardware, the session state machine, the event log and sync together.

Threads, and what each owns (nothing else touches what a thread owns):

* ``cabinet-loop`` — the :class:`~device.cabinet.session.Cabinet` state machine,
  the locks, LED and buzzer, the inventory snapshot file. Every input reaches
  it as a call posted to its queue; every call runs under ``logging.exception``.
* ``cabinet-reader`` — the :class:`~device.hal.rfid.RfidReader` and its serial
  port: runs stable counts when asked, polls the reader when idle, reopens it
  after an unplug; reports counts and online/offline changes to the loop.
* HAL timer threads (the pin factory's clock) — door-sensor debounce; they only post
  ``door opened/closed`` to the loop.
* scanner threads (:class:`device.hal.scanner.SerialScanner`, one per port) — read
  lines and post them to the loop.
* sync threads (:class:`device.sync.DeviceSync`: paho's network thread and the
  sender) — the MQTT connection; woken after every commit.

``cabinet-loop`` and ``cabinet-reader`` beat heartbeats of those names
(:mod:`spd_common.heartbeat`); a count declares its own, longer deadline.

The event log is thread-safe; the loop is the only writer of cabinet events,
the handheld pairing path (also on the loop) writes ``consume`` events.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from device.cabinet.allowlist import AllowList
from device.cabinet.catalog import ItemCatalog, ItemKey
from device.cabinet.config import CabinetConfig
from device.cabinet.inventory import InventoryPolicy, count_stable
from device.cabinet.session import Cabinet, PendingLink, Recordable, SessionState, Signal, Timings
from device.eventlog import EventLog, LogWriteFailed
from device.hal.door import DoorSensor
from device.hal.indicator import BeepPattern, Buzzer, Indicator
from device.hal.lock import Lock
from device.hal.pins import PinFactory, load_pin_factory
from device.hal.rfid.r2000 import Session
from device.hal.rfid.reader import ReaderDisconnected, ReaderError, RfidReader
from device.handheld import Handheld
from device.scan_policy import ScanPolicy
from device.udi import Udi, parse_udi
from device.udi.wristband import WristbandFormat, parse_wristband
from spd_common.durable import fsync_dir, write_atomic
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.wire import Event, EventKind

log = logging.getLogger(__name__)

_AIM_PREFIX = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
WRISTBAND_HOLD_S = 120.0  # a wristband scan pairs with an item scanned within this time
_TICK_S = 0.05
POLL_ATTEMPTS = 3  # failed idle polls (or counts) in a row before the reader is reported offline
POLL_RETRY_S = 0.1
LOOP_DEADLINE_S = 30.0  # the loop ticks every 50 ms; a handler's event-log write (fsync) may take seconds


def link_deadline(taken_ms: int, within_s: float, *, wall: float, mono: float) -> float:
    """The monotonic deadline of a taken item's not-linked alarm, rebuilt after a restart from its wall-clock time.

    Only the wall clock spans a restart, and it may have stepped meanwhile
    (NTP after a flat RTC battery): the time left is clamped to ``[0,
    within_s]``, so a clock set back cannot postpone the alarm beyond a full
    period from now, and one set forward fires it at once rather than never.
    """
    left = taken_ms / 1000 + within_s - wall
    return mono + min(max(left, 0.0), within_s)


class CabinetAgent:
    """One cabinet controller. ``start()`` brings it up, ``stop()`` drains the loop and releases the hardware."""

    def __init__(
        self,
        config: CabinetConfig,
        *,
        eventlog: EventLog,
        data_dir: Path,
        pin_factory: PinFactory | None = None,
        on_committed: Callable[[Event], None] | None = None,
        wristband_format: WristbandFormat | None = None,
        scan_policy: ScanPolicy | None = None,
        heartbeats: HeartbeatRegistry | None = None,
    ) -> None:
        self.config = config
        self.scan_policy = scan_policy
        self.log = eventlog
        self.data_dir = Path(data_dir)
        if not self.data_dir.exists():
            self.data_dir.mkdir(parents=True)
            fsync_dir(self.data_dir.parent)
        self.snapshot_path = self.data_dir / "inventory.json"
        self.on_committed = on_committed
        self.wristband_format = wristband_format or WristbandFormat.default()
        self.factory = pin_factory if pin_factory is not None else load_pin_factory(config.pin_factory)
        rc = config.reader
        self.policy = InventoryPolicy(miss_rate=rc.miss_rate, phantom_target=rc.phantom_target,
                                      max_rounds=rc.max_rounds, flag_quiet_s=rc.flag_quiet_s,
                                      session=None if rc.session == "none" else Session[rc.session])
        self.locks: dict[str, Lock] = {}
        self.sensors: dict[str, DoorSensor] = {}
        for d in config.doors:
            self.locks[d.name] = Lock(d.lock_pin, active_high=d.lock_active_high, fail_secure=d.fail_secure,
                                      max_energised_s=d.max_energised_s, pin_factory=self.factory,
                                      name=f"{d.name}-lock")
            sensor = DoorSensor(d.door_pin, open_level=d.door_open_level, pull=d.door_pull,
                                debounce_s=d.debounce_s, pin_factory=self.factory, name=d.name)
            sensor.when_opened = self._door_callback(d.name, opened=True)
            sensor.when_closed = self._door_callback(d.name, opened=False)
            self.sensors[d.name] = sensor
        self.buzzer = Buzzer(config.buzzer_pin, pin_factory=self.factory) if config.buzzer_pin is not None else None
        self.led = Indicator(config.led_pin, pin_factory=self.factory) if config.led_pin is not None else None
        rc = config.reader
        self.reader = RfidReader(rc.url, address=rc.address, antennas=rc.antennas, baudrate=rc.baudrate,
                                 timeout_s=rc.timeout_s)
        self.allowlist = AllowList(config.allowlist_file)
        self.catalog = ItemCatalog.load(config.catalog_file, config.items_file)
        inventory, self._snapshot_seq = self._load_inventory()
        if not self.snapshot_path.exists() and self.log.last_seq > 0:
            log.warning("no inventory snapshot but the event log holds %d events: the first count is a new baseline, "
                        "and changes made while the controller was down are not recorded", self.log.last_seq)
        self.cabinet = Cabinet(
            _Ports(self), allowlist=self.allowlist, catalog=self.catalog, dept=config.dept,
            doors=[d.name for d in config.doors], inventory=inventory,
            timings=Timings(unlock_s=config.unlock_s, pin_timeout_s=config.pin_timeout_s,
                            ajar_limits_s={d.name: d.ajar_limit_s for d in config.doors},
                            ajar_repeat_s=config.alarms.ajar_repeat_s, link_within_s=config.alarms.link_within_s,
                            expiry_check_s=config.alarms.expiry_check_s,
                            count_snapshot_s=config.count_snapshot_s),
        )
        self._inbox: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.Queue()
        self._count_jobs: queue.Queue[tuple[dict[str, frozenset[int]], int] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._wristband: tuple[str, float] | None = None
        self._last_user: str | None = None
        self._scanners: list[Any] = []
        self._threads: list[threading.Thread] = []
        self.counts: list[tuple[float, float]] = []  # (door closed monotonic, count committed monotonic)
        self._closed_at = 0.0
        hb = heartbeats or HeartbeatRegistry()
        rc = config.reader
        self._loop_beat = hb.heartbeat("cabinet-loop", deadline_s=LOOP_DEADLINE_S)
        # idle: a poll every poll_s, each up to POLL_ATTEMPTS answers; a count declares its own deadline
        self._reader_beat = hb.heartbeat(
            "cabinet-reader", deadline_s=max(60.0, 2 * rc.poll_s + 3 * POLL_ATTEMPTS * rc.timeout_s))
        self.count_deadline_s = 60.0 + 3 * rc.max_rounds * max(1, len(rc.antennas)) * rc.timeout_s

    # ------------------------------------------------------------ lifecycle

    def start(self) -> CabinetAgent:
        self._rebuild_pending_links()
        baseline = not self.snapshot_path.exists()
        self._loop_beat.watch()
        self._reader_beat.watch()
        self._threads = [
            threading.Thread(target=self._loop, name="cabinet-loop", daemon=True),
            threading.Thread(target=self._reader_worker, args=(baseline,), name="cabinet-reader", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._start_scanners()
        if not baseline:
            self.post(self.cabinet.start_unattributed_count)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._count_jobs.put(None)
        for s in self._scanners:
            s.stop()
        for t in self._threads:
            t.join(timeout=10)
        self._loop_beat.retire()
        self._reader_beat.retire()
        self._record_before_stop()
        for lock in self.locks.values():
            lock.close()
        for sensor in self.sensors.values():
            sensor.close()
        for out in (self.buzzer, self.led):
            if out is not None:
                out.close()
        self.reader.close()

    def _record_before_stop(self) -> None:
        """A last try at the events the log could not take; they live in memory only."""
        if self.cabinet.unrecorded == 0 or any(t.is_alive() for t in self._threads if t.name == "cabinet-loop"):
            return
        try:
            self.cabinet.record_unrecorded()
        except Exception:
            log.exception("recording held cabinet events at stop failed")
        if self.cabinet.unrecorded:
            log.error("stopping with %d cabinet events the event log could not take: they are lost "
                      "(the next start-up count records item changes unattributed)", self.cabinet.unrecorded)

    # ------------------------------------------------------------ inputs (any thread)

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread."""
        self._inbox.put((fn, args))

    def present_badge(self, badge: str) -> None:
        self.post(lambda: self.cabinet.on_badge(badge, time.monotonic()))

    def enter_pin(self, pin: str) -> None:
        self.post(lambda: self.cabinet.on_pin(pin, time.monotonic()))

    def scan_text(self, text: str) -> None:
        """A line from a barcode scanner or badge reader: badge, wristband or item, told apart here."""
        self.post(self._on_scan, text)

    @property
    def state(self) -> SessionState:
        return self.cabinet.state

    def wait_state(self, state: SessionState, timeout_s: float) -> bool:
        """Wait until the loop has processed everything posted and the cabinet is in ``state``."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while True:
                if self._inbox.unfinished_tasks == 0 and self.cabinet.state is state:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))

    def pending_links(self) -> dict[ItemKey, PendingLink]:
        return dict(self.cabinet.pending_links)

    # ------------------------------------------------------------ the loop thread

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._loop_beat()
            try:
                fn, args = self._inbox.get(timeout=_TICK_S)
            except queue.Empty:
                fn = None
            if fn is not None:
                try:
                    fn(*args)
                except Exception:
                    log.exception("cabinet loop: handler failed")
                finally:
                    self._inbox.task_done()
            try:
                self.cabinet.tick(time.monotonic())
            except Exception:
                log.exception("cabinet loop: tick failed")
            with self._idle:
                self._idle.notify_all()

    def _door_callback(self, door: str, *, opened: bool) -> Callable[[], None]:
        def handler() -> None:
            now = time.monotonic()
            if opened:
                self.post(self.cabinet.on_door_opened, door, now)
            else:
                self._closed_at = now
                self.post(self.cabinet.on_door_closed, door, now)
        return handler

    def _on_scan(self, text: str) -> None:
        now = time.monotonic()
        cab = self.cabinet
        stripped = _AIM_PREFIX.sub("", text.strip())  # a badge printed as a barcode arrives with "]C0" etc.
        if cab.state is SessionState.AWAIT_PIN and stripped.isdigit() and len(stripped) <= 12:
            cab.on_pin(stripped, now)
            return
        if self.allowlist.lookup(stripped) is not None:
            cab.on_badge(stripped, now)
            return
        try:
            parse_wristband(text, self.wristband_format)
        except ValueError:
            pass
        else:
            self._wristband = (text, now)
            self._signal(Signal.ASK_PIN)  # short blinks: waiting for the item
            return
        try:
            udi = parse_udi(text)
        except ValueError as err:
            if cab.state is SessionState.IDLE and _looks_like_badge(stripped):
                cab.on_badge(stripped, now)  # an unknown badge: refused and recorded
                return
            log.info("scan not understood: %s", getattr(err, "reason", "unreadable"))
            self._signal(Signal.REFUSED)
            return
        if isinstance(udi, Udi):
            self.catalog.learn(udi)
        band = self._wristband
        if band is None or now - band[1] > WRISTBAND_HOLD_S:
            log.info("item scanned without a wristband: learned, not consumed")
            self._signal(Signal.DONE)
            return
        self._wristband = None
        if not cab.record_unrecorded():  # the scan may link a taken item only once that item's events are recorded
            log.warning("wristband + item scan refused: the event log cannot be written")
            self._signal(Signal.REFUSED)
            return
        operator = cab.session.user if cab.session and cab.session.user else self._last_user or self.log.device
        outcome = Handheld(self.log, operator=operator, dept=self.config.dept, wristband_format=self.wristband_format,
                           on_committed=self._committed, policy=self.scan_policy).scan_pair(band[0], text)
        if outcome.accepted and udi.gtin is not None and udi.serial is not None:
            cab.on_consumed((udi.gtin, udi.serial))
        self._signal(Signal.DONE if outcome.accepted else Signal.REFUSED)

    # ------------------------------------------------------------ the reader thread

    def _reader_worker(self, baseline: bool) -> None:
        rc = self.config.reader
        online: bool | None = None

        def report(now_online: bool, detail: str) -> None:
            nonlocal online
            if now_online != online:
                online = now_online
                self.post(self.cabinet.on_reader_state, now_online, detail, time.monotonic())

        if baseline:
            try:
                with self._reader_beat.blocking(self.count_deadline_s):
                    result = count_stable(self.reader, {}, self.policy)
                report(True, "")
                self.post(self._set_baseline, result.present)
            except ReaderError as err:
                report(False, err.message)
        while not self._stopping.is_set():
            self._reader_beat()
            try:
                job = self._count_jobs.get(timeout=rc.poll_s)
            except queue.Empty:
                job = None
                why_offline = self._poll_reader()
                report(why_offline is None, why_offline or "")
                continue
            if job is None:
                return
            previous, count_id = job
            failures = 0  # counts in a row the reader failed (an answer lost even after the reader's resend)
            while not self._stopping.is_set():
                try:
                    with self._reader_beat.blocking(self.count_deadline_s):
                        result = count_stable(self.reader, previous, self.policy)
                except ReaderError as err:
                    failures += 1
                    if not isinstance(err, ReaderDisconnected):
                        self.reader.close()
                        if failures < POLL_ATTEMPTS:  # one garbled answer: count again at once, no alarm
                            self._stopping.wait(POLL_RETRY_S)
                            continue
                    report(False, err.message)
                    self._stopping.wait(rc.offline_retry_s)
                    continue
                report(True, "")
                self.post(self._count_done, result, count_id)
                break

    def _poll_reader(self) -> str | None:
        """Ask the idle reader for its firmware version: None if it answers, else why it is offline.

        One lost or garbled answer on a noisy serial line is not an offline
        reader: the poll is retried twice at once (a vanished port is final).
        A reader is reported offline only when three polls in a row fail.
        """
        message = ""
        for attempt in range(POLL_ATTEMPTS):
            try:
                self.reader.firmware_version()
                return None
            except ReaderDisconnected as err:
                return err.message
            except ReaderError as err:
                message = err.message
                if attempt + 1 < POLL_ATTEMPTS and self._stopping.wait(POLL_RETRY_S):
                    break
        return message

    def _count_done(self, result: Any, count_id: int) -> None:
        self.cabinet.on_count_done(result, count_id, time.monotonic())

    def _set_baseline(self, present: Mapping[str, frozenset[int]]) -> None:
        self.cabinet.inventory = dict(present)
        self._save_inventory(self.cabinet.inventory, self.log.last_seq)
        log.info("baseline inventory: %d tags", len(present))
        self.cabinet.record_snapshot(time.monotonic())

    # ------------------------------------------------------------ ports used by the state machine (loop thread)

    def _record_many(self, events: Sequence[Recordable], ts_ms: int) -> list[Event]:
        evs = self.log.append_many([(kind.value, body) for kind, body in events], ts_ms=ts_ms)
        for ev in evs:
            self._committed(ev)
        return evs

    def _committed(self, ev: Event) -> None:
        if self.on_committed is not None:
            try:
                self.on_committed(ev)
            except Exception:
                log.exception("on_committed callback failed")

    def _unlock(self, seconds: float) -> float:
        granted = min(lock.unlock(seconds) for lock in self.locks.values())
        if self.cabinet.session is not None and self.cabinet.session.user:
            self._last_user = self.cabinet.session.user
        return granted

    def _lock(self, door: str | None) -> None:
        for name, lock in self.locks.items():
            if door is None or name == door:
                lock.lock()

    def _signal(self, signal: Signal) -> None:
        led, buzzer = self.led, self.buzzer
        if led is not None:
            if signal in (Signal.GRANTED,):
                led.on()
            elif signal in (Signal.ASK_PIN, Signal.COUNTING):
                led.blink(on_s=0.1, off_s=0.1)
            elif signal in (Signal.DONE, Signal.REFUSED):
                led.off()
        if buzzer is not None:
            pattern = {Signal.GRANTED: BeepPattern.OK, Signal.DONE: BeepPattern.OK, Signal.REFUSED: BeepPattern.ERROR,
                       Signal.ALARM: BeepPattern.ALARM, Signal.AJAR: BeepPattern.DOOR_OPEN_TOO_LONG}.get(signal)
            if pattern is not None:
                buzzer.beep(pattern)

    def _start_count(self, previous: Mapping[str, frozenset[int]], count_id: int) -> None:
        self._count_jobs.put((dict(previous), count_id))

    # ------------------------------------------------------------ persistence

    def _load_inventory(self) -> tuple[dict[str, frozenset[int]], int]:
        """The snapshot, brought up to date with the item events logged after it."""
        if not self.snapshot_path.exists():
            return {}, 0
        doc = json.loads(self.snapshot_path.read_text(encoding="utf-8"))
        tags = {epc: frozenset(ants) for epc, ants in doc["tags"].items()}
        seq = int(doc["seq"])
        for ev in self._events_after(seq):
            epc = ev.body.get("epc")
            if not isinstance(epc, str):
                continue
            if ev.kind == EventKind.TAKEN:
                tags.pop(epc, None)
            elif ev.kind in (EventKind.RETURNED, EventKind.RESTOCKED):
                tags.setdefault(epc, frozenset())
        return tags, seq

    def _count_committed(self, inventory: Mapping[str, frozenset[int]], seq: int) -> None:
        """A count's events are committed: snapshot the inventory (the log replays anything after it)."""
        try:
            self._save_inventory(inventory, seq)
        except OSError as err:
            log.warning("inventory snapshot not saved (%s): the next start-up replays the log after seq %d",
                        err, self._snapshot_seq)
        self.counts.append((self._closed_at, time.monotonic()))

    def _save_inventory(self, inventory: Mapping[str, frozenset[int]], seq: int) -> None:
        seq = max(seq, self._snapshot_seq)
        doc = {"seq": seq, "tags": {e: sorted(a) for e, a in sorted(inventory.items())}}
        write_atomic(self.snapshot_path, json.dumps(doc).encode("utf-8"))
        self._snapshot_seq = seq

    def _events_after(self, seq: int) -> list[Event]:
        out: list[Event] = []
        start = seq + 1
        while True:
            page = self.log.events(from_seq=start, limit=1000)
            out.extend(page)
            if len(page) < 1000:
                return out
            start = page[-1].seq + 1

    def _rebuild_pending_links(self) -> None:
        """Taken items not yet linked (from the log), so the not-linked alarm survives a restart."""
        if self.config.alarms.link_within_s <= 0:
            return  # the cabinet's own check is off: the gateway decides
        mono, wall = time.monotonic(), time.time()
        pending: dict[ItemKey, PendingLink] = {}
        for ev in self._events_after(0):
            body = ev.body
            if ev.kind == EventKind.TAKEN and body.get("role") != "restocker" and "gtin" in body:
                deadline = link_deadline(ev.ts_ms, self.config.alarms.link_within_s, wall=wall, mono=mono)
                pending[(body["gtin"], body["serial"])] = PendingLink(deadline, str(body.get("session")),
                                                                     body.get("user"), str(body.get("epc")))
            elif ev.kind in (EventKind.RETURNED, EventKind.RESTOCKED) and "gtin" in body:
                pending.pop((body["gtin"], body["serial"]), None)
            elif ev.kind == EventKind.ALARM and body.get("alarm") == "not_linked":
                pending.pop((body.get("gtin"), body.get("serial")), None)  # type: ignore[arg-type]
            elif ev.kind == EventKind.CONSUME and isinstance(body.get("udi"), str):
                try:
                    u = parse_udi(body["udi"], today=dt.date.today())
                except ValueError:
                    continue
                if u.gtin is not None and u.serial is not None:
                    pending.pop((u.gtin, u.serial), None)
        self.cabinet.pending_links.update(pending)

    def _start_scanners(self) -> None:
        sc = self.config.scanners
        urls = [(u, True) for u in sc.ports] + ([(sc.badge_port, False)] if sc.badge_port else [])
        if not urls and not self.config.camera.enabled:
            return
        from device.hal.scanner import ScanLine, SerialScanner  # imported here: a scanner problem stays its own

        def on_scan(line: ScanLine) -> None:
            self.scan_text(line.text)

        if self.config.camera.enabled:
            self._start_camera(on_scan)

        for url, symbology_ids in urls:  # a badge reader sends bare card numbers, no symbology identifier
            scanner = SerialScanner(url, baudrate=sc.baudrate, symbology_ids=symbology_ids, on_scan=on_scan)
            scanner.start()
            self._scanners.append(scanner)


    def _start_camera(self, on_scan: Callable[[Any], None]) -> None:
        """The camera decodes the configured symbologies and feeds the same scan path as the line scanners."""
        from device.hal.camera import CameraScanner  # OpenCV and the decoders load only when a camera is used
        from device.hal.scanner import Symbology

        cam = self.config.camera
        source: int | str = int(cam.device) if cam.device.isdigit() else cam.device
        scanner = CameraScanner(
            source, decoder=cam.decoder, symbologies=[Symbology[n] for n in cam.symbologies],
            fps_limit=cam.fps_limit, on_scan=on_scan,
        )
        scanner.start()
        self._scanners.append(scanner)


def _looks_like_badge(text: str) -> bool:
    t = text.strip()
    return 4 <= len(t) <= 32 and t.isalnum() and not t.startswith("]")


class _Ports:
    """The state machine's view of the agent (loop thread only)."""

    def __init__(self, agent: CabinetAgent) -> None:
        self._a = agent

    def record(self, kind: EventKind, body: dict[str, Any]) -> Event:
        if not self._a.cabinet.record_unrecorded():  # never ahead of older cabinet events
            raise LogWriteFailed("event not recorded: older cabinet events still wait for the event log")
        ev = self._a.log.append(kind.value, body)
        self._a._committed(ev)
        return ev

    def record_many(self, events: Sequence[Recordable], *, ts_ms: int) -> list[Event]:
        return self._a._record_many(events, ts_ms)

    def unlock(self, seconds: float) -> float:
        return self._a._unlock(seconds)

    def lock(self, door: str | None = None) -> None:
        self._a._lock(door)

    def signal(self, signal: Signal) -> None:
        self._a._signal(signal)

    def start_count(self, previous: Mapping[str, frozenset[int]], count_id: int) -> None:
        self._a._start_count(previous, count_id)

    def save_inventory(self, inventory: Mapping[str, frozenset[int]], seq: int) -> None:
        self._a._count_committed(inventory, seq)
