"""The MQTT client set-up every long-lived connection shares: MQTT 5, mutual TLS, reconnect delay, callbacks.

The device's sync (``device.sync``), the gateway's ingest (``gateway.ingest``) and fleet link
(``gateway.fleet``) and the simulators' probes get their paho client from :func:`make_client`, so
TLS, the reconnect back-off and the loop heartbeat are set the same way everywhere.

Two settings exist for a clustered broker (docs/scale.md): the MQTT version (``"5"``, the default, or
``"3.1.1"`` for an engine whose MQTT side speaks only that, as NATS does) and the other nodes of the
cluster (``fallbacks`` of :func:`start_loop`): when a connection drops or an attempt fails, the next
connection attempt goes to the next address, round the list.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from spd_common.heartbeat import Heartbeat, watch_mqtt_loop

log = logging.getLogger(__name__)

Callback = Callable[..., None]
Address = tuple[str, int]

_HOST = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")

MQTT_VERSIONS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
"""The MQTT versions a client may speak, by their name in the configuration files."""


def parse_address(text: str) -> Address:
    """``host:port`` (an IPv6 host in brackets) as a pair; ValueError if it is not one."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    if not _HOST.match(host):
        raise ValueError(f"not a host name or address: {host!r}")
    return host, int(port)


def parse_addresses(items: object) -> tuple[Address, ...]:
    """A broker cluster's nodes from a configuration list of ``"host:port"`` strings (at least one, no repeats)."""
    if not isinstance(items, list) or not items:
        raise ValueError('must be a list of at least one "host:port"')
    nodes: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f'each entry is a "host:port" string, got {item!r}')
        node = parse_address(item)
        if node in nodes:
            raise ValueError(f"{item!r} is named twice")
        nodes.append(node)
    return tuple(nodes)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Mutual TLS: the CA that signed the broker, and this client's own key pair (PEM file paths)."""

    ca_file: str
    cert_file: str
    key_file: str


def make_client(
    client_id: str,
    *,
    tls: TlsSettings | None = None,
    client_cert: bool = True,
    reconnect_min_s: float = 0.5,
    reconnect_max_s: float = 10.0,
    on_connect: Callback | None = None,
    on_disconnect: Callback | None = None,
    on_message: Callback | None = None,
    heartbeat: Heartbeat | None = None,
    version: str = "5",
    persistent_session: bool = False,
) -> mqtt.Client:
    """A paho client (callback API 2, MQTT 5 unless ``version`` is ``"3.1.1"``), not yet connected.

    ``persistent_session`` matters only for MQTT 3.1.1, where it is fixed here (clean session off: the
    broker keeps the subscriptions and queues QoS 1 messages while the client is away); with MQTT 5 the
    caller asks for it at connect (``clean_start`` and a session expiry).

    ``tls`` turns on TLS with the CA and, unless ``client_cert`` is false (a probe that must be
    refused), this client's certificate. paho reconnects by itself, waiting between
    ``reconnect_min_s`` and ``reconnect_max_s`` (doubling). ``heartbeat`` beats on every pass of
    the network loop (:func:`spd_common.heartbeat.watch_mqtt_loop`): keep ``reconnect_max_s`` well
    within its deadline.
    """
    if version not in MQTT_VERSIONS:
        raise ValueError(f"MQTT version must be one of {sorted(MQTT_VERSIONS)}, got {version!r}")
    protocol = MQTT_VERSIONS[version]
    session: dict[str, Any] = {"clean_session": not persistent_session} if protocol != mqtt.MQTTv5 else {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **session)
    client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
    if tls is not None:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file if client_cert else None,
                       keyfile=tls.key_file if client_cert else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    callbacks: dict[str, Any] = {"on_connect": on_connect, "on_disconnect": on_disconnect, "on_message": on_message}
    for name, callback in callbacks.items():
        if callback is not None:
            setattr(client, name, callback)
    if heartbeat is not None:
        watch_mqtt_loop(client, heartbeat)
    return client


def is_mqtt5(client: mqtt.Client) -> bool:
    return bool(client.protocol == mqtt.MQTTv5)


def start_loop(client: mqtt.Client, host: str, port: int, heartbeat: Heartbeat, *,
               fallbacks: Sequence[Address] = (), **connect: Any) -> None:
    """Connect in the background (paho retries by itself), watch the loop's heartbeat, start the network thread.

    ``fallbacks``: the other nodes of a broker cluster; see :func:`fail_over`.
    """
    if fallbacks:
        fail_over(client, [(host, port), *fallbacks], connect)
    client.connect_async(host, port, **connect)
    heartbeat.watch()
    client.loop_start()


def fail_over(client: mqtt.Client, addresses: Sequence[Address], connect: dict[str, Any]) -> None:
    """After a dropped connection or a failed attempt, make paho's next attempt go to the next address.

    paho's loop reconnects (after its back-off) to the address of the last ``connect_async``; this
    calls it again, with the same ``connect`` arguments, for the next address round ``addresses``. The
    client's own ``on_disconnect`` still runs first. The session (MQTT 5 session expiry, or 3.1.1 clean
    session off) is the cluster's, so the client finds it again on the other node.
    """
    ring = list(addresses)
    at = [0]
    user_on_disconnect = cast("Callback | None", client.on_disconnect)

    def next_address(*_: Any) -> None:
        at[0] = (at[0] + 1) % len(ring)
        host, port = ring[at[0]]
        log.debug("mqtt: next attempt to %s:%d", host, port)
        client.connect_async(host, port, **connect)

    def on_disconnect(c: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if user_on_disconnect is not None:
            user_on_disconnect(c, userdata, flags, rc, props)
        if rc.is_failure:  # not the client's own disconnect (stop_loop), which must stay ended
            next_address()

    client.on_disconnect = on_disconnect
    client.on_connect_fail = next_address


class Subscriptions:
    """A client's subscriptions, asked for again when the broker refuses one.

    A clustered broker may refuse a subscription it cannot set up at that moment (NATS, while a node's
    JetStream is away, answers the SUBACK with 0x80); without its ack topic a device would send and never
    hear back. A refused topic is asked for again after ``retry_s`` while the connection lasts (a new
    connection subscribes everything anyway, from ``on_connect``).
    """

    def __init__(self, client: mqtt.Client, *, retry_s: float = 1.0) -> None:
        self._client = client
        self._retry_s = retry_s
        self._asked: dict[int, list[tuple[str, int]]] = {}
        self._lock = threading.Lock()
        self.refused = 0
        client.on_subscribe = self._on_subscribe

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        with self._lock:  # the SUBACK may come before paho's subscribe returns the mid
            result, mid = self._client.subscribe(topics)
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._asked[mid] = topics

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      props: Any) -> None:
        with self._lock:
            topics = self._asked.pop(mid, [])
        refused = [t for t, rc in zip(topics, reason_codes, strict=False) if rc.is_failure]
        if refused:
            self.refused += len(refused)
            log.warning("mqtt: the broker refused the subscription to %s; asking again in %.1f s",
                        ", ".join(t for t, _ in refused), self._retry_s)
            timer = threading.Timer(self._retry_s, self._again, (refused,))
            timer.daemon = True
            timer.start()

    def _again(self, topics: list[tuple[str, int]]) -> None:
        if self._client.is_connected():
            self.subscribe(topics)


def stop_loop(client: mqtt.Client, heartbeat: Heartbeat) -> None:
    """Retire the loop's heartbeat (a stopped loop is not a wedged one), disconnect, end the network thread."""
    heartbeat.retire()
    client.disconnect()
    client.loop_stop()
