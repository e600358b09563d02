"""A private three-node NATS cluster with MQTT and JetStream on loopback, for the broker-cluster run and its test.

Mosquitto is one process: when it dies, every device and the gateway wait for
it. A NATS cluster keeps MQTT sessions, subscriptions, retained messages and
QoS 1 messages in JetStream streams replicated on three servers (R3, Raft), so
one server may die and the other two go on; the MQTT clients reconnect to
another node (``fallbacks`` in :mod:`spd_common.mqtt`) and find their session
there. Why NATS and not RabbitMQ, and what differs from Mosquitto, is in
docs/scale.md ("A clustered broker").

Each node is ``nats-server`` (the Debian package ``nats-server``) run as the
current user with a generated configuration in a work directory: its own
``server_name`` (JetStream in a cluster needs one), client, route, MQTT and
monitoring ports (free loopback ports, never fixed ones), and its own
JetStream store. Nothing touches a system instance the machine may run.

``kill(i)`` is SIGKILL (no flush, no goodbye to the routes); ``start_node(i)``
starts the same node again on the same ports and store, as a crashed server
coming back would, and it catches up from the others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hw_sim import reaper
from hw_sim.broker import BrokerError, free_port
from spd_common.wire import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

MQTT_VERSION = "3.1.1"
"""NATS speaks MQTT 3.1.1 only (a client asking for MQTT 5 is refused at CONNECT)."""


def find_nats_server() -> str | None:
    """The ``nats-server`` binary, or None when the package is not installed."""
    for candidate in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """Mutual TLS on every node's MQTT listener, one NATS account per site, one user per certificate.

    ``verify_and_map``: the client's certificate must come from ``ca_file`` and its subject (``CN=<name>``)
    (``CN=<name>,OU=<role>``, as :mod:`gateway.pki` issues them) must be a listed user, whose permissions
    then apply. MQTT topics are NATS subjects with ``/`` as ``.``.
    """

    ca_file: Path
    cert_file: Path  # the nodes' server certificate (127.0.0.1)
    key_file: Path
    devices: tuple[tuple[str, str], ...]  # (site, device id): the device's certificate CN is its id
    gateways: tuple[str, ...]  # the gateway identities' certificate CNs
    sites: tuple[str, ...]


def render_accounts(tls: ClusterTls) -> str:
    """One NATS account per site (hospital), each with its own subjects, MQTT sessions and JetStream streams,
    and in it one user per certificate: a device publishes only its events and state and reads only its ack
    and commands; the site's gateways read its devices' events and state and publish acks and commands.

    A QoS 1 subscription is a JetStream consumer that delivers on ``$MQTT.sub.<id>``, so every MQTT user
    needs subscribe rights there (NATS documents this); see docs/scale.md for what that allows.
    """
    def user(name: str, role: str, publish: list[str], subscribe: list[str]) -> str:
        # the user is the certificate's subject as RFC 2253 writes it (the site CA puts the role in OU)
        return (f'      {{user: "CN={name},OU={role}", allowed_connection_types: ["MQTT"], permissions: {{'
                f"publish: {{allow: {json.dumps(publish)}}}, "
                f"subscribe: {{allow: {json.dumps([*subscribe, '$MQTT.sub.>'])}}}}}}}")

    accounts = []
    for site in tls.sites:
        users = []
        for dev_site, dev in tls.devices:
            if dev_site == site:
                base = f"spd.v1.{site}.{dev}"
                users.append(user(dev, "device", [f"{base}.events", f"{base}.state"], [f"{base}.ack", f"{base}.cmd"]))
        for gw in tls.gateways:
            users.append(user(gw, "gateway", [f"spd.v1.{site}.*.ack", f"spd.v1.{site}.*.cmd"],
                              ["spd.v1.*.*.events", "spd.v1.*.*.state"]))  # its account holds only its site
        accounts.append(f"  {site}: {{\n    jetstream: enabled\n    users: [\n" + ",\n".join(users) + "\n    ]\n  }")
    return "accounts {\n" + "\n".join(accounts) + "\n}"


@dataclass(slots=True)
class NatsNode:
    """One server of the cluster: its name, ports and files."""

    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def conf_path(self) -> Path:
        return self.workdir / f"{self.name}.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def store_dir(self) -> Path:
        return self.workdir / f"{self.name}-jetstream"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None


class NatsCluster:
    """Three (or ``nodes``) ``nats-server`` processes on 127.0.0.1, routed to each other, MQTT on each.

    ``addresses`` are the MQTT listeners in node order: give a client the first as its broker and the
    rest as fallbacks (or rotate the list per client to spread them over the nodes).
    """

    host = "127.0.0.1"

    def __init__(self, *, nodes: int = 3, workdir: str | Path | None = None, cluster_name: str = "spd",
                 ack_wait_s: float = 10.0, extra_mqtt_config: str = "", extra_config: str = "",
                 tls: ClusterTls | None = None, authorization: str = "") -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        binary = find_nats_server()
        if binary is None:
            raise BrokerError("nats-server not found: install the Debian package 'nats-server' (make deps does it)")
        self.binary = binary
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="spd-nats-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster_name = cluster_name
        self.ack_wait_s = ack_wait_s
        self.extra_mqtt_config = extra_mqtt_config
        self.extra_config = extra_config
        self.tls = tls
        self.authorization = authorization  # a NATS authorization block (users, permissions), without TLS
        self.replicas = min(3, nodes)
        self.nodes = [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), free_port(), self.workdir)
                       for i in range(nodes)]

    # ------------------------------------------------------------ configuration

    def node_config(self, node: NatsNode) -> str:
        """The configuration file of ``node``: names, ports, JetStream store, routes to the others, MQTT."""
        routes = ", ".join(f"nats-route://{self.host}:{n.route_port}" for n in self.nodes if n is not node)
        return "\n".join([
            f"server_name: {node.name}",  # JetStream in a cluster requires a unique server name
            f"listen: {self.host}:{node.client_port}",
            f"http: {self.host}:{node.http_port}",  # monitoring: /healthz says when JetStream is current
            # the wire's largest batch and room for the topic, as Mosquitto's max_packet_size (NATS: 1 MB)
            f"max_payload: {MAX_PAYLOAD_BYTES + 64 * 1024}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(node.store_dir))}",
            "  max_memory_store: 64MB",
            "  max_file_store: 1GB",
            "}",
            *([] if len(self.nodes) == 1 else [  # one node (a test's): no cluster, JetStream stands alone
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: {self.host}:{node.route_port}",
                f"  routes: [{routes}]",
                "}",
            ]),
            "mqtt {",
            f"  listen: {self.host}:{node.mqtt_port}",
            # sessions, retained and QoS 1 messages kept on this many servers: one may die
            f"  stream_replicas: {self.replicas}",
            # a QoS 1 message a client has not acknowledged is sent again (DUP) after this long
            f'  ack_wait: "{self.ack_wait_s:g}s"',
            self._mqtt_tls(),
            self.extra_mqtt_config,
            "}",
            render_accounts(self.tls) if self.tls is not None else self.authorization,
            self.extra_config,
            "",
        ])

    def _mqtt_tls(self) -> str:
        if self.tls is None:
            return ""
        t = self.tls
        return "\n".join([
            "  tls {",
            f"    cert_file: {json.dumps(str(t.cert_file))}",
            f"    key_file: {json.dumps(str(t.key_file))}",
            f"    ca_file: {json.dumps(str(t.ca_file))}",
            "    verify_and_map: true  # a certificate from the site CA, whose subject is a listed user",
            "  }",
        ])

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        """Start every node and wait until each accepts an MQTT session (JetStream up and replicated)."""
        for i in range(len(self.nodes)):
            self._spawn(i)
        deadline = time.monotonic() + timeout_s
        for i in range(len(self.nodes)):
            self._wait_ready(i, deadline)
        return self

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        if node.running:
            return
        node.conf_path.write_text(self.node_config(node), encoding="utf-8")
        logf = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child
        node.proc = reaper.spawn([self.binary, "-c", str(node.conf_path)], stdout=logf, stderr=logf)
        logf.close()
        node.starts += 1

    def start_node(self, i: int, timeout_s: float = 30.0) -> bool:
        """Start node ``i`` again (same ports, same store): wait until it listens for MQTT, then up to
        ``timeout_s`` until its JetStream has caught up with the others (``/healthz``); whether it has.

        Under load a returning node may take longer to catch up (every stream and consumer); it serves
        MQTT meanwhile, so a run goes on either way.
        """
        self._spawn(i)
        node = self.nodes[i]
        deadline = time.monotonic() + timeout_s
        while not self._mqtt_listening(node):
            if node.proc is None or node.proc.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(f"nats-server {node.name} did not come back: {self.log_tail(i)}")
            time.sleep(0.05)
        while time.monotonic() < deadline:
            if self._healthy(node):
                return True
            time.sleep(0.1)
        return False

    def _wait_ready(self, i: int, deadline: float) -> None:
        node = self.nodes[i]
        while time.monotonic() < deadline:
            if node.proc is None or node.proc.poll() is not None:
                raise BrokerError(f"nats-server {node.name} exited: {self.log_tail(i)}")
            # with users only they may connect: then the health check and the listener must do
            closed = self.tls is not None or bool(self.authorization)
            if self._healthy(node) and (self._mqtt_listening(node) if closed else self._mqtt_session_ok(node)):
                log.debug("nats %s ready: mqtt %s:%d", node.name, self.host, node.mqtt_port)
                return
            time.sleep(0.1)
        raise BrokerError(f"nats-server {node.name} did not serve MQTT in time: {self.log_tail(i)}")

    def _healthy(self, node: NatsNode) -> bool:
        url = f"http://{self.host}:{node.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _mqtt_listening(self, node: NatsNode) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, node.mqtt_port), timeout=0.5):
            return True
        return False

    def _mqtt_session_ok(self, node: NatsNode, timeout_s: float = 5.0) -> bool:
        """An MQTT CONNECT is accepted: the node has JetStream and the MQTT streams it needs."""
        result: list[bool] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{node.name}-{os.getpid()}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.on_connect = lambda c, u, f, rc, p: result.append(not rc.is_failure)
        try:
            client.connect(self.host, node.mqtt_port, keepalive=10)
            end = time.monotonic() + timeout_s
            while not result and time.monotonic() < end:
                client.loop(0.1)
            client.disconnect()
        except OSError:
            return False
        return bool(result and result[0])

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: its clients' connections drop, nothing is flushed."""
        node = self.nodes[i]
        if node.proc is not None:
            reaper.stop(node.proc, sig=signal.SIGKILL)
        node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                reaper.stop(node.proc, sig=signal.SIGTERM, grace_s=5.0)
            node.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------ for clients and reports

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The MQTT listeners, in node order."""
        return [(self.host, n.mqtt_port) for n in self.nodes]

    def addresses_from(self, first: int) -> list[tuple[str, int]]:
        """The MQTT listeners starting at node ``first`` (a client's own node, then the others in turn)."""
        a = self.addresses
        return a[first % len(a):] + a[:first % len(a)]

    def node_of_port(self, port: int) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.mqtt_port == port)

    @property
    def pids(self) -> list[int]:
        return [p for p in (n.pid for n in self.nodes) if p is not None]

    def jetstream_info(self, i: int) -> dict[str, Any]:
        """Node ``i``'s ``/jsz`` monitoring document (accounts, streams, meta leader), {} if it does not answer."""
        url = f"http://{self.host}:{self.nodes[i].http_port}/jsz?accounts=true&streams=true"
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=2.0) as resp:
            return dict(json.loads(resp.read()))
        return {}

    def leaders(self, i: int) -> dict[str, str]:
        """Who leads JetStream's metadata (``"meta"``) and each MQTT stream, as node ``i`` sees it."""
        info = self.jetstream_info(i)
        out = {"meta": str(info.get("meta_cluster", {}).get("leader", ""))}
        for account in info.get("account_details", []):
            for stream in account.get("stream_detail", []):
                out[f"{account.get('name')}/{stream.get('name')}"] = str(stream.get("cluster", {}).get("leader", ""))
        return out

    def log_tail(self, i: int, chars: int = 2000) -> str:
        path = self.nodes[i].log_path
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

