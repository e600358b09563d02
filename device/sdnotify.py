"""A tiny systemd notify client (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``) over ``$NOTIFY_SOCKET``, no dependencies.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. The watchdog
pings only while a health check passes, so a hung agent is restarted by
systemd (``WatchdogSec=``) instead of being kept alive by a blind timer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not run by systemd or on error."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as err:
        log.warning("sd_notify %s failed: %s", state, err)
        return False


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` (systemd's advice), or None when no watchdog is configured for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


class Watchdog:
    """Pings ``WATCHDOG=1`` every half period while ``healthy()`` returns True."""

    def __init__(self, healthy: Callable[[], bool], *, interval_s: float | None = None) -> None:
        self.healthy = healthy
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0

    def start(self) -> Watchdog:
        if self.interval_s:
            self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.interval_s
        while not self._stop.wait(self.interval_s):
            try:
                ok = self.healthy()
            except Exception:
                log.exception("watchdog health check raised")
                ok = False
            if ok:
                notify("WATCHDOG=1")
                self.pings += 1
            else:
                log.error("health check failed: not petting the watchdog; systemd will restart the service")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
