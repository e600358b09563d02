"""Helpers for the watchdog tests: a fake systemd notify socket, a settable clock, a switchable wedge."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spd_common.heartbeat import HeartbeatRegistry
from spd_common.sdnotify import Watchdog


class FakeClock:
    """The heartbeats' clock: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class NotifySocket:
    """What systemd's ``$NOTIFY_SOCKET`` receives."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def drain(self) -> list[str]:
        """What was sent so far (reading for at most 0.2 s: a watchdog may never fall silent)."""
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            try:
                self.seen += self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                break
        return self.seen

    def wait_for(self, pred: Callable[[str], bool], timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        i = 0
        while time.monotonic() < deadline:
            self.drain()
            for msg in self.seen[i:]:
                if pred(msg):
                    return msg
            i = len(self.seen)
        raise AssertionError(f"no matching notification; saw {self.seen[-10:]}")

    def close(self) -> None:
        self.sock.close()


class Wedge:
    """Patched-in calls that hang while ``target`` names their loop, until released."""

    def __init__(self) -> None:
        self.target: str | None = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def hang_if(self, loop: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.target == loop:
                self.entered.set()
                self.release.wait(60)
            return original(*args, **kwargs)

        return call


def assert_pings_stop_naming(watchdog: Watchdog, heartbeats: HeartbeatRegistry, notify: NotifySocket,
                             clock: FakeClock, wedge: Wedge, loop: str) -> None:
    """With ``loop`` wedged (``wedge.entered``), move past every deadline: the other loops beat again, this one
    cannot; the pings stop and STATUS= names it."""
    notify.wait_for(lambda m: m == "WATCHDOG=1")  # healthy first
    assert wedge.entered.wait(20), f"{loop} was not wedged"
    clock.advance(10_000.0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and [s.name for s in heartbeats.silent()] != [loop]:
        time.sleep(0.02)
    assert [s.name for s in heartbeats.silent()] == [loop]
    status = notify.wait_for(lambda m: m.startswith("STATUS=") and f"loop {loop} silent" in m)
    assert "deadline" in status
    checks, pings = watchdog.checks, watchdog.pings
    assert watchdog.wait_checks(checks + 5, 10)
    assert watchdog.pings == pings, "pinged while a loop was wedged"
