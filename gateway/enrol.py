"""Device enrolment: one-time tokens, and an HTTPS endpoint that turns a CSR into a certificate.

A technician gets a token (``{site}/{device}/{secret}``) and the site CA's
SHA-256 fingerprint from ``spd-gateway enrol-token``. On the device,
``spd-device provision`` fetches the CA certificate from ``GET /v1/ca``,
checks it against the pinned fingerprint, then opens a verified TLS
connection and ``POST /v1/enrol`` with the token and a CSR made from a key
generated on the device. A token works once, for the identity it was issued
for, until it expires; only its SHA-256 is stored.

A device rotating its credentials ``POST /v1/renew`` with a CSR for a new key,
over mutual TLS with its *current* certificate: the client certificate must be
a live device certificate of the site CA whose common name is the CSR's;
:meth:`SiteCA.renew` issues the new certificate and revokes the older ones as
superseded. The handshake asks for a client certificate but does not demand
one, so ``/v1/ca`` and ``/v1/enrol`` keep working for a device that has none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from device.wire import check_id
from gateway.pki import BadCsr, CertRole, PkiError, SiteCA, common_name, write_private_key

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024


class EnrolError(Exception):
    """Root of enrolment errors; ``reason`` is a stable code sent back to the device."""

    reason = "enrol_error"


class TokenRefused(EnrolError, PermissionError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EnrolmentToken:
    site: str
    device: str
    text: str  # what the technician types: site/device/secret
    expires_at: float


class EnrolmentTokens:
    """One-time tokens, stored hashed."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (token_sha256 TEXT PRIMARY KEY, site TEXT NOT NULL, "
            "device TEXT NOT NULL, expires_at REAL NOT NULL, used_at REAL, issued_by TEXT NOT NULL)")

    def issue(self, *, site: str, device: str, ttl_s: float = 86_400, issued_by: str = "") -> EnrolmentToken:
        check_id("site", site)
        check_id("device", device)
        secret = secrets.token_urlsafe(24)
        text = f"{site}/{device}/{secret}"
        expires = time.time() + ttl_s
        with self._lock:
            self._db.execute("INSERT INTO tokens (token_sha256, site, device, expires_at, issued_by) "
                             "VALUES (?, ?, ?, ?, ?)", (_sha(text), site, device, expires, issued_by))
        return EnrolmentToken(site, device, text, expires)

    def redeem(self, text: str) -> tuple[str, str]:
        """Mark the token used and return its ``(site, device)``, or raise :class:`TokenRefused`."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT site, device, expires_at, used_at FROM tokens WHERE token_sha256 = ?",
                                 (_sha(text),)).fetchone()
                if row is None:
                    raise TokenRefused("unknown_token", "this enrolment token was never issued")
                site, device, expires, used = row
                if used is not None:
                    raise TokenRefused("token_used", "this enrolment token was already used")
                if time.time() > expires:
                    raise TokenRefused("token_expired", "this enrolment token has expired")
                db.execute("UPDATE tokens SET used_at = ? WHERE token_sha256 = ?", (time.time(), _sha(text)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return str(site), str(device)

    def close(self) -> None:
        self._db.close()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_token(text: str) -> tuple[str, str, str]:
    """Split a token into ``(site, device, secret)``; raises :class:`TokenRefused` when malformed."""
    parts = text.strip().split("/")
    if len(parts) != 3 or not parts[2]:
        raise TokenRefused("bad_token", "an enrolment token looks like SITE/DEVICE/SECRET")
    check_id("site", parts[0])
    check_id("device", parts[1])
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class EnrolmentSettings:
    """What a newly enrolled device is told: where the broker is, and the key its commands are signed with."""

    broker_host: str
    broker_port: int
    command_key_pem: bytes
    cert_valid_days: int = 397


class EnrolmentService:
    """HTTPS on ``host:port`` (port 0 picks a free one), served from a daemon thread."""

    def __init__(self, ca: SiteCA, tokens: EnrolmentTokens, settings: EnrolmentSettings, *,
                 host: str = "127.0.0.1", port: int = 0, on_enrolled: Any = None) -> None:
        self.ca = ca
        self.tokens = tokens
        self.settings = settings
        self._ca_lock = threading.Lock()
        self._on_enrolled = on_enrolled
        key, cert = ca.issue_with_new_key("spd-enrol", role=CertRole.SERVER, dns_names=("localhost",),
                                          ip_addresses=(host,) if host[0].isdigit() else ())
        self._tmp = tempfile.TemporaryDirectory(prefix="spd-enrol-")
        cert_path, key_path = Path(self._tmp.name) / "enrol.crt", Path(self._tmp.name) / "enrol.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(key_path, key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_path, key_path)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is required by /v1/renew only
        ctx.load_verify_locations(cadata=ca.cert_pem.decode())
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> EnrolmentService:
        self._thread = threading.Thread(target=self._server.serve_forever, name="enrol-https", daemon=True)
        self._thread.start()
        log.info("enrolment service on %s (CA fingerprint %s)", self.url, self.ca.fingerprint)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._tmp.cleanup()

    def enrol(self, request: dict[str, Any]) -> dict[str, Any]:
        token, csr = request.get("token"), request.get("csr")
        if not isinstance(token, str) or not isinstance(csr, str):
            raise TokenRefused("bad_request", "token and csr are required strings")
        parse_token(token)
        site, device = self.tokens.redeem(token)
        with self._ca_lock:
            cert = self.ca.renew(csr.encode(), name=device, role=CertRole.DEVICE,
                                 valid_days=self.settings.cert_valid_days)
        log.info("enrolled device %s at site %s, certificate serial %x", device, site, cert.serial_number)
        if self._on_enrolled is not None:
            self._on_enrolled(site, device, format(cert.serial_number, "x"))
        return {
            "v": 1, "site": site, "device": device,
            "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "ca": self.ca.cert_pem.decode(),
            "broker": {"host": self.settings.broker_host, "port": self.settings.broker_port},
            "command_key": self.settings.command_key_pem.decode(),
        }


    def renew(self, client_der: bytes | None, request: dict[str, Any]) -> dict[str, Any]:
        """Renew the certificate of the device that authenticated with ``client_der``; see the module docstring."""
        csr = request.get("csr")
        if not isinstance(csr, str):
            raise TokenRefused("bad_request", "csr is a required string")
        if not client_der:
            raise TokenRefused("no_client_certificate", "renewal needs the device's current certificate")
        current = x509.load_der_x509_certificate(client_der)
        name = common_name(current)
        ou = [str(a.value) for a in current.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        if ou != [CertRole.DEVICE.value]:
            raise TokenRefused("not_a_device", f"{name!r} does not hold a device certificate")
        with self._ca_lock:
            try:
                self.ca.verify_issued(current)
            except PkiError as err:
                raise TokenRefused("certificate_refused", str(err)) from None
            try:
                asked = x509.load_pem_x509_csr(csr.encode())
            except ValueError as err:
                raise BadCsr(f"CSR is not PEM: {err}") from None
            cn = [str(a.value) for a in asked.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if cn != [name]:
                raise TokenRefused("wrong_identity", f"CSR is for {cn}, the client certificate for {name!r}")
            cert = self.ca.renew(csr.encode(), name=name, role=CertRole.DEVICE,
                                 valid_days=self.settings.cert_valid_days)
        log.info("renewed device %s: certificate serial %x replaces %x", name, cert.serial_number,
                 current.serial_number)
        return {"v": 1, "device": name, "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "ca": self.ca.cert_pem.decode()}


def _handler_for(service: EnrolmentService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "spd-enrol"

        def do_GET(self) -> None:
            if self.path == "/v1/ca":
                self._send(200, service.ca.cert_pem, "application/x-pem-file")
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if self.path not in ("/v1/enrol", "/v1/renew"):
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_REQUEST_BYTES:
                self._json(413, {"error": "bad_length"})
                return
            try:
                request = json.loads(self.rfile.read(length))
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                self._json(400, {"error": "bad_json"})
                return
            try:
                if self.path == "/v1/renew":
                    conn = self.connection
                    der = conn.getpeercert(binary_form=True) if isinstance(conn, ssl.SSLSocket) else None
                    self._json(200, service.renew(der, request))
                else:
                    self._json(200, service.enrol(request))
            except TokenRefused as err:
                log.warning("enrolment refused from %s: %s", self.client_address[0], err)
                self._json(403, {"error": err.reason, "detail": str(err)})
            except (BadCsr, ValueError) as err:
                log.warning("enrolment refused from %s: %s", self.client_address[0], err)
                self._json(400, {"error": getattr(err, "reason", "bad_request"), "detail": str(err)})

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            self._send(status, json.dumps(doc).encode(), "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("enrol http: " + format, *args)

    return Handler
