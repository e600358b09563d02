"""The site certificate authority: CA key and certificate, certificates issued from CSRs, revocation and the CRL.

One CA per site (hospital). It signs the broker's server certificate, the
gateway's client certificate and one client certificate per device, each
from a CSR whose key never left its owner. A device certificate's common
name is the device id: the broker uses it as the MQTT user name and the ACL
confines the device to its own topics with it.

Files in the CA directory: ``ca.key`` (mode 0600), ``ca.crt``, ``crl.pem``
and ``index.db`` (every certificate issued, with its revocation if any).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.data.ca_index import CertIndex
from spd_common.durable import write_atomic
from spd_common.wire import ID_PATTERN

log = logging.getLogger(__name__)

GATEWAY_IDENTITY = "spd-gateway"
"""The common name of the gateway's client certificate; the ACL gives it the gateway's rights."""

RESERVED_NAMES = frozenset({GATEWAY_IDENTITY, "spd-broker", "spd-enrol"})
RESERVED_PREFIX = "spd-"
"""No device id starts with it: the gateway's other identities (``spd-gateway-fleet``, ``spd-gateway-cli``,
one per extra instance) get the gateway's rights in the broker ACL."""

class PkiError(Exception):
    """Root of the site CA's errors; ``reason`` is a stable code."""

    reason = "pki_error"


class BadCsr(PkiError, ValueError):
    """A CSR that is malformed, badly signed, or names someone else."""

    reason = "bad_csr"


class UnknownCertificate(PkiError, LookupError):
    """No certificate with that serial or name was issued by this CA."""

    reason = "unknown_certificate"


class CaMissing(PkiError, FileNotFoundError):
    """The CA directory has no CA yet (run ``spd-gateway ca-init``)."""

    reason = "ca_missing"


class CertRole(StrEnum):
    """What a certificate is for; it decides key usages and names."""

    DEVICE = "device"  # MQTT client: a cabinet or handheld
    GATEWAY = "gateway"  # MQTT client with the gateway's rights
    SERVER = "server"  # TLS server: the broker, the enrolment endpoint


class RevocationReason(StrEnum):
    KEY_COMPROMISE = "key_compromise"
    SUPERSEDED = "superseded"
    CESSATION = "cessation_of_operation"
    UNSPECIFIED = "unspecified"


_X509_REASON = {
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
}


@dataclass(frozen=True, slots=True)
class IssuedCert:
    serial: str  # hex
    name: str
    role: CertRole
    not_after: dt.datetime
    revoked: bool
    pem: bytes


# ---------------------------------------------------------------- key helpers (used by both sides)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, created with mode 0600 (never readable by others)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o600)


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A PEM CSR with common name ``name``, signed by ``key``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex: what a technician pins."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------- the CA


class SiteCA:
    """A site's CA on disk. Not thread-safe: one process (the gateway's enrolment service) owns it."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.directory = directory
        self._key = key
        self.cert = cert
        self._index = CertIndex(directory / "index.db")

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, directory: str | Path, *, site: str, valid_days: int = 3650) -> SiteCA:
        """Make a new CA in ``directory`` (refuses to overwrite an existing one)."""
        d = Path(directory)
        if (d / "ca.key").exists():
            raise PkiError(f"{d} already holds a CA; refusing to overwrite it")
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        key = generate_key()
        cert = cls._self_signed(key, site, valid_days)
        write_private_key(d / "ca.key", key)
        write_atomic(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
        ca = cls(d, key, cert)
        ca.write_crl()
        log.info("site CA created for %s in %s (fingerprint %s)", site, d, ca.fingerprint)
        return ca

    @staticmethod
    def _self_signed(key: ec.EllipticCurvePrivateKey, site: str, valid_days: int) -> x509.Certificate:
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spd-edge"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"spd site CA {site}"),
        ])
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )

    @classmethod
    def load(cls, directory: str | Path) -> SiteCA:
        d = Path(directory)
        try:
            key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        except FileNotFoundError:
            raise CaMissing(f"no CA in {d}: create one with 'spd-gateway ca-init'") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{d / 'ca.key'} is not an EC key")
        return cls(d, key, cert)

    def close(self) -> None:
        self._index.close()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    # ------------------------------------------------------------ issuing

    def issue_from_csr(self, csr_pem: bytes, *, name: str, role: CertRole = CertRole.DEVICE,
                       valid_days: int = 397, dns_names: tuple[str, ...] = (),
                       ip_addresses: tuple[str, ...] = ()) -> x509.Certificate:
        """Check the CSR (its own signature, common name == ``name``) and sign a certificate for it."""
        public = self.check_csr(csr_pem, name=name, role=role)
        return self._sign(public, name, role, valid_days, dns_names, ip_addresses)

    def check_csr(self, csr_pem: bytes, *, name: str, role: CertRole = CertRole.DEVICE) -> ec.EllipticCurvePublicKey:
        """The CSR's public key if a certificate for ``name`` may be issued from it, else :class:`BadCsr`.

        Nothing is issued or recorded: the enrolment service checks a request
        with this before it uses up the token.
        """
        if not ID_PATTERN.match(name):
            raise BadCsr(f"name {name!r} must match {ID_PATTERN.pattern}")
        if role is CertRole.DEVICE and (name in RESERVED_NAMES or name.lower().startswith(RESERVED_PREFIX)):
            raise BadCsr(f"{name!r} is reserved and cannot be a device id")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise BadCsr(f"CSR is not PEM: {err}") from None
        if not csr.is_signature_valid:
            raise BadCsr("CSR signature does not verify: the requester does not hold the key")
        cn = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cn != [name]:
            raise BadCsr(f"CSR common name {cn} does not match the identity {name!r}")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise BadCsr("only EC keys are accepted")
        return public

    def issue_with_new_key(self, name: str, *, role: CertRole, valid_days: int = 397,
                           dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = ()
                           ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """For the gateway's own services (broker, enrolment endpoint): a key made here and its certificate."""
        key = generate_key()
        cert = self.issue_from_csr(make_csr(key, name), name=name, role=role, valid_days=valid_days,
                                   dns_names=dns_names, ip_addresses=ip_addresses)
        return key, cert

    def _sign(self, public: ec.EllipticCurvePublicKey, name: str, role: CertRole, valid_days: int,
              dns_names: tuple[str, ...], ip_addresses: tuple[str, ...]) -> x509.Certificate:
        now = _now()
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if role is CertRole.SERVER else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=valid_days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        self._index.add(format(cert.serial_number, "x"), name, role.value,
                        not_before=cert.not_valid_before_utc.timestamp(),
                        not_after=cert.not_valid_after_utc.timestamp(),
                        pem=cert.public_bytes(serialization.Encoding.PEM).decode())
        log.info("issued %s certificate for %s, serial %x", role.value, name, cert.serial_number)
        return cert

    def renew(self, csr_pem: bytes, *, name: str, role: CertRole = CertRole.DEVICE,
              valid_days: int = 397) -> x509.Certificate:
        """Rotate an identity's certificate: issue for the new CSR, then revoke its older live ones as superseded."""
        older = [c for c in self.issued(name=name) if not c.revoked]
        cert = self.issue_from_csr(csr_pem, name=name, role=role, valid_days=valid_days)
        for c in older:
            self.revoke(c.serial, RevocationReason.SUPERSEDED, write=False)
        self.write_crl()
        return cert

    # ------------------------------------------------------------ revocation

    def issued(self, *, name: str | None = None) -> list[IssuedCert]:
        return [IssuedCert(r.serial, r.name, CertRole(r.role), dt.datetime.fromtimestamp(r.not_after, dt.UTC),
                           r.revoked_at is not None, r.pem.encode()) for r in self._index.issued(name=name)]

    def revoke(self, serial: str, reason: RevocationReason = RevocationReason.UNSPECIFIED, *,
               write: bool = True) -> None:
        """Revoke one certificate by hex serial and (by default) publish a new CRL."""
        if self._index.revoke(serial.lower(), reason.value, at=_now().timestamp()) is None:
            raise UnknownCertificate(f"no certificate with serial {serial} was issued by this CA")
        log.warning("revoked certificate %s (%s)", serial, reason.value)
        if write:
            self.write_crl()

    def revoke_name(self, name: str, reason: RevocationReason = RevocationReason.UNSPECIFIED) -> int:
        """Revoke every live certificate of an identity (a device taken out of service or stolen)."""
        live = [c for c in self.issued(name=name) if not c.revoked]
        if not live:
            raise UnknownCertificate(f"no live certificate for {name!r}")
        for c in live:
            self.revoke(c.serial, reason, write=False)
        self.write_crl()
        return len(live)

    def revocation_reason(self, cert: x509.Certificate) -> RevocationReason | None:
        """Why ``cert`` was revoked, or None if it is not (or was not issued here)."""
        revoked = self._index.revocation(format(cert.serial_number, "x"))
        return None if revoked is None else RevocationReason(revoked.reason)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return self._index.revocation(format(cert.serial_number, "x")) is not None

    def build_crl(self, *, valid_days: int = 30) -> x509.CertificateRevocationList:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=valid_days))
        )
        for serial, at, reason in self._index.revoked():
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(dt.datetime.fromtimestamp(at, dt.UTC))
                .add_extension(x509.CRLReason(_X509_REASON[RevocationReason(reason)]), critical=False)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self._key, hashes.SHA256())

    def write_crl(self, *, valid_days: int = 30) -> Path:
        """Write ``crl.pem`` atomically and durably (a power cut cannot bring back the CRL before a revocation).

        The broker must be restarted to see it; renew it before it expires.
        """
        crl = self.build_crl(valid_days=valid_days)
        write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    # ------------------------------------------------------------ verification

    def verify_issued(self, cert: x509.Certificate) -> None:
        """Raise :class:`PkiError` unless ``cert`` was signed by this CA, is in date and not revoked."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise PkiError(f"certificate was not issued by this CA: {err}") from None
        now = _now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PkiError("certificate is outside its validity period")
        if self.is_revoked(cert):
            raise PkiError(f"certificate {cert.serial_number:x} is revoked")
