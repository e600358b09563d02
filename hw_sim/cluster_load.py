"""The load generator on the three-node NATS cluster: many devices at the wire, one node SIGKILLed mid-run.

``spd-sim cluster-run --loadgen --devices 300 --rate 1 --duration 30`` runs
:mod:`hw_sim.loadgen`'s devices (one gmqtt connection each, hash-chained
batches, acks honoured, rewind and resend) against :class:`hw_sim.cluster_run.ClusterHarness`
— the cluster, the simulated HIS and the real gateway — instead of a
private Mosquitto. Each device speaks MQTT 3.1.1 (NATS has no MQTT 5),
starts on node *i* mod 3, and moves to the next node when a connection
attempt fails; ``kill_at_s`` into the scanning the node the gateway is on
(or the one named) is SIGKILLed and started again ``down_s`` later. The figures are the load
generator's (latencies, tally: lost, duplicated, invented) plus the kill.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gmqtt import Client as MqttClient
from gmqtt import Message
from gmqtt.mqtt.constants import MQTTv311

from hw_sim.broker_cluster import NatsCluster
from hw_sim.catalog import SimCatalogItem, sim_catalog
from hw_sim.cluster_run import ClusterHarness
from hw_sim.loadgen import (
    LoadConfig,
    LoadGenerator,
    RunTimes,
    SimDevice,
    Target,
    raise_fd_limit,
    run_load,
    wait_gateway_connected,
)

Address = tuple[str, int]


class FailoverMqttClient(MqttClient):  # type: ignore[misc]
    """gmqtt's client given a cluster's nodes: a connection attempt that fails moves the next one to the next node.

    gmqtt reconnects by itself to the address of its ``connect``; this changes that address when the
    attempt fails (the node is gone), so its next retry goes elsewhere.
    """

    def __init__(self, client_id: str, nodes: list[Address], **kw: Any) -> None:
        super().__init__(client_id, **kw)
        self.nodes = nodes
        self.at = 0

    async def _create_connection(self, host: str, port: int, ssl: Any, clean_session: bool, keepalive: int) -> Any:
        try:
            return await super()._create_connection(host, port, ssl, clean_session, keepalive)
        except OSError:
            self.at = (self.at + 1) % len(self.nodes)
            self._host, self._port = self.nodes[self.at]
            raise


class ClusterSimDevice(SimDevice):
    """A load-generator device on a cluster: its own node first, the others in turn; MQTT 3.1.1."""

    def __init__(self, device: str, cfg: LoadConfig, catalog: list[SimCatalogItem], nodes: list[Address]) -> None:
        self.nodes = nodes
        self.subscriptions_refused = 0
        super().__init__(device, cfg, catalog, *nodes[0])
        self.client.on_subscribe = self._on_subscribe

    def _on_subscribe(self, client: Any, mid: int, granted: Any, properties: Any) -> None:
        """A refused ack subscription (0x80: the node's JetStream is not ready) is asked for again, as the device
        agent does (:class:`spd_common.mqtt.Subscriptions`)."""
        if any(int(q) >= 0x80 for q in granted):
            self.subscriptions_refused += 1
            asyncio.get_running_loop().call_later(1.0, self._subscribe_again)

    def _subscribe_again(self) -> None:
        if self.connected:
            self.client.subscribe(self._t_ack, qos=1)

    def make_client(self, client_id: str, *, will_message: Message) -> MqttClient:
        return FailoverMqttClient(client_id, self.nodes, will_message=will_message)

    async def connect(self) -> None:
        await self.client.connect(self.host, self.port, keepalive=self.cfg.keepalive_s, version=MQTTv311)


class ClusterLoadGenerator(LoadGenerator):
    """The load generator with :class:`ClusterSimDevice` devices spread over the cluster's nodes."""

    def __init__(self, cfg: LoadConfig, cluster: NatsCluster) -> None:
        catalog = sim_catalog()
        self.cfg = cfg
        self.devices = [ClusterSimDevice(d, cfg, catalog, cluster.addresses_from(i))
                        for i, d in enumerate(cfg.device_ids())]
        self.times = RunTimes()


def run_cluster_load(cfg: LoadConfig, workdir: Path, *, kill_at_s: float, down_s: float,
                     kill: int | None = None) -> dict[str, Any]:
    """Start the cluster, the HIS and the gateway, run the load, kill node ``kill`` (default: the gateway's)
    ``kill_at_s`` into the scanning, and start it again ``down_s`` later (0: it stays down)."""
    raise_fd_limit(2 * cfg.devices + 1024)
    cluster = NatsCluster(workdir=workdir / "nats")
    h = ClusterHarness(workdir, cluster, site=cfg.site)
    killed: dict[str, Any] = {}
    try:
        h.start()
        wait_gateway_connected(h)
        assert h.gateway is not None and h.gateway.proc is not None

        def kill_node() -> None:
            victim = h.gateway_node() if kill is None else kill
            connects = h.gateway_connects()
            killed["node"] = cluster.nodes[victim].name
            killed["gateway_was_on_it"] = h.gateway_node() == victim
            killed["it_led"] = sorted(k for k, v in cluster.leaders(victim).items() if v == killed["node"])
            t_kill = time.time()
            cluster.kill(victim)
            if killed["gateway_was_on_it"]:
                deadline = time.monotonic() + 60
                while h.gateway_connects() <= connects and time.monotonic() < deadline:
                    time.sleep(0.05)
                killed["gateway_reconnect_s"] = round(time.time() - t_kill, 2)
            if down_s > 0:
                time.sleep(max(0.0, t_kill + down_s - time.time()))
                t_start = time.time()
                caught_up = cluster.start_node(victim)
                killed["restarted_after_s"] = round(t_start - t_kill, 2)
                killed["caught_up_s"] = round(time.time() - t_start, 2) if caught_up else None

        target = Target(cluster.host, cluster.addresses[0][1], h.gateway_db, h.his_db,
                        gateway_pid=h.gateway.proc.pid)
        gen = ClusterLoadGenerator(cfg, cluster)
        out_devices = [d for d in gen.devices if isinstance(d, ClusterSimDevice)]
        out = run_load(cfg, target, during=kill_node, during_at_s=kill_at_s, generator=gen)
        refused = sum(d.subscriptions_refused for d in out_devices)
        out.update({"subscriptions_refused_and_asked_again": refused,
                    "figure": "load_broker_cluster", "engine": "nats-server", "nodes": len(cluster.nodes),
                    "mqtt_version": "3.1.1", "killed": killed, "gateway_broker_connects": h.gateway_connects()})
        return out
    finally:
        h.close()
