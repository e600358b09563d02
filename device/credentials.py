"""Credential rotation on the device: a new key made here, renewed by the gateway over mutual TLS, swapped atomically.

:func:`rotate` generates a new EC P-256 key (written ``{key}.new``, mode
0600, never sent anywhere), builds a CSR for the device's own identity and
``POST``s it to the enrolment service's ``/v1/renew``, authenticating with
the device's *current* certificate and checking the service against the
device's CA file. The answer must be a certificate issued by that CA, for
the same common name, carrying the new public key; it is written
``{cert}.new`` (fsynced). Then the key and the certificate are renamed into
place and the directory fsynced. A crash between the two renames is
finished by :func:`finish_pending_swap` at the next start: a ``{cert}.new``
only exists once the renewal succeeded. On any failure before the renames
the current pair stays in force; the pending files are removed, except the
new key when no answer came, which the next rotation resumes with (the
service may have renewed to it and revoked the current certificate as
superseded: without the key the device could never renew again).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spd_common.durable import fsync_dir

log = logging.getLogger(__name__)

PENDING_SUFFIX = ".new"
UNREACHABLE = "unreachable"
"""No answer from the enrolment service: it may or may not have renewed."""


class CredentialError(Exception):
    """Root of credential-rotation errors; ``reason`` is a stable code."""

    reason = "credential_error"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} [{reason}]")
        self.reason = reason
        self.message = message


class RenewalFailed(CredentialError, ConnectionError):
    """The enrolment service was unreachable or refused; the current credentials stay in force."""


class BadRenewal(CredentialError, ValueError):
    """The service answered with a certificate that does not fit the new key or identity."""


@dataclass(frozen=True, slots=True)
class CredentialFiles:
    """The device's TLS files: the site CA, its certificate and its private key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def pending(self, path: Path) -> Path:
        return path.with_name(path.name + PENDING_SUFFIX)


def current_certificate(files: CredentialFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.cert_file.read_bytes())


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def request_renewal(url: str, files: CredentialFiles, csr_pem: bytes, *, timeout_s: float) -> bytes:
    """POST the CSR to ``{url}/v1/renew`` with the current key pair as the TLS client identity; the new PEM."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise RenewalFailed("bad_url", f"enrolment URL must be https://host:port, got {url!r}")
    ctx = ssl.create_default_context(cafile=str(files.ca_file))
    ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=timeout_s)
    try:
        conn.request("POST", "/v1/renew", body=json.dumps({"csr": csr_pem.decode()}).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    except (OSError, ValueError) as err:
        raise RenewalFailed(UNREACHABLE, f"cannot renew at {url}: {err}") from None
    finally:
        conn.close()
    if resp.status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("cert"), str):
        detail = doc.get("detail", "") if isinstance(doc, dict) else ""
        error = doc.get("error", "refused") if isinstance(doc, dict) else "refused"
        raise RenewalFailed(str(error), f"renewal refused ({resp.status}): {detail}")
    return str(doc["cert"]).encode()


def _check(cert_pem: bytes, *, ca: x509.Certificate, name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as err:
        raise BadRenewal("bad_certificate", f"renewed certificate not issued by the site CA: {err}") from None
    except Exception as err:  # InvalidSignature
        raise BadRenewal("bad_certificate", f"renewed certificate does not verify: {err!r}") from None
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cn != [name]:
        raise BadRenewal("wrong_identity", f"renewed certificate is for {cn}, not {name!r}")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise BadRenewal("wrong_key", "renewed certificate does not carry the new key")
    return cert


def _pending_or_new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key of a renewal whose answer never came (to resume it), else a new one written there (0600)."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError:
            key = None  # torn by a crash while it was written: replaced below
        if isinstance(key, ec.EllipticCurvePrivateKey):
            log.warning("resuming an unfinished credential rotation with the key in %s", path)
            return key
    key = ec.generate_private_key(ec.SECP256R1())
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), 0o600)
    return key


def rotate(files: CredentialFiles, *, name: str, url: str, timeout_s: float = 10.0) -> x509.Certificate:
    """Renew this device's certificate with a new key and swap both into place; returns the new certificate.

    When no answer comes (``unreachable``) the service may have renewed the
    certificate, and revoked the current one as superseded, without the
    device knowing: the new key stays in ``{key}.new`` and the next rotation
    resumes with it (the service sends the certificate it issued for that key
    again). Any other failure removes the pending files.
    """
    pending_key, pending_cert = files.pending(files.key_file), files.pending(files.cert_file)
    key = _pending_or_new_key(pending_key)
    try:
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .sign(key, hashes.SHA256()))
        pem = request_renewal(url, files, csr.public_bytes(serialization.Encoding.PEM), timeout_s=timeout_s)
        ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        cert = _check(pem, ca=ca, name=name, key=key)
        _write(pending_cert, pem, 0o644)
    except RenewalFailed as err:
        pending_cert.unlink(missing_ok=True)
        if err.reason != UNREACHABLE:
            pending_key.unlink(missing_ok=True)
            raise
        raise RenewalFailed(UNREACHABLE, f"{err.message}; the new key stays in {pending_key} and the next "
                            "rotation resumes with it") from None
    except BaseException:
        pending_key.unlink(missing_ok=True)
        pending_cert.unlink(missing_ok=True)
        raise
    fsync_dir(files.cert_file.parent)
    finish_pending_swap(files)
    log.info("device %s: credentials rotated, certificate serial %x", name, cert.serial_number)
    return cert


def finish_pending_swap(files: CredentialFiles) -> bool:
    """Complete a swap a crash interrupted; True if a new pair was installed.

    A ``{key}.new`` without ``{cert}.new`` is a renewal whose answer never
    came: it is kept for the next rotation to resume (see :func:`rotate`),
    and the current pair stays in force.
    """
    pending_key, pending_cert = files.pending(files.key_file), files.pending(files.cert_file)
    if not pending_cert.exists():
        return False
    if pending_key.exists():
        os.replace(pending_key, files.key_file)
    os.replace(pending_cert, files.cert_file)
    fsync_dir(files.cert_file.parent)
    if files.key_file.parent != files.cert_file.parent:
        fsync_dir(files.key_file.parent)
    return True
