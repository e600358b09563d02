"""``spd-device run`` for ``kind = "handheld"``: event log, scan policy, agent, remote commands, sync and the screen.

The same durable log and sync as a cabinet; the scan policy reads the catalog
cache the gateway pushes (one :class:`CatalogCache` shared with the remote
commands, so a push takes effect at the next scan). The screen runs on the
main thread; with no terminal it is headless and prints a line per verdict.
The ``handheld-housekeeping`` thread counts the backlog for the screen and
prunes acknowledged events now and then.

Every loop that must run beats in ``heartbeats`` (:mod:`device.heartbeat`),
which ``spd-device service`` ties to the systemd watchdog: ``handheld-loop``
(the agent), ``handheld-screen`` (the main thread), ``handheld-housekeeping``,
``sync-sender`` and ``sync-mqtt``. Each waits with a timeout, so a station
nobody scans at for hours keeps beating.
"""

from __future__ import annotations

import curses
import logging
import os
import sys
import threading
from pathlib import Path

from device.hal.pins import PinFactory
from device.remote_wiring import EffectiveConfig
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.logsetup import formatter
from spd_common.toml_config import ConfigError

log = logging.getLogger(__name__)

SCREEN_DEADLINE_S = 60.0  # a pass at least every second; a redraw on a slow console takes milliseconds
HOUSEKEEPING_DEADLINE_S = 120.0  # a pass every 0.5 s; a prune of a large log may take a while


def run_handheld(config_path: Path, effective: EffectiveConfig, *, stop: threading.Event | None = None,
                 pin_factory: PinFactory | None = None, screen: str | None = None,
                 heartbeats: HeartbeatRegistry | None = None) -> int:
    """Run until ``stop`` is set (or a signal arrives); ``screen`` forces ``console`` or ``headless``; the loops
    beat in ``heartbeats`` (see the module docstring)."""
    from device.handheld_runtime.agent import HandheldAgent
    from device.handheld_runtime.remote import HandheldRemote
    from device.handheld_runtime.screen import ConsoleScreen, Frame, HeadlessScreen, Link, choose_screen
    from device.remote_wiring import RESTART_EXIT_CODE, load_verifier, remote_parts
    from device.run_parts import device_sync, open_log_and_policy, stop_on_signals, wire_remote
    from device.sync import DeviceSync

    cfg = effective.config
    heartbeats = heartbeats or HeartbeatRegistry()
    hh = cfg.handheld
    if hh is None:
        raise ConfigError(cfg.source, "handheld", "a handheld needs a [handheld] section (docs/handheld.md)")
    verifier = load_verifier(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    mode = screen or choose_screen(hh.screen)
    if mode == "console":
        _log_beside_screen(cfg.data_dir / "handheld.log")
    eventlog, consumed, policy = open_log_and_policy(cfg)
    catalog = policy.cache
    sync: DeviceSync | None = None

    def committed(_ev: object) -> None:
        if sync is not None:
            sync.notify()

    agent = HandheldAgent(hh, eventlog=eventlog, policy=policy, pin_factory=pin_factory, on_committed=committed,
                          heartbeats=heartbeats)
    remote = None
    if verifier is not None:
        remote = HandheldRemote(agent=agent, **remote_parts(Path(config_path), cfg, verifier, eventlog=eventlog,
                                                            config_version=effective.config_version,
                                                            catalog=catalog))
    sync = device_sync(cfg, eventlog, remote, heartbeats=heartbeats)
    stop = stop or threading.Event()
    restart = threading.Event()
    if remote is not None:
        wire_remote(remote, sync, stop, restart)
    stop_on_signals(stop)

    backlog = [eventlog.backlog()]

    def frame() -> Frame:
        return Frame(cfg.device_id, hh.dept, agent.view, Link(sync.connected, backlog[0]), dict(agent.scanner_states))

    keeper_beat = heartbeats.heartbeat("handheld-housekeeping", deadline_s=HOUSEKEEPING_DEADLINE_S)
    screen_beat = heartbeats.heartbeat("handheld-screen", deadline_s=SCREEN_DEADLINE_S)

    def housekeeping() -> None:  # the backlog count and pruning, off the screen's and the loop's threads
        ticks = 0
        while not stop.wait(0.5):
            keeper_beat()
            try:
                backlog[0] = eventlog.backlog()
                ticks += 1
                if ticks % 120 == 0:
                    eventlog.prune()
            except Exception:
                log.exception("handheld housekeeping failed")

    agent.start()
    sync.start()
    keeper_beat.watch()
    screen_beat.watch()
    keeper = threading.Thread(target=housekeeping, name="handheld-housekeeping", daemon=True)
    keeper.start()
    log.warning("handheld %s running (dept %s, scanners %s, screen %s, remote commands %s)", cfg.device_id, hh.dept,
                ", ".join([*hh.scanner_ports, *hh.wedge_devices]) or "none", mode,
                "on" if remote is not None else "off")
    try:
        if mode == "console":
            try:
                ConsoleScreen(agent, frame, beat=screen_beat).run(stop)
            except curses.error as err:  # a terminal curses cannot drive: the station still works, headless
                log.error("handheld %s: console screen unavailable (%s); running headless", cfg.device_id, err)
                mode = "headless"
        if mode == "headless":
            HeadlessScreen(agent, frame, beat=screen_beat).run(stop)
    finally:
        stop.set()
        screen_beat.retire()
        keeper.join(timeout=5)
        keeper_beat.retire()
        sync.stop()
        agent.stop()
        if remote is not None:
            remote.close()
        consumed.close()
        eventlog.close()
    if restart.is_set():
        log.warning("handheld %s: exiting with %d so the service manager restarts it", cfg.device_id,
                    RESTART_EXIT_CODE)
        return RESTART_EXIT_CODE
    return 0


def _log_beside_screen(path: Path) -> None:
    """Log lines written to the terminal would tear the screen: when stderr is that terminal, log to a file."""
    try:
        same = os.path.samestat(os.fstat(sys.stderr.fileno()), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):
        return
    if not same:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(formatter())
    root.addHandler(file_handler)
