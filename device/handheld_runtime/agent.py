"""The handheld agent: scanners, buzzer and LED wired to the :class:`ScanStation`, one loop thread owning it.

Threads, and what each owns:

* ``handheld-loop`` — the :class:`~device.handheld_runtime.station.ScanStation`,
  the buzzer and the LED. Every input (scan, typed line, key, lockdown) reaches
  it as a call posted to its queue; it ticks the station's time-outs between
  inputs and publishes the new :class:`StationView` after each change. One
  plain loop with one queue; it beats the ``handheld-loop`` heartbeat
  (:mod:`device.heartbeat`) on every pass, at least every ``_TICK_S`` while no
  input comes, so an idle station (no scan for hours) keeps beating.
* scanner threads (:class:`~device.hal.scanner.SerialScanner` per serial port,
  :class:`~device.hal.scanner.WedgeScanner` per USB HID device) — read lines
  and post them to the loop. No heartbeat, as on a cabinet: a scanner
  unplugged or stuck is shown on the screen (SCANNER NOT CONNECTED), and a
  restart would not bring it back.
* the screen (console UI or headless) reads :attr:`HandheldAgent.view` and
  waits on :meth:`HandheldAgent.wait_changed`; it never touches the station.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from device.cabinet.allowlist import AllowList
from device.config import HandheldConfig
from device.eventlog import EventLog
from device.hal.indicator import BeepPattern, Buzzer, Indicator
from device.hal.pins import PinFactory, load_pin_factory
from device.handheld_runtime.station import Key, ScanStation, StationView, Tone, Verdict
from device.scan_policy import ScanPolicy
from device.udi.wristband import WristbandFormat
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.wire import Event

log = logging.getLogger(__name__)

_TICK_S = 0.1
LOOP_DEADLINE_S = 30.0  # a pass every 0.1 s; a handler's event-log write (fsync) may take seconds


class HandheldAgent:
    """One scanning station. ``start()`` brings it up; ``stop()`` stops the scanners, the loop and the pins."""

    def __init__(
        self,
        config: HandheldConfig,
        *,
        eventlog: EventLog,
        policy: ScanPolicy | None = None,
        pin_factory: PinFactory | None = None,
        on_committed: Callable[[Event], None] | None = None,
        key_sources: Mapping[str, Any] | None = None,
        heartbeats: HeartbeatRegistry | None = None,
    ) -> None:
        """``key_sources`` maps a ``wedge_devices`` path to a :class:`~device.hal.scanner.KeyEventSource` read
        instead of the device (a simulator's keyboard-wedge scanner); the loop beats ``handheld-loop`` in
        ``heartbeats`` (a private registry when nobody watches)."""
        self.config = config
        self._key_sources = dict(key_sources or {})
        self.log = eventlog
        self.allowlist = AllowList(config.allowlist_file)
        fmt = WristbandFormat.from_mapping(config.wristband) if config.wristband else None
        self.station = ScanStation(config, eventlog=eventlog, allowlist=self.allowlist, policy=policy,
                                   wristband_format=fmt, on_committed=on_committed)
        self.factory: PinFactory | None = None
        self.buzzer: Buzzer | None = None
        self.led: Indicator | None = None
        if config.buzzer_pin is not None or config.led_pin is not None:
            self.factory = pin_factory if pin_factory is not None else load_pin_factory(config.pin_factory)
            if config.buzzer_pin is not None:
                self.buzzer = Buzzer(config.buzzer_pin, pin_factory=self.factory)
            if config.led_pin is not None:
                self.led = Indicator(config.led_pin, pin_factory=self.factory)
        self.scanner_states: dict[str, str] = {}
        self._verdict_listeners: list[Callable[[Verdict], None]] = []
        self._inbox: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._generation = 0
        self._view = self.station.view
        self._scanners: list[Any] = []
        self._thread: threading.Thread | None = None
        self._next_allowlist_check = 0.0
        self._listeners: list[Callable[[], None]] = []
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat("handheld-loop", deadline_s=LOOP_DEADLINE_S)

    def add_verdict_listener(self, callback: Callable[[Verdict], None]) -> None:
        """Called on the loop thread with every verdict, after it is recorded and before the beep."""
        self._verdict_listeners.append(callback)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (on the loop or a scanner thread) after every change of the view or of a scanner's state."""
        self._listeners.append(callback)

    def _changed_now(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
        for callback in self._listeners:
            try:
                callback()
            except Exception:
                log.exception("view listener failed")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> HandheldAgent:
        self._beat.watch()
        self._thread = threading.Thread(target=self._loop, name="handheld-loop", daemon=True)
        self._thread.start()
        self._start_scanners()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for s in self._scanners:
            s.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._beat.retire()
        for out in (self.buzzer, self.led):
            if out is not None:
                out.close()

    # ------------------------------------------------------------ inputs (any thread)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        self._inbox.put((fn, args))

    def scan_text(self, text: str) -> None:
        self.post(lambda: self.station.on_scan(text, time.monotonic()))

    def console_line(self, text: str) -> None:
        self.post(lambda: self.station.on_console_line(text, time.monotonic()))

    def key(self, key: Key) -> None:
        self.post(lambda: self.station.on_key(key, time.monotonic()))

    def typed(self, text: str) -> None:
        """What the console has typed so far (shown on screen, PINs masked)."""
        self.post(lambda: self.station.set_typed(text))

    def set_lockdown(self, reason: str | None) -> None:
        self.post(lambda: self.station.set_lockdown(reason, time.monotonic()))

    # ------------------------------------------------------------ what the screen reads

    @property
    def view(self) -> StationView:
        return self._view

    @property
    def generation(self) -> int:
        return self._generation

    def wait_changed(self, generation: int, timeout_s: float) -> int:
        """Block until the view is newer than ``generation`` (or ``timeout_s``); returns the current generation."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != generation, timeout=timeout_s)
            return self._generation

    def wait_idle(self, timeout_s: float) -> bool:
        """Everything posted so far has been handled (tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while self._inbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return self._inbox.unfinished_tasks == 0

    # ------------------------------------------------------------ the loop thread

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._beat()
            try:
                fn, args = self._inbox.get(timeout=_TICK_S)
            except queue.Empty:
                fn = None
            verdict: Verdict | None = None
            if fn is not None:
                try:
                    verdict = fn(*args)
                except Exception:
                    log.exception("handheld loop: handler failed")
                finally:
                    self._inbox.task_done()
            now = time.monotonic()
            try:
                verdict = self.station.tick(now) or verdict
            except Exception:
                log.exception("handheld loop: tick failed")
            if now >= self._next_allowlist_check:  # a pushed allow-list, or one copied in by a technician
                self._next_allowlist_check = now + 5.0
                self.allowlist.reload_if_changed()
            if isinstance(verdict, Verdict):
                self._tell(verdict)
            self._publish()

    def _publish(self) -> None:
        view = self.station.view
        if view is self._view:
            return
        self._view = view
        self._changed_now()

    def _tell(self, verdict: Verdict) -> None:
        for callback in self._verdict_listeners:
            try:
                callback(verdict)
            except Exception:
                log.exception("verdict listener failed")
        if self.buzzer is not None:
            self.buzzer.beep({Tone.OK: BeepPattern.OK, Tone.REFUSED: BeepPattern.ERROR,
                              Tone.INFO: BeepPattern.OK}[verdict.tone])
        if self.led is not None:
            if verdict.tone is Tone.REFUSED:
                self.led.blink(on_s=0.1, off_s=0.1, times=5)
            else:
                self.led.blink(on_s=0.4, off_s=0.1, times=1)

    def _start_scanners(self) -> None:
        cfg = self.config
        if not cfg.scanner_ports and not cfg.wedge_devices:
            log.warning("handheld: no scanner configured ([handheld] scanner_ports / wedge_devices)")
            return
        from device.hal.scanner import ScanLine, ScannerState, ScanRejected, SerialScanner, WedgeScanner

        def on_scan(line: ScanLine) -> None:
            self.scan_text(line.text)

        def on_rejected(err: ScanRejected) -> None:
            why = str(err.reason)
            self.post(lambda: self.station.on_unreadable(why, time.monotonic()))

        def watch(name: str) -> Callable[[ScannerState], None]:
            def changed(state: ScannerState) -> None:
                self.scanner_states[name] = state.value
                self._changed_now()
            return changed

        ids = cfg.symbology_ids
        scanners: list[Any] = [SerialScanner(url, baudrate=cfg.scanner_baudrate, symbology_ids=ids, on_scan=on_scan)
                               for url in cfg.scanner_ports]
        scanners += [WedgeScanner(self._key_sources.get(path, path), symbology_ids=ids, on_scan=on_scan)
                     for path in cfg.wedge_devices]
        names = [*cfg.scanner_ports, *cfg.wedge_devices]
        for name, scanner in zip(names, scanners, strict=True):
            self.scanner_states[name] = "offline"
            scanner.when_state_changed = watch(name)
            scanner.when_rejected = on_rejected
            scanner.start()
            self._scanners.append(scanner)
