"""The site CA: issuing from CSRs, refusing bad ones, revocation, the CRL and certificate rotation."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.pki import (
    BadCsr,
    CaMissing,
    CertRole,
    PkiError,
    RevocationReason,
    SiteCA,
    UnknownCertificate,
    common_name,
    generate_key,
    make_csr,
)

KEY = generate_key()  # one device key for the module: EC P-256 is cheap, but once is enough


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteCA]:
    c = SiteCA.create(tmp_path_factory.mktemp("pki") / "ca", site="H1")
    yield c
    c.close()


def test_new_ca_keeps_its_key_private_and_refuses_to_be_overwritten(ca: SiteCA) -> None:
    assert stat.S_IMODE((ca.directory / "ca.key").stat().st_mode) == 0o600
    assert (ca.directory / "crl.pem").exists()
    with pytest.raises(PkiError, match="already holds a CA"):
        SiteCA.create(ca.directory, site="H1")
    again = SiteCA.load(ca.directory)
    assert again.fingerprint == ca.fingerprint == hashlib.sha256(
        ca.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    again.close()


def test_loading_a_missing_ca_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(CaMissing, match="spd-gateway ca-init"):
        SiteCA.load(tmp_path)


def test_device_certificate_names_the_device_and_is_for_client_auth(ca: SiteCA) -> None:
    cert = ca.issue_from_csr(make_csr(KEY, "CAB01"), name="CAB01")
    cert.verify_directly_issued_by(ca.cert)
    assert common_name(cert) == "CAB01"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.public_key().public_numbers() == KEY.public_key().public_numbers()
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc
    ca.verify_issued(cert)


def test_csr_for_another_name_is_refused(ca: SiteCA) -> None:
    with pytest.raises(BadCsr, match="does not match the identity 'CAB02'"):
        ca.issue_from_csr(make_csr(KEY, "CAB01"), name="CAB02")


def test_garbage_csr_and_bad_names_are_refused(ca: SiteCA) -> None:
    with pytest.raises(BadCsr, match="not PEM"):
        ca.issue_from_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                          name="CAB03")
    with pytest.raises(BadCsr, match="must match"):
        ca.issue_from_csr(make_csr(KEY, "CAB 03"), name="CAB 03")
    with pytest.raises(BadCsr, match="reserved"):
        ca.issue_from_csr(make_csr(KEY, "spd-gateway"), name="spd-gateway")


def test_server_certificate_carries_its_names(ca: SiteCA) -> None:
    _, cert = ca.issue_with_new_key("spd-broker", role=CertRole.SERVER, dns_names=("localhost",),
                                    ip_addresses=("127.0.0.1",))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_revoked_certificate_is_in_the_crl_with_its_reason(ca: SiteCA) -> None:
    cert = ca.issue_from_csr(make_csr(KEY, "CAB04"), name="CAB04")
    assert ca.revoke_name("CAB04", RevocationReason.KEY_COMPROMISE) == 1
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert ca.is_revoked(cert)
    with pytest.raises(PkiError, match="is revoked"):
        ca.verify_issued(cert)
    with pytest.raises(UnknownCertificate):
        ca.revoke_name("CAB04")  # nothing live left


def test_renewal_rotates_the_certificate_and_supersedes_the_old_one(ca: SiteCA) -> None:
    old = ca.issue_from_csr(make_csr(KEY, "CAB05"), name="CAB05")
    new_key = generate_key()
    new = ca.renew(make_csr(new_key, "CAB05"), name="CAB05")
    assert [c.revoked for c in ca.issued(name="CAB05")] == [True, False]
    entry = x509.load_pem_x509_crl(ca.crl_path.read_bytes()).get_revoked_certificate_by_serial_number(
        old.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded
    ca.verify_issued(new)


def test_certificate_from_another_ca_is_not_ours(ca: SiteCA, tmp_path: Path) -> None:
    other = SiteCA.create(tmp_path / "other", site="H2")
    foreign = other.issue_from_csr(make_csr(KEY, "CAB01"), name="CAB01")
    with pytest.raises(PkiError, match="not issued by this CA"):
        ca.verify_issued(foreign)
    other.close()


def test_unknown_serial_cannot_be_revoked(ca: SiteCA) -> None:
    with pytest.raises(UnknownCertificate):
        ca.revoke("deadbeef")
