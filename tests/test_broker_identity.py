"""One stolen device certificate against a real TLS Mosquitto rendered from the deploy template.

Mosquitto 2.0 lets a certificate-authenticated client ask for any client id, and
a second connection with an id already connected closes the first. The
deployed listener sets ``use_username_as_clientid`` on top of
``use_identity_as_username``: a connection's client id is its certificate's
common name, whatever id it asks for. These tests play the attacker: CB01's
certificate asking for the gateway's ids and CB02's, while a gateway and CB02
keep talking; then the other things one device certificate might try.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.broker_acl import GATEWAY_CLI_IDENTITY, fleet_identity
from gateway.pki import GATEWAY_IDENTITY, SiteCA
from hw_sim.secure_broker import MqttProbe, SecureBroker
from spd_common.mqtt import TlsSettings
from spd_common.wire import MAX_PAYLOAD_BYTES

SITE = "H1"
EVENTS = f"spd/v1/{SITE}/+/events"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SecureBroker]:
    ca = SiteCA.create(tmp_path / "ca", site=SITE)
    b = SecureBroker(ca, sites=(SITE,), workdir=tmp_path / "broker").start()
    yield b
    b.close()
    ca.close()


class Pair:
    """A gateway and CB02 connected as they are in production, and a way to show both still talk."""

    def __init__(self, b: SecureBroker, *, share_group: str | None = None) -> None:
        self.b = b
        self.gw = MqttProbe(b.host, b.port, tls=b.gateway_tls(), client_id=GATEWAY_IDENTITY, session_expiry_s=3600)
        self.cb02 = MqttProbe(b.host, b.port, tls=b.client_tls("CB02"), client_id=f"dev-{SITE}-CB02")
        assert self.gw.connected and self.cb02.connected
        self.gw.subscribe(f"$share/{share_group}/{EVENTS}" if share_group else EVENTS)
        self.cb02.subscribe(f"spd/v1/{SITE}/CB02/ack")
        self.rounds = 0

    def round_trip(self) -> None:
        """CB02 sends an event batch, the gateway acks it: both must still hold their connections."""
        self.rounds += 1
        n = self.rounds
        assert not self.cb02.publish(f"spd/v1/{SITE}/CB02/events", f'{{"n":{n}}}'.encode()).is_failure
        with self.gw._cond:
            self.gw._cond.wait_for(lambda: len(self._batches()) >= n, self.gw.timeout_s)
        got = self._batches()
        assert len(got) == n, f"the gateway received {len(got)} of {n} batches"
        assert not self.gw.publish(f"spd/v1/{SITE}/CB02/ack", f'{{"upto":{n}}}'.encode()).is_failure
        acks = [m for m in self.cb02.wait_messages(n) if m[0].endswith("/ack")]
        assert len(acks) == n, f"CB02 received {len(acks)} of {n} acks"

    def _batches(self) -> list[bytes]:
        return [p for t, p, _ in self.gw.messages if t == f"spd/v1/{SITE}/CB02/events"]

    def assert_undisturbed(self) -> None:
        assert (self.gw.connects, self.gw.disconnects) == (1, 0), "the gateway lost its connection"
        assert (self.cb02.connects, self.cb02.disconnects) == (1, 0), "CB02 lost its connection"

    def close(self) -> None:
        self.gw.close()
        self.cb02.close()


def attacker(b: SecureBroker, tls: TlsSettings, client_id: str, **kw: object) -> MqttProbe:
    p = MqttProbe(b.host, b.port, tls=tls, client_id=client_id, **kw)  # type: ignore[arg-type]
    assert p.connected, f"CB01's certificate is valid: it may connect, as itself ({p.error})"
    return p


@pytest.mark.parametrize("taken", [GATEWAY_IDENTITY, fleet_identity(GATEWAY_IDENTITY), GATEWAY_CLI_IDENTITY,
                                   f"dev-{SITE}-CB02", "CB02"])
def test_a_device_certificate_cannot_take_another_identitys_client_id(broker: SecureBroker, taken: str) -> None:
    pair = Pair(broker)
    pair.round_trip()
    # mosquitto_sub --cert CB01.crt -i spd-gateway -c -V mqttv5 -x 3600: a persistent session under that id
    thief = attacker(broker, broker.client_tls("CB01"), taken, session_expiry_s=3600)
    for _ in range(3):  # paho reconnects within 0.2-0.5 s: a kicked connection would fight back by now
        pair.round_trip()
    assert (thief.connects, thief.disconnects) == (1, 0), "the thief was never fought off: it holds its own id"
    pair.assert_undisturbed()
    log = broker.log_path.read_text()
    assert "already connected, closing old connection" not in log
    assert "as CB01 (p5, c0, k10, u'CB01')" in log, "the broker named the connection after its certificate"
    thief.close()
    pair.close()


def test_the_gateways_persistent_session_stays_the_gateways(broker: SecureBroker) -> None:
    gw = MqttProbe(broker.host, broker.port, tls=broker.gateway_tls(), client_id=GATEWAY_IDENTITY,
                   session_expiry_s=3600)
    gw.subscribe(EVENTS)
    gw.close()  # the gateway restarts: the broker queues its events meanwhile
    cb02 = MqttProbe(broker.host, broker.port, tls=broker.client_tls("CB02"), client_id="CB02")
    for n in range(3):
        assert not cb02.publish(f"spd/v1/{SITE}/CB02/events", f'{{"n":{n}}}'.encode()).is_failure
    thief = attacker(broker, broker.client_tls("CB01"), GATEWAY_IDENTITY, session_expiry_s=3600)
    assert thief.wait_messages(1, timeout_s=0.5) == []
    assert thief.connack is not None and thief.client._sock is not None
    thief.close()
    back = MqttProbe(broker.host, broker.port, tls=broker.gateway_tls(), client_id=GATEWAY_IDENTITY,
                     session_expiry_s=3600)
    got = back.wait_messages(3)
    assert [p for _, p, _ in got] == [b'{"n":0}', b'{"n":1}', b'{"n":2}'], "the queued events reached the gateway"
    back.close()
    cb02.close()


def test_a_device_subscribing_to_a_share_group_takes_nothing_from_a_single_gateway(broker: SecureBroker) -> None:
    pair = Pair(broker)  # the deployed gateway (spd-gateway service) subscribes without a share group
    thief = attacker(broker, broker.client_tls("CB01"), "CB01")
    for group in ("spd", "gw", "x"):
        thief.subscribe(f"$share/{group}/{EVENTS}")
    for _ in range(4):
        pair.round_trip()
    assert thief.messages == []
    pair.assert_undisturbed()
    thief.close()
    pair.close()


@pytest.mark.xfail(strict=True, reason="Mosquitto 2.0's acl_file grants every SUBSCRIBE; a shared group hands "
                   "a batch to a member the ACL then refuses, and that batch waits for the device's re-send")
def test_a_device_cannot_join_the_gateways_share_group_to_delay_events(broker: SecureBroker) -> None:
    pair = Pair(broker, share_group="spd")
    thief = attacker(broker, broker.client_tls("CB01"), "CB01")
    thief.subscribe(f"$share/spd/{EVENTS}")
    pair.gw.timeout_s = 1.0
    try:
        for _ in range(4):  # round robin would hand the thief every other batch
            pair.round_trip()
    finally:
        assert thief.messages == []
        thief.close()
        pair.close()


def test_a_device_will_on_another_devices_topic_is_not_delivered(broker: SecureBroker) -> None:
    pair = Pair(broker)
    pair.gw.subscribe(f"spd/v1/{SITE}/+/state")
    thief = MqttProbe(broker.host, broker.port, tls=broker.client_tls("CB01"), client_id="CB01",
                      will=(f"spd/v1/{SITE}/CB02/state", b'{"status":"offline"}'))
    if thief.connected:  # refused outright is as good
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.reasoncodes import ReasonCode
        thief.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        thief.client.loop_stop()
    pair.round_trip()  # anything the broker sent the gateway before this batch has arrived
    assert [t for t, _, _ in pair.gw.messages if t.endswith("/state")] == []
    pair.assert_undisturbed()
    pair.close()


def test_a_device_cannot_flood_the_gateway_with_an_oversized_message(broker: SecureBroker) -> None:
    pair = Pair(broker)
    thief = attacker(broker, broker.client_tls("CB01"), "CB01")
    biggest = b"x" * MAX_PAYLOAD_BYTES  # the largest payload the wire format accepts still passes
    assert not thief.publish(f"spd/v1/{SITE}/CB01/events", biggest).is_failure
    assert len(pair.gw.wait_messages(1, timeout_s=10)) == 1
    thief.client.publish(f"spd/v1/{SITE}/CB01/events", b"x" * (MAX_PAYLOAD_BYTES + 64 * 1024), qos=1)
    with thief._cond:
        thief._cond.wait_for(lambda: thief.disconnects > 0, 10)
    assert thief.disconnects >= 1, "the broker closed the connection that sent an oversized packet"
    pair.round_trip()
    assert [len(p) for t, p, _ in pair.gw.messages if "CB01" in t] == [MAX_PAYLOAD_BYTES]
    pair.assert_undisturbed()
    thief.client.loop_stop()
    pair.close()


def test_the_rendered_listener_ties_client_ids_to_certificates_and_bounds_packets(tmp_path: Path) -> None:
    from gateway.broker_acl import DEFAULT_TEMPLATE, MAX_PACKET_SIZE, BrokerPaths, render_config

    paths = BrokerPaths(*(tmp_path / n for n in ("ca", "crt", "key", "crl", "acl", "data")))
    lines = render_config(DEFAULT_TEMPLATE.read_text(), paths).splitlines()
    for setting in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                    f"max_packet_size {MAX_PACKET_SIZE}", "allow_anonymous false"):
        assert setting in lines


def test_the_acl_gives_each_gateway_connection_the_gateways_rights_and_devices_only_their_own() -> None:
    from gateway.broker_acl import render_acl

    acl = render_acl(["H1"], gateways=["spd-gateway-a", "spd-gateway-b"])
    users = [line.split()[1] for line in acl.splitlines() if line.startswith("user ")]
    assert users == ["spd-gateway-a", "spd-gateway-a-fleet", "spd-gateway-b", "spd-gateway-b-fleet",
                     "spd-gateway-cli"]
    assert acl.count("topic write spd/v1/H1/+/cmd") == 5
    assert "user spd-gateway\n" not in acl  # only the instances named


def test_broker_acl_command_names_the_instances(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import build_parser

    a = build_parser().parse_args(["broker-acl", "--site", "H1", "--gateway", "spd-gateway-a"])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "user spd-gateway-a-fleet\n" in out and "user spd-gateway-cli\n" in out


@pytest.mark.parametrize("name", ["spd-gateway-fleet", "spd-gateway-cli", "spd-gateway-2", "SPD-gateway"])
def test_no_device_may_be_named_like_a_gateway_identity(broker: SecureBroker, name: str) -> None:
    from gateway.pki import BadCsr, CertRole, generate_key, make_csr

    with pytest.raises(BadCsr):
        broker.ca.issue_from_csr(make_csr(generate_key(), name), name=name, role=CertRole.DEVICE)


def test_a_tls_gateway_with_a_fleet_link_needs_the_fleet_links_own_certificate(broker: SecureBroker,
                                                                                tmp_path: Path) -> None:
    from gateway.app import GatewayConfig, make_fleet_link
    from gateway.commands import generate_signing_key
    from gateway.store import GatewayStore

    generate_signing_key(tmp_path / "k")
    store = GatewayStore(tmp_path / "gw.db")
    cfg = GatewayConfig(db_path=tmp_path / "gw.db", broker_port=broker.port, tls=broker.gateway_tls(),
                        signing_key=tmp_path / "k")
    with pytest.raises(ValueError, match="spd-gateway-fleet"):
        make_fleet_link(store, cfg)
    store.close()


def test_doctor_on_a_running_device_passes_and_the_device_takes_its_connection_back(
        broker: SecureBroker, tmp_path: Path) -> None:
    """The doctor logs in with the device's own certificate, so it now shares the device's client id."""
    import time
    from types import SimpleNamespace

    from device.commands.doctor import Status, check_broker
    from device.eventlog import EventLog
    from device.sync import DeviceSync
    from gateway.ingest import IngestService
    from gateway.store import GatewayStore

    tls = broker.client_tls("CB03")
    store = GatewayStore(tmp_path / "gw.db")
    gw = IngestService(store, host=broker.host, port=broker.port, tls=broker.gateway_tls()).start()
    log = EventLog(tmp_path / "CB03.db", device="CB03")
    sync = DeviceSync(log, site=SITE, host=broker.host, port=broker.port, tls=tls).start()
    try:
        assert gw.wait_connected()
        cfg = SimpleNamespace(device_id="CB03", site=SITE, broker=SimpleNamespace(
            host=broker.host, port=broker.port,
            tls=SimpleNamespace(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)))
        findings = check_broker(cfg)  # type: ignore[arg-type]
        assert [f.status for f in findings] == [Status.OK] * 3, findings
        for i in range(5):
            log.append("access", {"badge": f"B{i}", "outcome": "granted"})
        deadline = time.monotonic() + 30
        while (log.backlog() or store.counts()["events"] < 5) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (log.backlog(), store.counts()["events"]) == (0, 5), "the device delivered after the doctor left"
    finally:
        sync.stop()
        gw.stop()
        log.close()
        store.close()


def test_the_deployed_gateway_and_a_device_keep_their_connections_while_a_thief_tries_their_ids(
        broker: SecureBroker, tmp_path: Path) -> None:
    """The real gateway (ingest and fleet link, each on its own certificate) and a real device sync."""
    import time

    from device.eventlog import EventLog
    from device.sync import DeviceSync
    from gateway.app import Gateway, GatewayConfig
    from gateway.commands import generate_signing_key
    from hw_sim.broker import free_port

    generate_signing_key(tmp_path / "signing.key")
    gateway = Gateway(GatewayConfig(db_path=tmp_path / "gw.db", broker_host=broker.host, broker_port=broker.port,
                                    tls=broker.gateway_tls(), fleet_tls=broker.gateway_tls("spd-gateway-fleet"),
                                    signing_key=tmp_path / "signing.key", his_port=free_port())).start()
    log = EventLog(tmp_path / "CB02.db", device="CB02")
    sync = DeviceSync(log, site=SITE, host=broker.host, port=broker.port, tls=broker.client_tls("CB02"),
                      reconnect_min_s=0.2, reconnect_max_s=0.5).start()
    thieves: list[MqttProbe] = []
    try:
        assert gateway.ingest.wait_connected() and gateway.fleet_link is not None
        assert gateway.fleet_link.wait_connected()
        stolen = broker.client_tls("CB01")
        for n, taken in enumerate(["spd-gateway", "spd-gateway-fleet", "dev-H1-CB02", "CB02"]):
            if thieves:  # one at a time: two on CB01's certificate would close each other (same identity)
                thieves[-1].close()
            thieves.append(attacker(broker, stolen, taken, session_expiry_s=3600))
            for i in range(5):
                log.append("access", {"badge": f"B{n}{i}", "outcome": "granted"})
            deadline = time.monotonic() + 30
            while (log.backlog() or gateway.store.counts()["events"] < 5 * (n + 1)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (log.backlog(), gateway.store.counts()["events"]) == (0, 5 * (n + 1))
        assert sync.stats.connects == 1, "the device kept its one connection"
        connected = [line.split(" as ")[1].split(" ")[0] for line in broker.log_path.read_text().splitlines()
                     if "New client connected" in line]
        assert sorted(connected) == ["CB01", "CB01", "CB01", "CB01", "CB02", "spd-gateway", "spd-gateway-fleet"]
        assert [(t.connects, t.disconnects) for t in thieves] == [(1, 1)] * 3 + [(1, 0)], "never fought off"
    finally:
        for t in thieves:
            t.close()
        sync.stop()
        gateway.stop()
        log.close()
