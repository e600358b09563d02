"""The broker's TLS and ACL refusals, against a real Mosquitto rendered from the deploy template."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.broker_acl import render_acl
from gateway.pki import CertRole, SiteCA
from hw_sim.secure_broker import MqttProbe, SecureBroker
from spd_common.mqtt import TlsSettings

SITE = "H1"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    d = tmp_path_factory.mktemp("acl")
    ca = SiteCA.create(d / "ca", site=SITE)
    b = SecureBroker(ca, sites=(SITE,), workdir=d / "broker").start()
    yield b
    b.close()
    ca.close()


@pytest.fixture(scope="module")
def certs(secure: SecureBroker) -> dict[str, TlsSettings]:
    return {"CAB01": secure.client_tls("CAB01"), "CAB02": secure.client_tls("CAB02"), "gw": secure.gateway_tls()}


def probe(b: SecureBroker, tls: TlsSettings | None, name: str, **kw: bool) -> MqttProbe:
    return MqttProbe(b.host, b.port, tls=tls, client_id=f"{name}-{time.monotonic_ns()}", **kw)


def test_device_with_its_certificate_publishes_its_own_events_and_state(
        secure: SecureBroker, certs: dict[str, TlsSettings]) -> None:
    p = probe(secure, certs["CAB01"], "CAB01")
    assert p.connected
    assert not p.publish("spd/v1/H1/CAB01/events", b"{}").is_failure
    assert not p.publish("spd/v1/H1/CAB01/state", b"").is_failure
    p.close()


def test_device_cannot_publish_on_another_devices_topics(secure: SecureBroker, certs: dict[str, TlsSettings]) -> None:
    p = probe(secure, certs["CAB01"], "CAB01")
    refused = [str(p.publish(t, b"{}")) for t in (
        "spd/v1/H1/CAB02/events", "spd/v1/H1/CAB02/state", "spd/v1/H1/CAB02/ack", "spd/v1/H1/CAB02/cmd",
        "spd/v1/H2/CAB01/events",  # its own id under another site
    )]
    assert refused == ["Not authorized"] * 5
    p.close()


def test_device_cannot_forge_acks_or_commands_even_for_itself(
        secure: SecureBroker, certs: dict[str, TlsSettings]) -> None:
    p = probe(secure, certs["CAB01"], "CAB01")
    assert [str(p.publish(t, b"{}")) for t in ("spd/v1/H1/CAB01/ack", "spd/v1/H1/CAB01/cmd")] == ["Not authorized"] * 2
    p.close()


def test_device_subscribed_to_another_device_hash_or_sys_receives_nothing_foreign(
        secure: SecureBroker, certs: dict[str, TlsSettings]) -> None:
    gw = probe(secure, certs["gw"], "gw")
    other = probe(secure, certs["CAB02"], "CAB02")
    assert not other.publish("spd/v1/H1/CAB02/state", b'{"retained":1}', retain=True).is_failure
    assert not gw.publish("spd/v1/H1/CAB02/cmd", b'{"for":"CAB02"}', retain=True).is_failure
    spy = probe(secure, certs["CAB01"], "CAB01")
    # Mosquitto 2.0 grants the SUBSCRIBE and enforces the ACL on every delivery:
    # what matters is that nothing it may not read ever reaches it
    for f in ("#", "$SYS/#", "spd/v1/H1/CAB02/#", "spd/v1/H1/+/cmd", "spd/v1/H1/CAB01/ack"):
        spy.subscribe(f)
    assert not gw.publish("spd/v1/H1/CAB02/ack", b'{"to":"CAB02"}').is_failure
    assert not gw.publish("spd/v1/H1/CAB01/ack", b'{"to":"CAB01"}').is_failure
    assert not other.publish("spd/v1/H1/CAB02/events", b'{"from":"CAB02"}').is_failure
    msgs = spy.wait_messages(1)
    time.sleep(0.5)
    topics = {t for t, _, _ in spy.messages}
    assert topics == {"spd/v1/H1/CAB01/ack"}
    assert msgs[0][1] == b'{"to":"CAB01"}'
    gw.publish("spd/v1/H1/CAB02/cmd", b"", retain=True)
    other.publish("spd/v1/H1/CAB02/state", b"", retain=True)
    for c in (gw, other, spy):
        c.close()


def test_gateway_may_publish_acks_and_commands_and_read_events(
        secure: SecureBroker, certs: dict[str, TlsSettings]) -> None:
    gw = probe(secure, certs["gw"], "gw")
    gw.subscribe("spd/v1/H1/+/events")
    dev = probe(secure, certs["CAB02"], "CAB02")
    dev.subscribe("spd/v1/H1/CAB02/cmd")
    assert not gw.publish("spd/v1/H1/CAB02/cmd", b'{"c":1}').is_failure
    assert dev.wait_messages(1)[0][:2] == ("spd/v1/H1/CAB02/cmd", b'{"c":1}')
    assert not dev.publish("spd/v1/H1/CAB02/events", b'{"e":1}').is_failure
    assert gw.wait_messages(1)[0][:2] == ("spd/v1/H1/CAB02/events", b'{"e":1}')
    gw.close()
    dev.close()


def test_client_without_a_certificate_is_refused(secure: SecureBroker, certs: dict[str, TlsSettings]) -> None:
    p = probe(secure, certs["CAB01"], "nocert", tls_without_cert=True)
    assert not p.connected
    p.close()


def test_anonymous_plain_mqtt_is_refused(secure: SecureBroker) -> None:
    p = probe(secure, None, "anon")
    assert not p.connected
    assert p.connack is None
    p.close()


def test_certificate_from_another_ca_is_refused(secure: SecureBroker, tmp_path: Path) -> None:
    rogue_ca = SiteCA.create(tmp_path / "rogue", site=SITE)
    rogue = SecureBroker(rogue_ca, sites=(SITE,), workdir=tmp_path / "rogue-broker")  # only to mint a client cert
    tls = rogue.client_tls("CAB01")
    p = probe(secure, TlsSettings(str(secure.ca.ca_path), tls.cert_file, tls.key_file), "rogue")
    assert not p.connected
    p.close()
    rogue_ca.close()


def test_revoked_certificate_is_refused_once_the_broker_loads_the_crl(
        secure: SecureBroker, certs: dict[str, TlsSettings]) -> None:
    lost = secure.client_tls("CAB09")
    before = probe(secure, lost, "CAB09")
    assert before.connected
    before.close()
    assert secure.ca.revoke_name("CAB09") == 1
    secure.restart()  # production: systemctl restart mosquitto after the CRL changes (SIGHUP does not reread it)
    after = probe(secure, lost, "CAB09")
    assert not after.connected
    after.close()
    still = probe(secure, certs["CAB01"], "CAB01")
    assert still.connected
    still.close()


def test_acl_confines_devices_by_identity_and_site() -> None:
    acl = render_acl(["H1"])
    assert "pattern write spd/v1/H1/%u/events" in acl
    assert "pattern read spd/v1/H1/%u/cmd" in acl
    assert "user spd-gateway\ntopic read spd/v1/H1/+/events" in acl
    assert "#" not in acl.replace("# ", "").replace("'#'", "")


def test_gateway_role_name_cannot_be_taken_by_a_device(secure: SecureBroker) -> None:
    from gateway.pki import BadCsr, generate_key, make_csr

    key = generate_key()
    with pytest.raises(BadCsr):
        secure.ca.issue_from_csr(make_csr(key, "spd-gateway"), name="spd-gateway", role=CertRole.DEVICE)
