"""Receivers for the notification tests (a real SMTP server, a webhook endpoint) and a device's event feed.

Imported by module name (``from monitoring_helpers import ...``), like conftest's helpers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.notify_channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_valid
from hw_sim.broker import free_port
from spd_common.wire import GENESIS_HASH, Channel, Event, encode_batch, event_hash, topic


class _Collect:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.cond:
            self.messages.append(message_from_bytes(envelope.content))
            self.cond.notify_all()
        return "250 Message accepted for delivery"


def self_signed_tls(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = workdir / "mail.crt", workdir / "mail.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class SmtpSink:
    """An SMTP server (aiosmtpd) on a free loopback port that keeps every message it is handed.

    With ``tls`` (certificate, key) it offers STARTTLS and requires it, and with ``login`` (user, password)
    it requires that log-in, over TLS only; ``logins`` records the accepted ones."""

    def __init__(self, port: int | None = None, *, tls: tuple[Path, Path] | None = None,
                 login: tuple[str, str] | None = None) -> None:
        self.port = port or free_port()
        self._handler = _Collect()
        self.logins: list[str] = []
        kw: dict[str, Any] = {}
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            kw.update(tls_context=ctx, require_starttls=True)
        if login is not None:
            def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == login
                if ok:
                    self.logins.append(data.login.decode())
                return AuthResult(success=ok)

            kw.update(authenticator=authenticate, auth_required=True, auth_require_tls=True)
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port, **kw)

    @property
    def messages(self) -> list[Message]:
        with self._handler.cond:
            return list(self._handler.messages)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


@dataclass
class Received:
    headers: dict[str, str]  # names in lower case
    body: bytes
    signed: bool  # the signature holds for the shared secret

    @property
    def doc(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class WebhookReceiver:
    """An HTTP endpoint on a free loopback port; checks each POST's signature with ``secret``; answers ``status``."""

    secret: str
    status: int = 200
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve https
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = signature_valid(outer.secret, headers.get(TIMESTAMP_HEADER.lower(), ""), body,
                                     headers.get(SIGNATURE_HEADER.lower(), ""))
                outer.received.append(Received(headers, body, ok))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}/spd-incidents"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class DeviceFeed:
    """A device's hash-chained events as the wire carries them; :meth:`batch` gives (topic, payload)."""

    def __init__(self, device: str, site: str = "H1", *, ts_ms: int = 1_795_430_400_000) -> None:
        self.device, self.site = device, site
        self.seq = 0
        self.prev = GENESIS_HASH
        self.ts_ms = ts_ms

    def event(self, kind: str, body: dict[str, Any], *, prev: str | None = None) -> Event:
        self.seq += 1
        self.ts_ms += 1000
        link = self.prev if prev is None else prev
        digest = event_hash(self.device, self.seq, self.ts_ms, kind, body, link)
        self.prev = digest
        return Event(self.device, self.seq, self.ts_ms, kind, body, link, digest)

    def batch(self, *events: Event) -> tuple[str, bytes]:
        return topic(self.site, self.device, Channel.EVENTS), encode_batch(self.site, self.device, list(events))
