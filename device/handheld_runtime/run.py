"""``spd-device run`` for ``kind = "handheld"``: event log, scan policy, agent, remote commands, sync and the screen.

The same durable log and sync as a cabinet; the scan policy reads the catalog
cache the gateway pushes (one :class:`CatalogCache` shared with the remote
commands, so a push takes effect at the next scan). The screen runs on the
main thread; with no terminal it is headless and the main thread only waits
for SIGTERM / Ctrl-C, pruning acknowledged events now and then.
"""

from __future__ import annotations

import curses
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from device.hal.pins import PinFactory
from device.remote_wiring import EffectiveConfig
from spd_common.logsetup import formatter
from spd_common.toml_config import ConfigError

log = logging.getLogger(__name__)


def run_handheld(config_path: Path, effective: EffectiveConfig, *, stop: threading.Event | None = None,
                 pin_factory: PinFactory | None = None, screen: str | None = None) -> int:
    """Run until ``stop`` is set (or a signal arrives); ``screen`` forces ``console`` or ``headless``."""
    from device.catalog_cache import CatalogCache
    from device.eventlog import EventLog
    from device.handheld_runtime.agent import HandheldAgent
    from device.handheld_runtime.remote import HandheldRemote
    from device.handheld_runtime.screen import ConsoleScreen, Frame, HeadlessScreen, Link, choose_screen
    from device.remote_wiring import RESTART_EXIT_CODE, catalog_cache_path, load_verifier, remote_parts
    from device.scan_policy import ConsumedSerials, ScanPolicy
    from device.sync import DeviceSync

    cfg = effective.config
    hh = cfg.handheld
    if hh is None:
        raise ConfigError(cfg.source, "handheld", "a handheld needs a [handheld] section (docs/handheld.md)")
    verifier = load_verifier(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    mode = screen or choose_screen(hh.screen)
    if mode == "console":
        _log_beside_screen(cfg.data_dir / "handheld.log")
    eventlog = EventLog(cfg.log_path, device=cfg.device_id, retention_s=cfg.log.retention_days * 86400)
    consumed = ConsumedSerials(cfg.data_dir / "consumed.db")
    consumed.catch_up(eventlog)
    catalog = CatalogCache(catalog_cache_path(cfg))
    policy = ScanPolicy(catalog, consumed)
    sync: DeviceSync | None = None

    def committed(_ev: object) -> None:
        if sync is not None:
            sync.notify()

    agent = HandheldAgent(hh, eventlog=eventlog, policy=policy, pin_factory=pin_factory, on_committed=committed)
    remote = None
    if verifier is not None:
        remote = HandheldRemote(agent=agent, **remote_parts(Path(config_path), cfg, verifier, eventlog=eventlog,
                                                            config_version=effective.config_version,
                                                            catalog=catalog))
    tls = cfg.broker.tls
    sync = DeviceSync(
        eventlog, site=cfg.site, host=cfg.broker.host, port=cfg.broker.port, batch_size=cfg.sync.batch_size,
        window=cfg.sync.window, resend_after_s=cfg.sync.resend_after_s, state_every_s=cfg.sync.state_every_s,
        keepalive_s=cfg.broker.keepalive_s,
        tls=tls,
        on_command=remote.on_command if remote is not None else None,
        state_extra=remote.state_extra if remote is not None else None,
    )
    stop = stop or threading.Event()
    restart = threading.Event()
    if remote is not None:
        live_sync = sync

        def after_command() -> None:
            live_sync.notify()
            live_sync.publish_state()

        def restart_agent() -> None:  # new credentials: MQTT's TLS context must be rebuilt from the files
            restart.set()
            stop.set()

        remote.notify = after_command
        remote.restart = restart_agent
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    backlog = [eventlog.backlog()]

    def frame() -> Frame:
        return Frame(cfg.device_id, hh.dept, agent.view, Link(sync.connected, backlog[0]), dict(agent.scanner_states))

    def housekeeping() -> None:  # the backlog count and pruning, off the screen's and the loop's threads
        ticks = 0
        while not stop.wait(0.5):
            try:
                backlog[0] = eventlog.backlog()
                ticks += 1
                if ticks % 120 == 0:
                    eventlog.prune()
            except Exception:
                log.exception("handheld housekeeping failed")

    agent.start()
    sync.start()
    keeper = threading.Thread(target=housekeeping, name="handheld-housekeeping", daemon=True)
    keeper.start()
    log.warning("handheld %s running (dept %s, scanners %s, screen %s, remote commands %s)", cfg.device_id, hh.dept,
                ", ".join([*hh.scanner_ports, *hh.wedge_devices]) or "none", mode,
                "on" if remote is not None else "off")
    try:
        if mode == "console":
            try:
                ConsoleScreen(agent, frame).run(stop)
            except curses.error as err:  # a terminal curses cannot drive: the station still works, headless
                log.error("handheld %s: console screen unavailable (%s); running headless", cfg.device_id, err)
                mode = "headless"
        if mode == "headless":
            HeadlessScreen(agent, frame).run(stop)
    finally:
        stop.set()
        keeper.join(timeout=5)
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
