"""``spd-device service``: ``run`` under systemd, with READY/STOPPING notifications and a watchdog that pings
only while every loop of the agent beats (:mod:`spd_common.heartbeat`) and the event log answers."""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from device.config import load_config
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.logsetup import service_logging
from spd_common.sdnotify import Watchdog, notify
from spd_common.toml_config import ConfigError


def log_readable(path: Path) -> bool:
    """The event log answers a read within 2 s: the disk and SQLite are not stuck."""
    if not path.exists():
        return False
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    try:
        return db.execute("SELECT last_seq FROM head WHERE id = 1").fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        db.close()


def _service(a: argparse.Namespace) -> int:
    from device.commands.provision import register_sections
    from device.commands.run import run

    register_sections()
    try:
        cfg = load_config(a.config)
    except ConfigError as err:
        print(f"configuration error: {err}")
        return 2
    stopping = threading.Event()

    def announce_ready() -> None:
        while not stopping.is_set():
            if log_readable(cfg.log_path):
                notify("READY=1")
                return
            time.sleep(0.2)

    threading.Thread(target=announce_ready, name="sd-ready", daemon=True).start()
    # pings only while every loop of the agent beats on time and the event log answers
    heartbeats = HeartbeatRegistry()
    watchdog = Watchdog(lambda: log_readable(cfg.log_path), heartbeats=heartbeats).start()
    try:
        return run(a.config, heartbeats=heartbeats)
    except ConfigError as err:
        print(f"configuration error: {err}")
        return 2
    finally:
        stopping.set()
        notify("STOPPING=1")
        watchdog.stop()


def register(sub: Any) -> None:
    p = sub.add_parser("service", help="run the agent under systemd (Type=notify, WatchdogSec=)")
    p.add_argument("--config", type=Path, default=Path("/etc/spd-device/device.toml"),
                   help="the device configuration file (TOML)")
    p.set_defaults(func=_service)
    service_logging(p)
