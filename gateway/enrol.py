"""Device enrolment: one-time tokens, and an HTTPS endpoint that turns a CSR into a certificate.

A technician gets a token (``{site}/{device}/{secret}``) and the site CA's
SHA-256 fingerprint from ``spd-gateway enrol-token``. On the device,
``spd-device provision`` fetches the CA certificate from ``GET /v1/ca``,
checks it against the pinned fingerprint, then opens a verified TLS
connection and ``POST /v1/enrol`` with the token and a CSR made from a key
generated on the device. A token works once, for the identity it was issued
for, until it expires; only its SHA-256 is stored. A refused request (bad
CSR, a CSR for another name) does not use it up; the device that used it may
ask again with the same key and gets the same certificate (its answer was
lost, or provisioning failed after it). Tokens are refused at issue for the
site's reserved names and for lifetimes outside one minute to one week.

A device rotating its credentials ``POST /v1/renew`` with a CSR for a new key,
over mutual TLS with its *current* certificate: the client certificate must be
a live device certificate of the site CA whose common name is the CSR's;
:meth:`SiteCA.renew` issues the new certificate and revokes the older ones as
superseded. The handshake asks for a client certificate but does not demand
one, so ``/v1/ca`` and ``/v1/enrol`` keep working for a device that has none.

HTTP, deadlines and connection bounds: :mod:`gateway.enrol_http`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.data.tokens import TokenStore
from gateway.enrol_http import Answer, HardenedHttpsServer, Request, ServerLimits
from gateway.pki import (
    RESERVED_NAMES,
    BadCsr,
    CertRole,
    PkiError,
    RevocationReason,
    SiteCA,
    common_name,
    write_private_key,
)
from spd_common.wire import check_id

log = logging.getLogger(__name__)


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
    replaced: int = 0  # unused tokens of the same device this one made void


MIN_TOKEN_TTL_S = 60.0
MAX_TOKEN_TTL_S = 7 * 86_400.0
"""A token lives at least a minute and at most a week: long enough to walk to a ward, short enough to matter."""


class BadTokenRequest(EnrolError, ValueError):
    """A token that must not be issued (reserved identity, lifetime out of bounds)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What is stored of a token; ``serial`` and ``key_sha256`` name the certificate it was used for."""

    site: str
    device: str
    expires_at: float
    used_at: float | None
    serial: str | None
    key_sha256: str | None


class EnrolmentTokens:
    """One-time tokens, stored hashed.

    A token is used up only by the request that gets a certificate with it.
    A refused request (CSR for another name, bad CSR, reserved name) leaves
    it as it was. The certificate and the SHA-256 of its public key are
    recorded with the token, so that the same device asking again with the
    same token and the same key (its answer was lost, or provisioning
    failed after it) is handed the same certificate instead of a refusal.
    """

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._tokens = TokenStore(path)

    def issue(self, *, site: str, device: str, ttl_s: float = 86_400, issued_by: str = "") -> EnrolmentToken:
        """A new token for ``site``/``device``; refuses reserved identities and lifetimes out of bounds."""
        check_id("site", site)
        check_id("device", device)
        if device in RESERVED_NAMES:
            raise BadTokenRequest("reserved_name", f"{device!r} is reserved for the site's own services "
                                  f"({', '.join(sorted(RESERVED_NAMES))}) and cannot be enrolled as a device")
        if not (math.isfinite(ttl_s) and MIN_TOKEN_TTL_S <= ttl_s <= MAX_TOKEN_TTL_S):
            raise BadTokenRequest("bad_ttl", f"a token lives {MIN_TOKEN_TTL_S / 60:.0f} min to "
                                  f"{MAX_TOKEN_TTL_S / 3600:.0f} h, not {ttl_s / 3600:g} h")
        secret = secrets.token_urlsafe(24)
        text = f"{site}/{device}/{secret}"
        now = time.time()
        with self._lock:
            # a new token replaces the device's unused ones: one live token per device, never a forgotten one
            replaced = self._tokens.add(_sha(text), site, device, expires_at=now + ttl_s, issued_by=issued_by,
                                        now=now)
        return EnrolmentToken(site, device, text, now + ttl_s, replaced)

    def check(self, text: str) -> TokenRecord:
        """The token's record if it was issued and has not expired (used or not), else :class:`TokenRefused`."""
        with self._lock:
            row = self._tokens.get(_sha(text))
        if row is None:
            raise TokenRefused("unknown_token", "this enrolment token was never issued")
        record = TokenRecord(*row)
        if time.time() > record.expires_at:
            raise TokenRefused("token_expired", "this enrolment token has expired")
        return record

    def mark_used(self, text: str, *, serial: str, key_sha256: str) -> None:
        """Record that the token got certificate ``serial`` for the key ``key_sha256``; refuses a used token."""
        with self._lock:
            used = self._tokens.mark_used(_sha(text), serial=serial, key_sha256=key_sha256, now=time.time())
        if not used:
            raise TokenRefused("token_used", "this enrolment token was already used")

    def close(self) -> None:
        self._tokens.close()


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
    """HTTPS on ``host:port`` (port 0 picks a free one); see :mod:`gateway.enrol_http` for deadlines and bounds."""

    def __init__(self, ca: SiteCA, tokens: EnrolmentTokens, settings: EnrolmentSettings, *,
                 host: str = "127.0.0.1", port: int = 0, on_enrolled: Any = None,
                 limits: ServerLimits | None = None) -> None:
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
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.host, self.port = host, int(sock.getsockname()[1])
        self.server = HardenedHttpsServer(sock, ctx, self.route, limits=limits, name="enrol-https")

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> EnrolmentService:
        self.server.start()
        log.info("enrolment service on %s (CA fingerprint %s)", self.url, self.ca.fingerprint)
        return self

    def stop(self) -> None:
        self.server.stop()
        self._tmp.cleanup()

    # ------------------------------------------------------------ requests

    def route(self, request: Request) -> Answer:
        """One complete request to its answer; refusals are logged with the requester's address."""
        if (request.method, request.path) == ("GET", "/v1/ca"):
            return Answer(200, self.ca.cert_pem, "application/x-pem-file")
        if request.method != "POST" or request.path not in ("/v1/enrol", "/v1/renew"):
            log.warning("enrolment refused from %s: %s %r is not served", request.source, request.method,
                        request.path[:80])
            return Answer.error(404, "not_found", f"no {request.method} {request.path[:80]!r} here")
        try:
            doc = json.loads(request.body)
            if not isinstance(doc, dict):
                raise ValueError("the body is not a JSON object")
        except (ValueError, RecursionError) as err:
            log.warning("enrolment refused from %s: bad JSON: %s", request.source, err)
            return Answer.error(400, "bad_json", "the body must be a JSON object")
        try:
            if request.path == "/v1/renew":
                return Answer.json(200, self.renew(request.peer_der, doc))
            return Answer.json(200, self.enrol(doc))
        except TokenRefused as err:
            log.warning("enrolment refused from %s: %s (%s)", request.source, err, err.reason)
            return Answer.error(403, err.reason, str(err))
        except (BadCsr, ValueError) as err:
            log.warning("enrolment refused from %s: %s", request.source, err)
            return Answer.error(400, getattr(err, "reason", "bad_request"), str(err))

    def enrol(self, request: dict[str, Any]) -> dict[str, Any]:
        """Certificate for a token and a CSR. Only a granted request uses the token up.

        The same token with a CSR for the same key after it was used gets the
        same certificate again, while that certificate is live and the token
        has not expired: a device whose answer was lost, or whose
        provisioning failed afterwards, resumes instead of needing a new
        token. Any other key is refused (``token_used``).
        """
        token, csr = request.get("token"), request.get("csr")
        if not isinstance(token, str) or not isinstance(csr, str):
            raise TokenRefused("bad_request", "token and csr are required strings")
        parse_token(token)
        with self._ca_lock:
            record = self.tokens.check(token)
            public = self.ca.check_csr(csr.encode(), name=record.device, role=CertRole.DEVICE)
            key_sha = _key_sha256(public)
            if record.used_at is not None:
                cert = self._resumed(record, key_sha)
                resumed = True
            else:
                cert = self.ca.renew(csr.encode(), name=record.device, role=CertRole.DEVICE,
                                     valid_days=self.settings.cert_valid_days)
                self.tokens.mark_used(token, serial=format(cert.serial_number, "x"), key_sha256=key_sha)
                resumed = False
        site, device = record.site, record.device
        if resumed:
            log.info("device %s at site %s resumed its enrolment: certificate serial %x sent again", device, site,
                     cert.serial_number)
        else:
            log.info("enrolled device %s at site %s, certificate serial %x", device, site, cert.serial_number)
            if self._on_enrolled is not None:
                self._on_enrolled(site, device, format(cert.serial_number, "x"))
        return {
            "v": 1, "site": site, "device": device, "resumed": resumed,
            "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "ca": self.ca.cert_pem.decode(),
            "broker": {"host": self.settings.broker_host, "port": self.settings.broker_port},
            "command_key": self.settings.command_key_pem.decode(),
        }

    def _resumed(self, record: TokenRecord, key_sha: str) -> x509.Certificate:
        if not record.serial or record.key_sha256 != key_sha:
            raise TokenRefused("token_used", "this enrolment token was already used")
        issued = next((c for c in self.ca.issued(name=record.device) if c.serial == record.serial), None)
        if issued is None or issued.revoked:
            raise TokenRefused("token_used", "this enrolment token was used for a certificate that is no longer "
                               "live; ask for a new token")
        cert = x509.load_pem_x509_certificate(issued.pem)
        try:
            self.ca.verify_issued(cert)
        except PkiError as err:
            raise TokenRefused("token_used", f"this enrolment token was used; its certificate: {err}") from None
        return cert

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
                resumed = self._renewed_already(current, name, csr.encode())
                if resumed is None:
                    raise TokenRefused("certificate_refused", str(err)) from None
                log.info("device %s resumed its renewal: certificate serial %x sent again", name,
                         resumed.serial_number)
                return {"v": 1, "device": name, "resumed": True, "ca": self.ca.cert_pem.decode(),
                        "cert": resumed.public_bytes(serialization.Encoding.PEM).decode()}
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
        return {"v": 1, "device": name, "resumed": False, "ca": self.ca.cert_pem.decode(),
                "cert": cert.public_bytes(serialization.Encoding.PEM).decode()}

    def _renewed_already(self, current: x509.Certificate, name: str, csr_pem: bytes) -> x509.Certificate | None:
        """The live certificate that superseded ``current`` for the CSR's key: a renewal whose answer was lost.

        Only for a certificate revoked as *superseded* (never after a revocation
        by an operator) and only to the holder of the new key (the CSR's own
        signature proves it).
        """
        try:
            current.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return None
        if self.ca.revocation_reason(current) is not RevocationReason.SUPERSEDED:
            return None
        try:
            key_sha = _key_sha256(self.ca.check_csr(csr_pem, name=name, role=CertRole.DEVICE))
        except BadCsr:
            return None
        for issued in self.ca.issued(name=name):
            cert = x509.load_pem_x509_certificate(issued.pem)
            public = cert.public_key()
            if issued.revoked or not isinstance(public, ec.EllipticCurvePublicKey) or _key_sha256(public) != key_sha:
                continue
            try:
                self.ca.verify_issued(cert)
            except PkiError:
                continue
            return cert
        return None


def _key_sha256(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
