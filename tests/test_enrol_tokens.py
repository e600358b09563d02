"""Enrolment tokens: refused at issue when they could never work, kept by a refused request, resumed by their key."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.commands.provision import EnrolmentFailed, fetch_pinned_ca, request_certificate
from gateway.cli import main as gateway_main
from gateway.commands import public_key_pem
from gateway.enrol import BadTokenRequest, EnrolmentService, EnrolmentSettings, EnrolmentTokens
from gateway.pki import RESERVED_NAMES, RevocationReason, SiteCA, make_csr


class Site:
    def __init__(self, d: Path) -> None:
        self.ca = SiteCA.create(d / "ca", site="H1")
        self.tokens = EnrolmentTokens(d / "ca" / "tokens.db")
        settings = EnrolmentSettings("127.0.0.1", 8883, public_key_pem(Ed25519PrivateKey.generate()))
        self.enrol = EnrolmentService(self.ca, self.tokens, settings).start()
        self.ca_pem = fetch_pinned_ca(self.enrol.url, self.ca.fingerprint)

    def ask(self, token: str, csr: bytes) -> dict[str, object]:
        return request_certificate(self.enrol.url, self.ca_pem, token, csr)

    def close(self) -> None:
        self.enrol.stop()
        self.tokens.close()
        self.ca.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("tokens"))
    yield s
    s.close()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# ---------------------------------------------------------------- a refused request leaves the token as it was


@pytest.mark.parametrize(("device", "csr", "reason"), [
    ("CAB10", lambda: make_csr(_key(), "CAB99"), "bad_csr"),  # a CSR for another device
    ("CAB11", lambda: make_csr(_key(), "spd-gateway"), "bad_csr"),  # for the gateway's own name
    ("CAB12", lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "bad_csr"),  # not PEM
    ("CAB13", lambda: b"", "bad_csr"),
])
def test_a_refused_request_does_not_use_up_the_token(site: Site, device: str, csr: object, reason: str) -> None:
    token = site.tokens.issue(site="H1", device=device).text
    with pytest.raises(EnrolmentFailed) as err:
        site.ask(token, csr())  # type: ignore[operator]
    assert err.value.reason == reason
    assert site.ca.issued(name=device) == []
    answer = site.ask(token, make_csr(_key(), device))  # the token still works
    assert answer["device"] == device


# ---------------------------------------------------------------- resuming a used token


def test_the_same_key_gets_the_same_certificate_again_and_any_other_key_is_refused(site: Site) -> None:
    token = site.tokens.issue(site="H1", device="CAB20").text
    key = _key()
    first = site.ask(token, make_csr(key, "CAB20"))
    again = site.ask(token, make_csr(key, "CAB20"))  # the first answer was lost on the way
    assert (first["resumed"], again["resumed"]) == (False, True)
    assert again["cert"] == first["cert"]
    assert [c.revoked for c in site.ca.issued(name="CAB20")] == [False]  # one certificate, still live
    with pytest.raises(EnrolmentFailed) as err:
        site.ask(token, make_csr(_key(), "CAB20"))  # a thief with the token but not the key
    assert err.value.reason == "token_used"


def test_a_used_token_is_not_resumed_once_its_certificate_is_revoked(site: Site) -> None:
    token = site.tokens.issue(site="H1", device="CAB21").text
    key = _key()
    site.ask(token, make_csr(key, "CAB21"))
    site.ca.revoke_name("CAB21", RevocationReason.KEY_COMPROMISE)  # the device was stolen
    with pytest.raises(EnrolmentFailed) as err:
        site.ask(token, make_csr(key, "CAB21"))
    assert err.value.reason == "token_used"


def test_tokens_issued_before_the_resume_columns_existed_still_work(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "tokens.db")
    db.execute("CREATE TABLE tokens (token_sha256 TEXT PRIMARY KEY, site TEXT NOT NULL, device TEXT NOT NULL, "
               "expires_at REAL NOT NULL, used_at REAL, issued_by TEXT NOT NULL)")
    db.commit()
    db.close()
    tokens = EnrolmentTokens(tmp_path / "tokens.db")
    tok = tokens.issue(site="H1", device="CAB22")
    assert tokens.check(tok.text).used_at is None
    tokens.close()


# ---------------------------------------------------------------- refused at issue


@pytest.mark.parametrize("device", sorted(RESERVED_NAMES))
def test_no_token_is_issued_for_a_reserved_name(tmp_path: Path, device: str) -> None:
    tokens = EnrolmentTokens(tmp_path / "tokens.db")
    with pytest.raises(BadTokenRequest) as err:
        tokens.issue(site="H1", device=device)
    assert err.value.reason == "reserved_name"
    tokens.close()


@pytest.mark.parametrize("ttl_s", [0.0, -3600.0, 30.0, math.nan, math.inf, 8 * 86_400.0])
def test_no_token_is_issued_with_a_lifetime_out_of_bounds(tmp_path: Path, ttl_s: float) -> None:
    tokens = EnrolmentTokens(tmp_path / "tokens.db")
    with pytest.raises(BadTokenRequest) as err:
        tokens.issue(site="H1", device="CAB01", ttl_s=ttl_s)
    assert err.value.reason == "bad_ttl"
    tokens.close()


def _token_rows(ca_dir: Path) -> int:
    db = sqlite3.connect(ca_dir / "tokens.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize(("args", "says"), [
    (["--device", "spd-gateway"], "reserved"),
    (["--device", "spd-broker"], "reserved"),
    (["--device", "spd-enrol"], "reserved"),
    (["--device", "CAB01", "--ttl-hours", "0"], "0 h"),
    (["--device", "CAB01", "--ttl-hours", "-2"], "-2 h"),
    (["--device", "CAB01", "--ttl-hours", "nan"], "nan h"),
    (["--device", "CAB01", "--ttl-hours", "1000"], "1000 h"),
    (["--device", "CAB 01"], "must match"),
])
def test_enrol_token_command_refuses_reserved_names_and_bad_lifetimes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str) -> None:
    SiteCA.create(tmp_path / "ca", site="H1").close()
    assert gateway_main(["enrol-token", "--ca-dir", str(tmp_path / "ca"), "--site", "H1", *args]) == 2
    out = capsys.readouterr()
    assert "refused" in out.err and says in out.err
    assert "token:" not in out.out
    assert _token_rows(tmp_path / "ca") == 0
    assert gateway_main(["enrol-token", "--ca-dir", str(tmp_path / "ca"), "--site", "H1", "--device", "CAB01",
                         "--ttl-hours", "0.5"]) == 0
    assert _token_rows(tmp_path / "ca") == 1


def test_a_new_token_for_a_device_voids_its_unused_one(site: Site) -> None:
    first = site.tokens.issue(site="H1", device="CAB30").text
    other = site.tokens.issue(site="H1", device="CAB31").text
    second = site.tokens.issue(site="H1", device="CAB30")
    assert second.replaced == 1
    with pytest.raises(EnrolmentFailed) as err:
        site.ask(first, make_csr(_key(), "CAB30"))  # the paper with the old token, found later
    assert err.value.reason == "token_expired"
    assert site.ask(second.text, make_csr(_key(), "CAB30"))["device"] == "CAB30"
    assert site.ask(other, make_csr(_key(), "CAB31"))["device"] == "CAB31"  # other devices' tokens untouched


def test_enrol_token_command_says_which_unused_tokens_it_replaces(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SiteCA.create(tmp_path / "ca", site="H1").close()
    argv = ["enrol-token", "--ca-dir", str(tmp_path / "ca"), "--site", "H1", "--device", "CAB01"]
    assert gateway_main(argv) == 0
    assert "replaces" not in capsys.readouterr().out
    assert gateway_main(argv) == 0
    assert "replaces:       1 unused token(s) of CAB01" in capsys.readouterr().out
