"""Serving the screen with uvicorn, over TLS with the site CA's certificate (``[web] cert_file``/``key_file``).

:class:`WebServer` runs in the foreground (``spd-gateway web``) or on a thread beside the gateway's services
(``spd-gateway run`` with ``[web] enabled = true``); either way one ASGI application over the gateway store.
"""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from gateway.books.settings import BooksSettings
from gateway.store import GatewayStore
from gateway.web.app import create_app
from gateway.web.context import Unlock, WebContext
from gateway.web.settings import WebConfig

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, store: GatewayStore, config: WebConfig, *, unlock: Unlock | None = None,
                 books: BooksSettings | None = None) -> None:
        self.config = config
        self.context = WebContext(store, config, unlock, books)
        self.app = create_app(self.context)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host=config.host, port=config.port, log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=str(config.cert_file) if config.cert_file else None,
            ssl_keyfile=str(config.key_file) if config.key_file else None,
            proxy_headers=False, server_header=False))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the system chose for port 0)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{'https' if self.config.tls else 'http'}://{host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> WebServer:
        """Serve on a thread; returns once listening (raises if it cannot)."""
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self._thread.start()
        waited = threading.Event()
        for _ in range(int(timeout_s / 0.05)):
            if self._server.started or not self._thread.is_alive():
                break
            waited.wait(0.05)
        if not self._server.started:
            raise RuntimeError(f"the web server did not start on {self.config.host}:{self.config.port}")
        log.info("web: serving the screen on %s", self.url)
        return self

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly (exit 0, as ``spd-gateway run`` does)."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
