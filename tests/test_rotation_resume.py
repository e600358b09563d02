"""Credential rotation whose answer is lost: the device keeps its new key and the next rotation resumes with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

import device.credentials as credentials_mod
from device.credentials import CredentialFiles, RenewalFailed, finish_pending_swap, rotate
from gateway.commands import public_key_pem
from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
from gateway.pki import CertRole, RevocationReason, SiteCA, generate_key, make_csr, write_private_key


class Site:
    def __init__(self, d: Path) -> None:
        self.ca = SiteCA.create(d / "ca", site="H1")
        self.tokens = EnrolmentTokens(d / "ca" / "tokens.db")
        settings = EnrolmentSettings("127.0.0.1", 8883, public_key_pem(Ed25519PrivateKey.generate()))
        self.enrol = EnrolmentService(self.ca, self.tokens, settings).start()

    def device_files(self, d: Path, name: str) -> CredentialFiles:
        d.mkdir(parents=True)
        key = generate_key()
        cert = self.ca.issue_from_csr(make_csr(key, name), name=name, role=CertRole.DEVICE)
        files = CredentialFiles(d / "ca.crt", d / "device.crt", d / "device.key")
        files.ca_file.write_bytes(self.ca.cert_pem)
        files.cert_file.write_bytes(cert.public_bytes(Encoding.PEM))
        write_private_key(files.key_file, key)
        return files

    def close(self) -> None:
        self.enrol.stop()
        self.tokens.close()
        self.ca.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("rotation"))
    yield s
    s.close()


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _lose_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    real = credentials_mod.request_renewal

    def lost(*args: object, **kwargs: object) -> bytes:
        real(*args, **kwargs)  # type: ignore[arg-type]  # the service renews...
        raise RenewalFailed("unreachable", "cannot renew: timed out")  # ...and the answer never arrives

    monkeypatch.setattr(credentials_mod, "request_renewal", lost)


def test_a_rotation_whose_answer_was_lost_is_resumed_by_the_next_one(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = site.device_files(tmp_path / "etc", "CAB01")
    old_serial, old_key = _serial(files.cert_file), files.key_file.read_bytes()
    with monkeypatch.context() as m:
        _lose_the_answer(m)
        with pytest.raises(RenewalFailed, match="the next rotation resumes with it"):
            rotate(files, name="CAB01", url=site.enrol.url)
    pending_key = files.pending(files.key_file)
    assert pending_key.exists()  # kept: the service renewed to it and revoked the current certificate
    assert (_serial(files.cert_file), files.key_file.read_bytes()) == (old_serial, old_key)
    [superseded, issued] = site.ca.issued(name="CAB01")
    assert (superseded.revoked, issued.revoked) == (True, False)
    assert finish_pending_swap(files) is False  # the agent restarts: the current pair stays, the key is kept
    assert pending_key.exists()
    new_key = pending_key.read_bytes()
    cert = rotate(files, name="CAB01", url=site.enrol.url)  # the next rotate_credentials
    assert format(cert.serial_number, "x") == issued.serial  # the certificate issued the first time
    assert files.key_file.read_bytes() == new_key and not pending_key.exists()
    assert [c.revoked for c in site.ca.issued(name="CAB01")] == [True, False]


def test_a_superseded_certificate_gets_nothing_for_a_key_it_was_not_superseded_by(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = site.device_files(tmp_path / "etc", "CAB02")
    with monkeypatch.context() as m:
        _lose_the_answer(m)
        with pytest.raises(RenewalFailed):
            rotate(files, name="CAB02", url=site.enrol.url)
    files.pending(files.key_file).unlink()  # the new key is lost: a thief with only the old pair
    with pytest.raises(RenewalFailed) as err:
        rotate(files, name="CAB02", url=site.enrol.url)
    assert err.value.reason == "certificate_refused"
    assert not files.pending(files.key_file).exists()


def test_no_resume_after_the_operator_revoked_the_device(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = site.device_files(tmp_path / "etc", "CAB03")
    with monkeypatch.context() as m:
        _lose_the_answer(m)
        with pytest.raises(RenewalFailed):
            rotate(files, name="CAB03", url=site.enrol.url)
    site.ca.revoke_name("CAB03", RevocationReason.KEY_COMPROMISE)  # reported stolen meanwhile
    with pytest.raises(RenewalFailed) as err:
        rotate(files, name="CAB03", url=site.enrol.url)
    assert err.value.reason == "certificate_refused"


def test_a_refused_rotation_leaves_no_new_key(site: Site, tmp_path: Path) -> None:
    files = site.device_files(tmp_path / "etc", "CAB04")
    site.ca.revoke_name("CAB04", RevocationReason.CESSATION)
    with pytest.raises(RenewalFailed) as err:
        rotate(files, name="CAB04", url=site.enrol.url)
    assert err.value.reason == "certificate_refused"
    assert not files.pending(files.key_file).exists() and not files.pending(files.cert_file).exists()
