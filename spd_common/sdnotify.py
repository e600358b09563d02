"""A tiny systemd notify client (``READY=1``, ``WATCHDOG=1``, ``STATUS=``, ``STOPPING=1``) over ``$NOTIFY_SOCKET``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. The watchdog
pings only while every loop registered in its :class:`~spd_common.heartbeat.HeartbeatRegistry`
beats within its deadline and the health check passes, so a hung agent — a
deadlocked loop as much as a dead disk — is restarted by systemd
(``WatchdogSec=``) instead of being kept alive by a blind timer. When it stops
pinging it says why: an ERROR in the journal naming the silent loop, and
``STATUS=`` for ``systemctl status``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from spd_common.heartbeat import HeartbeatRegistry

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


CHECK_WITHOUT_SYSTEMD_S = 10.0  # without WatchdogSec= the heartbeats are still checked, to log a wedged loop


class Watchdog:
    """Pings ``WATCHDOG=1`` every half period while every heartbeat is on time and ``healthy()`` returns True.

    Without ``$WATCHDOG_USEC`` (no ``WatchdogSec=``) and with heartbeats, it
    still checks every :data:`CHECK_WITHOUT_SYSTEMD_S` and logs a silent loop.
    """

    def __init__(self, healthy: Callable[[], bool] | None = None, *, interval_s: float | None = None,
                 heartbeats: HeartbeatRegistry | None = None) -> None:
        self.healthy = healthy
        self.heartbeats = heartbeats
        interval = interval_s if interval_s is not None else watchdog_interval_s()
        if interval is None and heartbeats is not None:
            interval = CHECK_WITHOUT_SYSTEMD_S
        self.interval_s = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = threading.Condition()
        self.pings = 0
        self.checks = 0
        self.failing: str | None = None  # why the last check failed; None while healthy

    def start(self) -> Watchdog:
        if self.interval_s:
            self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
            self._thread.start()
        return self

    def check(self) -> str | None:
        """One verdict: None when healthy, else why not (the silent loops, or the failed health check)."""
        silent = self.heartbeats.silent() if self.heartbeats is not None else []
        if silent:
            return "; ".join(f"loop {s}" for s in silent)
        if self.healthy is None:
            return None
        try:
            ok = self.healthy()
        except Exception:
            log.exception("watchdog health check raised")
            ok = False
        return None if ok else "health check failed"

    def _run(self) -> None:
        assert self.interval_s
        while not self._stop.wait(self.interval_s):
            why = self.check()
            if why is None:
                notify("WATCHDOG=1")
                self.pings += 1
                if self.failing is not None:
                    log.warning("watchdog: healthy again (was: %s); pinging systemd", self.failing)
                    notify("STATUS=running")
            else:
                log.error("watchdog: %s: not pinging systemd, which restarts the service at WatchdogSec=", why)
                notify(f"STATUS=not pinging the watchdog: {why}")
            self.failing = why
            with self._checked:
                self.checks += 1
                self._checked.notify_all()

    def wait_checks(self, n: int, timeout_s: float) -> bool:
        """Wait until at least ``n`` checks have run (for tests and benches)."""
        with self._checked:
            return self._checked.wait_for(lambda: self.checks >= n, timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
