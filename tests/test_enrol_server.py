"""The enrolment endpoint under hostile or broken clients: idle and slow connections, floods, malformed HTTP.

Hostile clients connect from other loopback addresses (127.0.1.x, 127.0.2.x),
as a port scanner or a stolen device on the ward network would; the device
being enrolled connects from 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.commands.provision import provision
from device.config import load_config
from gateway.commands import public_key_pem
from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
from gateway.enrol_http import ServerLimits
from gateway.pki import SiteCA


class Site:
    def __init__(self, d: Path, limits: ServerLimits | None = None) -> None:
        self.ca = SiteCA.create(d / "ca", site="H1")
        self.tokens = EnrolmentTokens(d / "ca" / "tokens.db")
        settings = EnrolmentSettings("127.0.0.1", 8883, public_key_pem(Ed25519PrivateKey.generate()))
        self.enrol = EnrolmentService(self.ca, self.tokens, settings, limits=limits).start()
        self.dir = d

    def client_ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.cert_pem.decode())

    def close(self) -> None:
        self.enrol.stop()
        self.tokens.close()
        self.ca.close()


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def make(limits: ServerLimits | None = None) -> Site:
        sites.append(Site(tmp_path / f"site{len(sites)}", limits))
        return sites[-1]

    yield make
    for s in sites:
        s.close()


def _tcp(site: Site, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((site.enrol.host, site.enrol.port))
    return sock


def _tls(site: Site, source: str = "127.0.0.1") -> ssl.SSLSocket:
    return site.client_ctx().wrap_socket(_tcp(site, source), server_hostname="127.0.0.1")


def exchange(site: Site, data: bytes, *, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send raw bytes over TLS, read the whole answer: ``(status, body)``."""
    with _tls(site, source) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _enrol_device(site: Site, device: str, tmp: Path, *, timeout_s: float = 10.0) -> float:
    token = site.tokens.issue(site="H1", device=device).text
    start = time.monotonic()
    provision(tmp / device / "device.toml", url=site.enrol.url, token=token, ca_fingerprint=site.ca.fingerprint,
              data_dir=tmp / device / "data", timeout_s=timeout_s)
    took = time.monotonic() - start
    assert load_config(tmp / device / "device.toml").device_id == device
    return took


class Trickle:
    """TLS connections that send a valid request one byte a second (slowloris)."""

    REQUEST = b"POST /v1/enrol HTTP/1.1\r\nHost: enrol\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"

    def __init__(self, socks: list[ssl.SSLSocket], every_s: float = 1.0) -> None:
        self.socks = socks
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            for s in self.socks:
                try:
                    s.send(self.REQUEST[i % len(self.REQUEST):][:1])
                except OSError:
                    pass
            i += 1
            self._stop.wait(self.every_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def test_a_device_enrols_in_under_5_s_while_50_idle_and_20_slow_connections_are_open(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    site = make_site()
    slow = Trickle([_tls(site, f"127.0.1.{i}") for i in range(1, 21)])
    idle = [_tcp(site, f"127.0.1.{i}") for i in range(21, 71)]  # never start TLS: a port scanner, a dead link
    try:
        wait_until(lambda: site.enrol.server.open_connections() == 70)
        took = _enrol_device(site, "CAB01", tmp_path, timeout_s=5.0)
        assert took < 5.0
        assert site.enrol.server.open_connections() == 70  # they were all still there
    finally:
        slow.close()
        for s in idle:
            s.close()


def _closed_by_server(sock: socket.socket) -> bool:
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_connections_from_one_address_are_bounded_and_others_still_enrol(
        make_site: Callable[..., Site], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = make_site(ServerLimits(per_client=4, handshake_s=60))
    caplog.set_level(logging.WARNING, logger="gateway.enrol_http")
    flood = [_tcp(site, "127.0.2.1") for _ in range(50)]
    try:
        wait_until(lambda: site.enrol.server.refused_connections == 46)
        wait_until(lambda: sum(_closed_by_server(s) for s in flood) == 46)
        assert site.enrol.server.open_connections() == 4
        _enrol_device(site, "CAB02", tmp_path, timeout_s=5.0)
        assert "refused connection from 127.0.2.1" in caplog.text
    finally:
        for s in flood:
            s.close()


def test_a_connection_that_never_finishes_its_tls_handshake_is_closed_at_the_deadline(
        make_site: Callable[..., Site]) -> None:
    site = make_site(ServerLimits(handshake_s=0.3))
    with _tcp(site, "127.0.1.1") as sock:
        sock.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
        wait_until(lambda: _closed_by_server(sock))
    wait_until(lambda: site.enrol.server.open_connections() == 0)


def test_a_request_trickling_in_gets_408_at_the_whole_request_deadline(make_site: Callable[..., Site]) -> None:
    site = make_site(ServerLimits(request_s=1.0))
    sock = _tls(site, "127.0.1.1")
    try:
        # one byte every 0.05 s (well within any per-read timeout) until the server answers; sending and
        # reading in one thread, as an SSL socket wants (one thread writing while another reads can lose both)
        deadline = time.monotonic() + 10
        for i in itertools.count():
            sock.send(Trickle.REQUEST[i % len(Trickle.REQUEST):][:1])
            if select.select([sock], [], [], 0.05)[0] or time.monotonic() > deadline:
                break
        sock.settimeout(10)
        answer = sock.recv(65536)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"request_timeout"' in answer
    assert site.enrol.server.timed_out == 1


_HEAD = b"POST /v1/enrol HTTP/1.1\r\nHost: enrol\r\n"
MALFORMED = [
    ("non-numeric Content-Length", _HEAD + b"Content-Length: abc\r\n\r\n{}", 400, "bad_request"),
    ("negative Content-Length", _HEAD + b"Content-Length: -5\r\n\r\n{}", 400, "bad_request"),
    ("two different Content-Lengths", _HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400,
     "bad_request"),
    ("zero Content-Length", _HEAD + b"Content-Length: 0\r\n\r\n", 400, "bad_length"),
    ("huge Content-Length", _HEAD + b"Content-Length: 99999999999999999999\r\n\r\n{}", 413, "bad_length"),
    ("no Content-Length", _HEAD + b"\r\n", 411, "length_required"),
    ("chunked body", _HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411, "length_required"),
    ("unknown method", b"DELETE /v1/ca HTTP/1.1\r\nHost: enrol\r\n\r\n", 405, "method_not_allowed"),
    ("garbage request line", b"\x00\xff hello\r\n\r\n", 400, "bad_request"),
    ("HTTP/2.0 request line", b"GET /v1/ca HTTP/2.0\r\nHost: enrol\r\n\r\n", 400, "bad_http_version"),
    ("header without colon", b"GET /v1/ca HTTP/1.1\r\nHost enrol\r\n\r\n", 400, "bad_request"),
    ("headers over 16 KiB", b"GET /v1/ca HTTP/1.1\r\nHost: e\r\nX: " + b"a" * 40000 + b"\r\n\r\n", 431,
     "bad_request"),
    ("body not JSON", _HEAD + b"Content-Length: 5\r\n\r\nhello", 400, "bad_json"),
    ("body JSON but not an object", _HEAD + b"Content-Length: 2\r\n\r\n[]", 400, "bad_json"),
    ("deeply nested JSON", _HEAD + b"Content-Length: 10000\r\n\r\n" + b"[" * 10000, 400, "bad_json"),
    ("token not a string", _HEAD + b'Content-Length: 25\r\n\r\n{"token": 1, "csr": "x"} ', 403, "bad_request"),
    ("unknown path", b"GET /admin HTTP/1.1\r\nHost: enrol\r\n\r\n", 404, "not_found"),
    ("renew without a client certificate", b"POST /v1/renew HTTP/1.1\r\nHost: e\r\nContent-Length: 12\r\n\r\n"
     b'{"csr": "x"}', 403, "no_client_certificate"),
]


def test_every_malformed_request_gets_a_clear_4xx_is_logged_and_the_server_keeps_serving(
        make_site: Callable[..., Site], caplog: pytest.LogCaptureFixture) -> None:
    site = make_site()
    caplog.set_level(logging.WARNING)
    for what, data, status, error in MALFORMED:
        caplog.clear()
        got, body = exchange(site, data)
        assert (got, json.loads(body)["error"]) == (status, error), what
        assert "127.0.0.1" in caplog.text, what  # logged with where it came from
        assert exchange(site, b"GET /v1/ca HTTP/1.1\r\nHost: enrol\r\n\r\n")[0] == 200, what
    assert site.enrol.server.open_connections() == 0


def test_a_non_numeric_content_length_gets_400_not_a_closed_connection(make_site: Callable[..., Site]) -> None:
    site = make_site()
    status, body = exchange(site, b"POST /v1/enrol HTTP/1.1\r\nHost: e\r\nContent-Length: twelve\r\n\r\n{}")
    assert status == 400
    assert "Content-Length" in json.loads(body)["detail"]


def test_a_client_that_resets_mid_request_is_logged_as_gone_not_as_a_server_error(
        make_site: Callable[..., Site], caplog: pytest.LogCaptureFixture) -> None:
    import struct

    site = make_site()
    caplog.set_level(logging.INFO, logger="gateway.enrol_http")
    sock = _tls(site, "127.0.1.1")
    sock.sendall(b"POST /v1/enrol HTTP/1.1\r\nHost: e\r\nContent-Length: 100\r\n\r\n{")
    wait_until(lambda: site.enrol.server.requests_begun == 1)  # the server is waiting for the rest of the body
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    sock.close()
    wait_until(lambda: site.enrol.server.open_connections() == 0)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "127.0.1.1 went away mid-request" in caplog.text
    assert exchange(site, b"GET /v1/ca HTTP/1.1\r\nHost: enrol\r\n\r\n")[0] == 200
