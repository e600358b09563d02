"""Wake-ups between the processes of one gateway (:mod:`gateway.parts`): a datagram on a Unix socket.

In one process the ingest writer calls the charging worker's ``notify`` after each commit, and charging
calls the HIS lanes'. When those run in other processes, the call becomes a one-byte datagram to the
other part's inbox, an abstract Unix socket named after the store and the gateway's client id
(Linux: no file to create or clean up, gone with the process, even a SIGKILLed one). A lost datagram
costs only time: every loop still looks at the store on its own every fraction of a second.

Binding the name is exclusive, which is the other use of the inbox: a second process of the same part
of the same gateway on this host (two ``books`` parts would charge side by side) cannot start, and says
why. Anyone on the host may send to an inbox; a datagram only makes a loop look at the store earlier.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PartTaken(Exception):
    """Another process of this gateway already runs this part on this host."""


def inbox_name(store_location: str, client_id: str, part: str) -> str:
    """The abstract socket name of a part's inbox (a leading NUL: Linux's abstract namespace)."""
    digest = hashlib.sha256(f"{store_location}\0{client_id}".encode()).hexdigest()[:20]
    return f"\0spd-gateway/{digest}/{part}"


class WakeInbox:
    """Binds a part's inbox and calls ``on_wake`` once for each burst of datagrams that arrives."""

    def __init__(self, name: str, on_wake: Callable[[], None], *, part: str) -> None:
        self.name = name
        self._on_wake = on_wake
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(name)
        except OSError as err:
            self._sock.close()
            if err.errno == errno.EADDRINUSE:
                raise PartTaken(f"another process of this gateway already runs its {part!r} part on this host "
                                "(one process per part: two would do its work twice)") from None
            raise
        self._sock.settimeout(0.5)  # how often the thread looks at the stop flag
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WakeInbox:
        self._thread = threading.Thread(target=self._run, name="wake-inbox", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sock.recv(16)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self._drain()
            try:
                self._on_wake()
            except Exception:
                log.exception("wake-up handler failed")

    def _drain(self) -> None:
        """Take the datagrams already queued too: a burst of them is one wake-up."""
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(16)
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self._sock.settimeout(0.5)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._sock.close()


class Waker:
    """Sends wake-ups to another part's inbox; never blocks and never fails (that part may be down)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def poke(self) -> None:
        try:
            self._sock.sendto(b"!", self.name)
        except OSError:  # no such inbox (that part is not running) or its queue is full: it wakes on its own
            pass

    def close(self) -> None:
        self._sock.close()
