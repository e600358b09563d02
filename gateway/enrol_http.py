"""The enrolment service's HTTPS front: one request per connection, every step under a deadline, bounded per client.

The endpoint faces whatever is on the hospital network while a site is
commissioned: port scanners, devices on bad Wi-Fi whose half-open
connections linger, and possibly a stolen device. So that none of them can
keep a device from enrolling:

* connections are accepted at once, and the TLS handshake of each runs on
  its own under ``handshake_s`` (never inside ``accept``), on an asyncio
  loop, so an idle connection costs a socket, not a thread or a turn;
* a whole request (TLS handshake, head and body) must arrive within
  ``request_s`` from the accept, however slowly its bytes trickle in
  (slowloris), and the answer must be taken within ``write_s``; a client
  that is past ``request_s`` but still connected is told ``408``;
* one source address holds at most ``per_client`` connections and all of
  them together at most ``total``; a connection over either bound is closed
  as soon as it is accepted (before any TLS work), and logged;
* HTTP is parsed by h11 (a small, widely used HTTP/1.1 state machine) rather
  than by hand: every malformed request gets a ``4xx`` with a JSON body
  ``{"error": CODE, "detail": TEXT}``, is logged with its source, and the
  server goes on serving. Only ``Content-Length`` bodies of at most
  ``max_body`` bytes are read (``411``/``413`` otherwise).

What a request means is the caller's :data:`Route`, run in a worker thread
(it signs certificates and writes SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Deadlines and connection bounds of the enrolment endpoint (defaults suit devices on poor Wi-Fi)."""

    handshake_s: float = 10.0  # TLS handshake, from the accept
    request_s: float = 30.0  # handshake + the whole request, from the accept
    write_s: float = 30.0  # sending the answer
    per_client: int = 8  # open connections from one source address
    total: int = 256  # open connections in all
    linger_s: float = 2.0  # after an early answer, input still arriving is read and dropped, this long at most
    max_head: int = 16 * 1024  # request line and headers
    max_body: int = 16 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes
    source: str
    peer_der: bytes | None  # the client certificate, when one was presented


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, doc: dict[str, Any]) -> Answer:
        return cls(status, json.dumps(doc).encode())

    @classmethod
    def error(cls, status: int, code: str, detail: str = "") -> Answer:
        return cls.json(status, {"error": code, "detail": detail})


LINGER_QUIET_S = 0.2

Route = Callable[[Request], Answer]
"""Turns a complete, well-framed request into its answer; runs in a worker thread."""

POST_METHODS = frozenset({"POST"})
KNOWN_METHODS = frozenset({"GET", "POST"})


class _Malformed(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.answer = Answer.error(status, code, detail)


class HardenedHttpsServer:
    """HTTPS on ``sock`` (already bound and listening), served by an asyncio loop in a daemon thread."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, route: Route, *,
                 limits: ServerLimits | None = None, name: str = "https") -> None:
        self._sock = sock
        self._ctx = ctx
        self._route = route
        self.limits = limits or ServerLimits()
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._open: dict[str, int] = {}
        self._open_total = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusal_logged: dict[str, float] = {}
        self.requests_begun = 0  # request heads read
        self.refused_connections = 0  # over a bound (per client or total)
        self.malformed_requests = 0
        self.timed_out = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._main(ready))
            except BaseException as err:  # reported to start() below
                failure.append(err)
                ready.set()
            finally:
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
                self._loop.close()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._thread is None:
            self._sock.close()
            self._loop.close()
            return
        stopping = self._stopping
        if stopping is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own
                self._loop.call_soon_threadsafe(stopping.set)
        self._thread.join(timeout=10)
        self._thread = None

    def open_connections(self) -> int:
        return self._open_total

    async def _main(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._accepted, sock=self._sock, limit=self.limits.max_head,
                                            backlog=self.limits.total)
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    # ------------------------------------------------------------ one connection

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        if self._open_total >= self.limits.total or self._open.get(source, 0) >= self.limits.per_client:
            self._refuse(source, writer)
            return
        self._open[source] = self._open.get(source, 0) + 1
        self._open_total += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer, source)
        except asyncio.CancelledError:
            pass
        except Exception:  # a fault of ours: logged, this connection ends, the server goes on
            log.exception("%s: unexpected error serving %s", self._name, source)
        finally:
            self._tasks.discard(task)
            self._open_total -= 1
            if self._open[source] <= 1:
                del self._open[source]
            else:
                self._open[source] -= 1
            await self._close(writer)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        """TLS close_notify and FIN when the client lets us, within a second; else just drop the connection."""
        if not writer.transport.is_closing() and writer.get_extra_info("ssl_object") is not None:
            writer.close()
            with contextlib.suppress(TimeoutError, OSError, ssl.SSLError, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
        writer.transport.abort()

    def _refuse(self, source: str, writer: asyncio.StreamWriter) -> None:
        self.refused_connections += 1
        writer.transport.abort()
        now = time.monotonic()
        if now - self._refusal_logged.get(source, -60.0) >= 60.0:  # one line a minute per source, not a flood
            if len(self._refusal_logged) >= 4096:  # many sources: forget those not heard of for a minute
                self._refusal_logged = {k: t for k, t in self._refusal_logged.items() if now - t < 60.0}
            self._refusal_logged[source] = now
            log.warning("%s: refused connection from %s: %d open from it (limit %d), %d in all (limit %d)",
                        self._name, source, self._open.get(source, 0), self.limits.per_client,
                        self._open_total, self.limits.total)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> None:
        limits = self.limits
        started = time.monotonic()
        try:
            async with asyncio.timeout(limits.handshake_s):
                await writer.start_tls(self._ctx, ssl_handshake_timeout=limits.handshake_s)
        except (TimeoutError, OSError, ssl.SSLError) as err:
            log.info("%s: TLS handshake with %s failed: %s", self._name, source, err or type(err).__name__)
            return
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        try:
            async with asyncio.timeout(limits.request_s - (time.monotonic() - started)):
                request = await self._read_request(conn, reader, writer, source)
        except TimeoutError:
            self.timed_out += 1
            log.warning("%s: %s did not send a whole request within %.0f s; closed", self._name, source,
                        limits.request_s)
            await self._send(conn, writer, Answer.error(408, "request_timeout",
                                                        f"the whole request must arrive within {limits.request_s} s"))
            await self._linger(reader)
            return
        except (OSError, ssl.SSLError) as err:  # reset, broken TLS record: nothing left to answer
            log.info("%s: %s went away mid-request: %s", self._name, source, err or type(err).__name__)
            return
        except _Malformed as bad:
            self.malformed_requests += 1
            log.warning("%s: malformed request from %s: %s", self._name, source, bad)
            await self._send(conn, writer, bad.answer)
            await self._linger(reader)
            return
        if request is None:  # the client went away before sending anything
            return
        answer = await asyncio.to_thread(self._answer, request)
        await self._send(conn, writer, answer)

    async def _linger(self, reader: asyncio.StreamReader) -> None:
        """Read and drop what the client still sends, briefly, before closing.

        Closing a socket with unread input makes the kernel send a reset, which
        can destroy the answer before the client has read it (a ``413`` to a
        client still sending its body would arrive as "connection reset").
        """
        deadline = time.monotonic() + self.limits.linger_s
        with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
            while time.monotonic() < deadline:  # until the client is quiet for a moment, or has closed
                async with asyncio.timeout(min(LINGER_QUIET_S, deadline - time.monotonic())):
                    if not await reader.read(65536):
                        return

    def _answer(self, request: Request) -> Answer:
        try:
            return self._route(request)
        except Exception:
            log.exception("%s: %s %s from %s failed", self._name, request.method, request.path, request.source)
            return Answer.error(500, "internal_error", "the enrolment service failed; see its log")

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, source: str) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as err:  # h11 hints 501 for a transfer coding it lacks: ours is a 4xx
                status = err.error_status_hint if 400 <= err.error_status_hint < 500 else 400
                raise _Malformed(status, "bad_request", str(err)) from None
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(4096))
            elif isinstance(event, h11.Request):
                head = event
                self.requests_begun += 1
                self._check_head(event)
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body:
                    raise _Malformed(413, "bad_length", f"a request body is at most {self.limits.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
                return Request(head.method.decode("ascii", "replace"), head.target.decode("ascii", "replace"),
                               bytes(body), source, der or None)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # pragma: no cover - h11 has no other events for a server
                raise _Malformed(400, "bad_request", f"unexpected {type(event).__name__}")

    def _check_head(self, head: h11.Request) -> None:
        method = head.method.decode("ascii", "replace")
        if head.http_version not in (b"1.0", b"1.1"):
            raise _Malformed(400, "bad_http_version", "only HTTP/1.0 and HTTP/1.1 are spoken here")
        if method not in KNOWN_METHODS:
            raise _Malformed(405, "method_not_allowed", f"{method[:20]!r} is not allowed; use GET or POST")
        if method not in POST_METHODS:
            return
        lengths = [v for k, v in head.headers if k == b"content-length"]
        if not lengths:
            raise _Malformed(411, "length_required", "a POST needs a Content-Length (chunked bodies are refused)")
        length = int(lengths[0])  # h11 has checked it is digits
        if not 0 < length <= self.limits.max_body:
            raise _Malformed(413 if length else 400, "bad_length",
                             f"Content-Length must be 1..{self.limits.max_body}, got {length}")

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, answer: Answer) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            reason = HTTPStatus(answer.status).phrase.encode()
        except ValueError:
            reason = b""
        headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body))),
                   ("Connection", "close"), ("Server", "spd-enrol")]
        try:
            data = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason))
            data += conn.send(h11.Data(data=answer.body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as err:  # e.g. a HEAD-less state h11 refuses: nothing sensible to send
            log.info("%s: no answer sent: %s", self._name, err)
            return
        try:
            async with asyncio.timeout(self.limits.write_s):
                writer.write(data or b"")
                await writer.drain()
        except (TimeoutError, OSError) as err:
            log.info("%s: the answer (%d) was not taken: %s", self._name, answer.status, err or "timeout")
