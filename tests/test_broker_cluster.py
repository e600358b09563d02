"""A clustered broker: the nodes listed in the configuration files, MQTT clients failing over between them, and
devices plus the real gateway on a three-node NATS cluster with one node SIGKILLed mid-run."""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device.config import parse_config_text
from gateway.config import read_gateway_file
from gateway.pki import CertRole, SiteCA, write_private_key
from hw_sim.broker import MosquittoBroker
from hw_sim.broker_cluster import ClusterTls, NatsCluster, find_nats_server
from hw_sim.cluster_run import ClusterRunConfig, failed, run_cluster
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.mqtt import Subscriptions, TlsSettings, make_client, parse_addresses, start_loop, stop_loop
from spd_common.toml_config import ConfigError

from conftest import wait_for


def _gateway_file(tmp_path: Path, broker: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(f'[store]\npath = "gw.db"\n\n[broker]\n{broker}\n', encoding="utf-8")
    return p


def test_the_gateway_file_names_a_clusters_nodes_and_its_mqtt_version(tmp_path: Path) -> None:
    fields = read_gateway_file(_gateway_file(
        tmp_path, 'hosts = ["10.0.0.1:1883", "10.0.0.2:1884", "broker-3.example:1885"]\nmqtt_version = "3.1.1"'))
    assert (fields["broker_host"], fields["broker_port"]) == ("10.0.0.1", 1883)
    assert fields["broker_fallbacks"] == (("10.0.0.2", 1884), ("broker-3.example", 1885))
    assert fields["mqtt_version"] == "3.1.1"


@pytest.mark.parametrize(("broker", "says"), [
    ('hosts = ["10.0.0.1:1883"]\nport = 1883', "not both"),
    ('hosts = ["10.0.0.1"]', "host:port"),
    ('hosts = ["10.0.0.1:1883", "10.0.0.1:1883"]', "named twice"),
    ("hosts = []", "at least one"),
    ('mqtt_version = "4"', "is not one of"),
    ('mqtt_version = "3.1.1"\nshare_group = "gws"', "needs mqtt_version"),
])
def test_a_wrong_cluster_setting_stops_the_gateway_with_its_key(tmp_path: Path, broker: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        read_gateway_file(_gateway_file(tmp_path, broker))


def test_the_device_file_names_a_clusters_nodes() -> None:
    text = ('[device]\nid = "HH01"\nsite = "H1"\ndata_dir = "/tmp/x"\n\n'
            '[broker]\nhosts = ["127.0.0.1:1883", "127.0.0.1:1884"]\nmqtt_version = "3.1.1"\n')
    cfg = parse_config_text(text)
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.fallbacks) == ("127.0.0.1", 1883, (("127.0.0.1", 1884),))
    assert cfg.broker.mqtt_version == "3.1.1"
    with pytest.raises(ConfigError, match="not both"):
        parse_config_text(text.replace("[broker]\n", '[broker]\nhost = "127.0.0.1"\n'))
    assert parse_addresses(["[::1]:1883"]) == (("::1", 1883),)


def test_a_client_moves_to_the_next_node_when_its_broker_dies_and_stays_stopped_when_told(tmp_path: Path) -> None:
    """Two private Mosquittos stand in for two nodes: the first is SIGKILLed, the client connects to the second."""
    first = MosquittoBroker(workdir=tmp_path / "b1").start()
    second = MosquittoBroker(workdir=tmp_path / "b2").start()
    connects: list[int] = []
    lock = threading.Condition()

    def on_connect(client: object, userdata: object, flags: object, rc: ReasonCode, props: object) -> None:
        with lock:
            connects.append(client.port)

    beat = HeartbeatRegistry().heartbeat("test-mqtt", deadline_s=60)
    client = make_client("failover-probe", version="3.1.1", reconnect_min_s=0.1, reconnect_max_s=0.5,
                         on_connect=on_connect, heartbeat=beat)
    try:
        start_loop(client, first.host, first.port, beat, fallbacks=[(second.host, second.port)], keepalive=10)
        wait_for(lambda: connects == [first.port], message="the first connect")
        first.kill()
        wait_for(lambda: connects[-1:] == [second.port], message="the connect to the second node")
        assert connects == [first.port, second.port]
        stop_loop(client, beat)
        second.kill()  # a stopped client does not come back to anyone
        first.start()
        assert not client.is_connected() and connects == [first.port, second.port]
    finally:
        stop_loop(client, beat)
        first.close()
        second.close()


@pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed (Debian package nats-server)")
def test_a_subscription_the_broker_refuses_is_asked_for_again_until_granted(tmp_path: Path) -> None:
    """A NATS node refuses a subscription (SUBACK 0x80) its user may not have, as a cluster node does while its
    JetStream catches up; the permission is then granted (configuration reloaded on SIGHUP) and the client gets
    the subscription without reconnecting."""
    def users(ack_allowed: bool) -> str:
        allow = ["spd.v1.H1.HH01.ack"] if ack_allowed else []
        return ('authorization { users: [{user: "HH01", password: "pw", permissions: {publish: ">", '
                f'subscribe: {{allow: {json.dumps([*allow, "$MQTT.sub.>"])}}}}}}}] }}')

    node = NatsCluster(nodes=1, workdir=tmp_path / "nats", authorization=users(False)).start()
    got: list[bytes] = []
    beat = HeartbeatRegistry().heartbeat("test-mqtt", deadline_s=60)
    client = make_client("dev-H1-HH01", version="3.1.1", heartbeat=beat,
                         on_message=lambda c, u, m: got.append(bytes(m.payload)))
    client.username_pw_set("HH01", "pw")
    subs = Subscriptions(client, retry_s=0.2)
    client.on_connect = lambda c, u, f, rc, p: subs.subscribe([("spd/v1/H1/HH01/ack", 1)])
    try:
        host, port = node.addresses[0]
        start_loop(client, host, port, beat, keepalive=10)
        wait_for(lambda: subs.refused >= 2, 20, message="the refusal and a retry")  # it keeps asking
        node.authorization = users(True)
        conf = node.nodes[0].conf_path
        conf.write_text(node.node_config(node.nodes[0]), encoding="utf-8")
        pid = node.nodes[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGHUP)  # nats-server reloads its configuration

        def delivered() -> bool:
            client.publish("spd/v1/H1/HH01/ack", b"ack", qos=1)
            return wait_until(lambda: bool(got), 0.5)

        wait_for(delivered, 20, interval=0.2, message="the retried subscription to deliver")
        assert got[0] == b"ack"
    finally:
        stop_loop(client, beat)
        node.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed (Debian package nats-server)")
def test_devices_and_gateway_on_a_nats_cluster_lose_and_double_nothing_when_the_gateways_node_is_killed(
    tmp_path: Path,
) -> None:
    """Three handhelds (the real device sync, MQTT 3.1.1) and the real gateway on three NATS nodes; the node the
    gateway is on is SIGKILLed mid-run and started again 2 s later: every scan stored once and charged once."""
    cfg = ClusterRunConfig(devices=3, scans=30, rate=5.0, kill_after_s=1.0, down_s=2.0, settle_timeout_s=40.0)
    out = run_cluster(cfg, tmp_path)
    assert out["killed"]["gateway_was_on_it"] and out["killed"]["devices_on_it"] == 1
    assert out["gateway_reconnect_s"] is not None and out["gateway_broker_connects"] >= 2
    assert out["scans"] == out["events"] == 90
    assert (out["stored"], out["charged"]) == (90, 90)
    assert (out["lost"], out["duplicates"], out["invented"], out["stored_twice"]) == (0, 0, 0, 0), out["lost_keys"]
    assert not failed(out)


class _Probe:
    """An MQTT 3.1.1 client over mutual TLS that records what the cluster answered."""

    def __init__(self, port: int, tls: TlsSettings | None, client_id: str, *, persistent: bool = False) -> None:
        self.connects: list[str] = []
        self.drops = 0
        self.subacks: list[list[bool]] = []
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=not persistent)
        if tls is not None:
            self.client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file or None, keyfile=tls.key_file or None,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.reconnect_delay_set(30, 60)  # a dropped probe stays dropped for the test
        self.client.on_connect = lambda c, u, f, rc, p: self.connects.append(str(rc))
        self.client.on_disconnect = lambda c, u, f, rc, p: setattr(self, "drops", self.drops + 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append([not r.is_failure for r in rcs])
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        try:
            self.client.connect("127.0.0.1", port, keepalive=10)
        except OSError:
            self.connects.append("refused")
        self.client.loop_start()

    def subscribe(self, *topics: str) -> list[bool]:
        n = len(self.subacks)
        self.client.subscribe([(t, 1) for t in topics])
        return wait_for(lambda: self.subacks[n] if len(self.subacks) > n else None, 15, message="a SUBACK")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.skipif(find_nats_server() is None, reason="nats-server is not installed (Debian package nats-server)")
def test_on_the_tls_cluster_a_device_reaches_only_its_own_topics_and_a_client_id_is_not_bound(tmp_path: Path) -> None:
    """Mutual TLS with the site CA's certificates, one account per site, per-device subjects: what NATS enforces,
    and the one thing it does not that Mosquitto's template does (docs/scale.md, "Security on the cluster")."""
    ca = SiteCA.create(tmp_path / "ca", site="H1")

    def issue(name: str, role: CertRole) -> TlsSettings:
        extra = {"dns_names": ("localhost",), "ip_addresses": ("127.0.0.1",)} if role is CertRole.SERVER else {}
        key, cert = ca.issue_with_new_key(name, role=role, **extra)  # type: ignore[arg-type]
        write_private_key(tmp_path / f"{name}.key", key)
        (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return TlsSettings(str(ca.ca_path), str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))

    server = issue("spd-broker", CertRole.SERVER)
    hh01, hh02 = issue("HH01", CertRole.DEVICE), issue("HH02", CertRole.DEVICE)
    gw_tls = issue("spd-gateway", CertRole.GATEWAY)
    tls = ClusterTls(ca.ca_path, Path(server.cert_file), Path(server.key_file),
                     devices=(("H1", "HH01"), ("H1", "HH02")), gateways=("spd-gateway",), sites=("H1",))
    probes: list[_Probe] = []
    with NatsCluster(workdir=tmp_path / "nats", tls=tls) as cluster:
        try:
            port = cluster.addresses[0][1]
            gw = _Probe(port, gw_tls, "spd-gateway", persistent=True)
            d1, d2 = _Probe(port, hh01, "dev-H1-HH01"), _Probe(port, hh02, "dev-H1-HH02")
            probes += [gw, d1, d2]
            wait_for(lambda: all(p.connects == ["Success"] for p in probes), 30, message="three TLS connects")
            assert gw.subscribe("spd/v1/+/+/events", "spd/v1/+/+/state") == [True, True]
            assert d1.subscribe("spd/v1/H1/HH01/ack") == [True]
            assert d2.subscribe("spd/v1/H1/HH02/ack") == [True]
            # another device's ack, everything, the broker's own delivery subjects: refused
            assert d1.subscribe("spd/v1/H1/HH02/ack") == [False]
            assert d1.subscribe("#") == [False]
            assert d1.subscribe("$MQTT/sub/#") == [False]

            d1.client.publish("spd/v1/H1/HH02/events", b"forged by HH01", qos=1)  # dropped: not HH01's subject
            d1.client.publish("spd/v1/H1/HH01/events", b"HH01's own", qos=1)
            d2.client.publish("spd/v1/H1/HH02/events", b"HH02's own", qos=1)
            wait_for(lambda: len(gw.messages) >= 2, 15, message="the two genuine batches at the gateway")
            gw.client.publish("spd/v1/H1/HH02/ack", b"ack for HH02", qos=1)
            wait_for(lambda: d2.messages, 15, message="HH02's ack")
            assert sorted(gw.messages) == [("spd/v1/H1/HH01/events", b"HH01's own"),
                                           ("spd/v1/H1/HH02/events", b"HH02's own")]
            assert d1.messages == []

            nocert = _Probe(port, TlsSettings(str(ca.ca_path), "", ""), "dev-H1-HH03")
            plain = _Probe(port, None, "dev-H1-HH04")
            probes += [nocert, plain]
            # the known limit: a device's certificate may ask for the gateway's client id and replaces its connection
            thief = _Probe(port, hh01, "spd-gateway")
            probes.append(thief)
            wait_for(lambda: thief.connects == ["Success"] and gw.drops == 1, 15, message="the take-over")
            assert "Success" not in nocert.connects + plain.connects
        finally:
            for p in probes:
                p.close()
