"""A fault-injecting TCP proxy on loopback: cut and restore the network between devices and the broker."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading

log = logging.getLogger(__name__)


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`cut` drops every connection and refuses new ones.

    ``cut(blackhole=True)`` instead keeps connections open but silently
    discards traffic both ways, like a dead link that TCP has not noticed yet.
    """

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(256)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._cut = False
        self._blackhole = False
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="fault-proxy", daemon=True)
        self.cuts = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def cut(self, *, blackhole: bool = False) -> None:
        with self._lock:
            self._cut = True
            self._blackhole = blackhole
            self.cuts += 1
            if not blackhole:
                for a in list(self._pairs):
                    self._drop(a)

    def restore(self) -> None:
        with self._lock:
            if self._blackhole:
                for a in list(self._pairs):
                    self._drop(a)  # the link comes back, but the stale connections are dead
            self._cut = False
            self._blackhole = False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for a in list(self._pairs):
                self._drop(a)
        self._listener.close()
        self._sel.close()

    def _drop(self, a: socket.socket) -> None:
        b = self._pairs.pop(a, None)
        if b is not None:
            self._pairs.pop(b, None)
        for s in (a, b):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._pump(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        with self._lock:
            if self._cut:
                client.close()
                return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pairs[client] = upstream
            self._pairs[upstream] = client
            self._sel.register(client, selectors.EVENT_READ, None)
            self._sel.register(upstream, selectors.EVENT_READ, None)

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        with self._lock:
            peer = self._pairs.get(sock)
            if peer is None:
                return
            if not data:
                self._drop(sock)
                return
            if self._blackhole:
                return
            try:
                peer.sendall(data)
            except OSError:
                self._drop(sock)
