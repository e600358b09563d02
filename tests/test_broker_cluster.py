"""A clustered broker: the nodes listed in the configuration files, MQTT clients failing over between them, and
devices plus the real gateway on a three-node NATS cluster with one node SIGKILLed mid-run."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from device.config import parse_config_text
from gateway.config import read_gateway_file
from hw_sim.broker import MosquittoBroker
from hw_sim.broker_cluster import find_nats_server
from hw_sim.cluster_run import ClusterRunConfig, failed, run_cluster
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.mqtt import make_client, parse_addresses, start_loop, stop_loop
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
