"""Signed lockdown and credential rotation on a running cabinet, over a TLS broker, with the gateway's fleet."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_remote_wiring import SITE, RunningCabinet, free_port, high_spans

from device.commands.run import run
from gateway.app import Gateway, GatewayConfig
from gateway.broker_acl import GATEWAY_CLI_IDENTITY, fleet_identity
from gateway.commands import CommandSigner, generate_signing_key, public_key_pem
from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
from gateway.fleet import Fleet
from gateway.pki import GATEWAY_IDENTITY, SiteCA, common_name
from hw_sim.secure_broker import MqttProbe, SecureBroker
from spd_common.command_schema import CommandKind

from conftest import LogWatch, wait_for

BADGE = "04A1B2C3"


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = SiteCA.create(root / "ca", site=SITE)
        self.broker = SecureBroker(self.ca, sites=(SITE,), workdir=root / "broker").start()
        self.key = generate_signing_key(root / "command-signing.key")
        self.command_key = root / "command-key.pem"
        self.command_key.write_bytes(public_key_pem(self.key))
        self.gw_tls = self.broker.gateway_tls(GATEWAY_CLI_IDENTITY)  # the probes' own: the gateway has its own two
        self.gateway = Gateway(GatewayConfig(db_path=root / "gateway.db", broker_host=self.broker.host,
                                             broker_port=self.broker.port, tls=self.broker.gateway_tls(),
                                             fleet_tls=self.broker.gateway_tls(fleet_identity(GATEWAY_IDENTITY)),
                                             signing_key=root / "command-signing.key", his_port=free_port())).start()
        assert self.gateway.fleet_link is not None and self.gateway.fleet_link.wait_connected()
        assert self.gateway.fleet is not None
        self.fleet: Fleet = self.gateway.fleet
        self.tokens = EnrolmentTokens(root / "tokens.db")
        self.enrol = EnrolmentService(self.ca, self.tokens, EnrolmentSettings(
            self.broker.host, self.broker.port, public_key_pem(self.key))).start()
        self.cab = RunningCabinet(root, self.broker, "CAB01", self.command_key).start()
        self.exit_codes: list[int] = []
        wait_for(lambda: (SITE, "CAB01") in self.fleet.known(), message="CAB01 reporting its state")

    def restart_cabinet(self, *, already_stopping: bool = False) -> None:
        """Stop ``spd-device run`` (unless it is stopping by itself) and start it again on the same files."""
        cab = self.cab
        if not already_stopping:
            cab.stop_event.set()
        cab.thread.join(15)
        assert not cab.thread.is_alive()
        cab.stop_event = threading.Event()

        def target() -> None:
            self.exit_codes.append(run(cab.config, stop=cab.stop_event, pin_factory=cab.factory))

        cab.thread = threading.Thread(target=target, daemon=True)
        snapshot = cab.data / "inventory.json"
        counted_before = snapshot.stat().st_mtime_ns
        with LogWatch("device.hal.scanner") as scanners:
            cab.thread.start()
            scanners.wait(f"scanner {cab.scanner.url} online")  # the badge reader has opened its port
        # the start-up count (changes made while the agent was down) is recorded before a badge is served
        wait_for(lambda: snapshot.stat().st_mtime_ns != counted_before, message="the start-up count")

    def close(self) -> None:
        self.cab.stop()
        self.enrol.stop()
        self.gateway.stop()
        self.broker.close()
        self.tokens.close()
        self.ca.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("lockdown"))
    yield e
    e.close()


def test_lockdown_refuses_badges_across_a_restart_until_lifted(env: Env) -> None:
    cab = env.cab
    t0, m = cab.factory.clock.now(), cab.mark()
    seq = env.fleet.lockdown(SITE, "CAB01", on=True, reason="theft suspected", requested_by="security.wu")
    cab.wait_events("access", lambda b: b.get("type") == "lockdown", "lockdown applied", after=m)
    cab.badge(BADGE)
    refused = cab.wait_events("access", lambda b: b.get("result") == "refused", "badge refused", after=m)
    assert refused == [{"result": "refused", "dept": "ICU-2", "reason": "lockdown", "badge": BADGE}]
    env.fleet.unlock(SITE, "CAB01", seconds=5, requested_by="nurse.li")
    cab.wait_events("access", lambda b: b.get("via") == "remote", "remote unlock refused", after=m)

    env.restart_cabinet()
    m2 = cab.mark()
    cab.badge(BADGE)
    again = cab.wait_events("access", lambda b: b.get("result") == "refused", "refused after restart", after=m2)
    assert [b["reason"] for b in again] == ["lockdown"]
    time.sleep(0.3)
    assert high_spans(cab.lock, t0) == []  # the relay was never energised
    access = [b for b in cab.events("access", after=m) if b.get("type") != "remote_command"]
    assert [(b.get("type"), b.get("result"), b.get("reason")) for b in access] == [
        ("lockdown", None, "theft suspected"), (None, "refused", "lockdown"), (None, "refused", "lockdown"),
        (None, "refused", "lockdown")]
    assert access[0]["seq"] == seq and access[0]["on"] is True

    probe = MqttProbe(env.broker.host, env.broker.port, tls=env.gw_tls, client_id="gw-lockdown-probe")
    probe.subscribe("spd/v1/H1/CAB01/state")
    state = json.loads(wait_for(lambda: [m for m in probe.messages if b'"online"' in m[1]], message="state")[-1][1])
    probe.close()
    assert state["extra"]["lockdown"]["reason"] == "theft suspected"

    m3 = cab.mark()
    env.fleet.lockdown(SITE, "CAB01", on=False, reason="all clear", requested_by="security.wu")
    cab.wait_events("access", lambda b: b.get("type") == "lockdown", "lockdown lifted", after=m3)
    cab.badge(BADGE)
    granted = cab.wait_events("access", lambda b: b.get("result") == "granted", "badge opens again", after=m3)
    assert granted[0]["user"] == "N0001"
    wait_for(lambda: cab.lock.level, message="the relay energised")
    cab.wait_events("access", lambda b: b.get("result") == "expired", "the unlock runs out", after=m3)


def test_forged_and_expired_lockdowns_are_refused(env: Env) -> None:
    cab = env.cab
    m = cab.mark()
    probe = MqttProbe(env.broker.host, env.broker.port, tls=env.gw_tls, client_id="gw-forge-probe")
    assert probe.connected
    genuine, rogue = CommandSigner(env.key), CommandSigner(Ed25519PrivateKey.generate())
    seq = 2_000_000
    args = {"on": True, "reason": "x"}
    for p in (rogue.sign(CommandKind.LOCKDOWN, device="CAB01", site=SITE, seq=seq, requested_by="i", args=args),
              genuine.sign(CommandKind.LOCKDOWN, device="CAB01", site=SITE, seq=seq, requested_by="i", args=args,
                           lifetime_ms=60_000, now_ms=int(time.time() * 1000) - 300_000)):
        assert not probe.publish("spd/v1/H1/CAB01/cmd", p).is_failure
    probe.close()
    refused = cab.wait_events("alarm", lambda b: b.get("type") == "command_refused", "two refusals", after=m, n=2)
    assert [(b["reason"], b["cmd"]) for b in refused] == [("bad_signature", "lockdown"), ("expired", "lockdown")]
    assert [b for b in cab.events("access", after=m) if b.get("type") == "lockdown"] == []


def test_rotation_installs_a_new_certificate_revokes_the_old_and_reconnects(env: Env) -> None:
    cab = env.cab
    cfg_text = cab.config.read_text(encoding="utf-8")
    cert_path = Path(next(line.split('"')[1] for line in cfg_text.splitlines() if line.startswith("cert_file")))
    key_path = Path(next(line.split('"')[1] for line in cfg_text.splitlines() if line.startswith("key_file")))
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    m = cab.mark()
    env.fleet.rotate(SITE, "CAB01", enrol_url=env.enrol.url, requested_by="ops")
    rotated = cab.wait_events("access", lambda b: b.get("type") == "credentials_rotated", "rotated", after=m)[0]
    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert new.serial_number != old.serial_number and common_name(new) == common_name(old) == "CAB01"
    assert rotated["old_serial"] == format(old.serial_number, "x")
    assert rotated["serial"] == format(new.serial_number, "x")
    assert key_path.stat().st_mode & 0o777 == 0o600
    crl = x509.load_pem_x509_crl(env.ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None

    env.restart_cabinet(already_stopping=True)  # the agent stopped itself for the service manager to restart
    m2 = cab.mark()
    cab.badge(BADGE)  # a new event, delivered to the gateway over TLS with the new pair
    cab.wait_events("access", lambda b: b.get("result") == "granted", "badge after rotation", after=m2)
    wait_for(lambda: env.gateway.store._engine.query(
        "SELECT 1 FROM events WHERE device = 'CAB01' AND kind = 'access' AND seq > ? AND body LIKE '%granted%'",
        (m2,)), message="the new event delivered with the rotated credentials", timeout=15)


def test_rotation_with_the_service_unreachable_keeps_the_credentials_and_raises_an_alarm(env: Env) -> None:
    cab = env.cab
    cfg_text = cab.config.read_text(encoding="utf-8")
    cert_path = Path(next(line.split('"')[1] for line in cfg_text.splitlines() if line.startswith("cert_file")))
    before = cert_path.read_bytes()
    m = cab.mark()
    env.fleet.rotate(SITE, "CAB01", enrol_url=f"https://127.0.0.1:{free_port()}", requested_by="ops")
    alarm = cab.wait_events("alarm", lambda b: b.get("type") == "rotation_failed", "the failure recorded", after=m)
    assert alarm[0]["reason"] == "unreachable"
    assert cert_path.read_bytes() == before
    assert not cert_path.with_name(cert_path.name + ".new").exists()
