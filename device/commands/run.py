"""``spd-device run``: run the device agent (cabinet or handheld) from a configuration file until SIGTERM or Ctrl-C.

A handheld (``kind = "handheld"``) runs :func:`device.handheld_runtime.run.run_handheld`.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import Any

from device.cabinet.config import cabinet_config
from device.hal.pins import PinFactory
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.logsetup import service_logging
from spd_common.toml_config import ConfigError

log = logging.getLogger(__name__)

MAIN_DEADLINE_S = 120.0  # a pass every second; a prune of a large log may take a while


def run(config_path: Path, *, stop: threading.Event | None = None, pin_factory: PinFactory | None = None,
        heartbeats: HeartbeatRegistry | None = None) -> int:
    """Start event log, device agent, remote commands and sync; block until ``stop`` is set (or a signal arrives).

    ``pin_factory`` overrides the configured GPIO backend (a bench or simulator passes its own bank of pins).
    Every loop that must run (``cabinet-loop``, ``cabinet-reader``, ``sync-mqtt``, ``sync-sender`` and
    this thread's ``device-main``; on a handheld ``handheld-loop``, ``handheld-screen``,
    ``handheld-housekeeping`` and the two sync loops) beats in ``heartbeats``, which ``spd-device service``
    ties to the watchdog.
    """
    from device.cabinet.agent import CabinetAgent
    from device.remote_wiring import build_remote, load_effective_config, load_verifier
    from device.run_parts import device_sync, open_log_and_policy, stop_on_signals, wire_remote

    effective = load_effective_config(config_path)
    cfg = effective.config
    if cfg.kind == "handheld":
        from device.handheld_runtime.run import run_handheld

        return run_handheld(config_path, effective, stop=stop, pin_factory=pin_factory, heartbeats=heartbeats)
    if cfg.kind != "cabinet":
        raise ConfigError(cfg.source, "device.kind", f"'run' drives a cabinet or a handheld, not a {cfg.kind}")
    cab = cabinet_config(cfg)
    heartbeats = heartbeats or HeartbeatRegistry()
    verifier = load_verifier(cfg)
    # validation at the scan: the catalog the gateway pushed, and the serials this cabinet already consumed
    eventlog, _, policy = open_log_and_policy(cfg)
    agent = CabinetAgent(cab, eventlog=eventlog, data_dir=cfg.data_dir, pin_factory=pin_factory,
                         on_committed=lambda ev: sync.notify(), scan_policy=policy, heartbeats=heartbeats)
    remote = None if verifier is None else build_remote(Path(config_path), cfg, verifier, agent=agent,
                                                        eventlog=eventlog, config_version=effective.config_version,
                                                        catalog=policy.cache)
    sync = device_sync(cfg, eventlog, remote, heartbeats=heartbeats)
    stop = stop or threading.Event()
    restart = threading.Event()
    if remote is not None:
        wire_remote(remote, sync, stop, restart)
    stop_on_signals(stop)
    main_beat = heartbeats.register("device-main", deadline_s=MAIN_DEADLINE_S)
    agent.start()
    sync.start()
    log.info("cabinet %s running (%s, reader %s, remote commands %s)", cfg.device_id, cab.pin_factory,
             cab.reader.url, "on" if remote is not None else "off")
    try:
        while not stop.wait(1.0):
            main_beat()
            eventlog.prune()
    finally:
        main_beat.retire()
        sync.stop()
        agent.stop()
        if remote is not None:
            remote.close()
        eventlog.close()
    if restart.is_set():
        from device.remote_wiring import RESTART_EXIT_CODE

        log.warning("cabinet %s: exiting with %d so the service manager restarts it", cfg.device_id,
                    RESTART_EXIT_CODE)
        return RESTART_EXIT_CODE
    return 0


def _main(a: argparse.Namespace) -> int:
    try:
        return run(a.config)
    except ConfigError as err:
        print(f"configuration error: {err}")
        return 2


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the device agent (cabinet or handheld, from device.kind)")
    p.add_argument("--config", type=Path, default=Path("/etc/spd-device/device.toml"),
                   help="the device configuration file (TOML)")
    p.set_defaults(func=_main)
    service_logging(p)
