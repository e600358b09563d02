"""The MQTT client set-up every long-lived connection shares: MQTT 5, mutual TLS, reconnect delay, callbacks.

The device's sync (``device.sync``), the gateway's ingest (``gateway.ingest``) and fleet link
(``gateway.fleet``) and the simulators' probes get their paho client from :func:`make_client`, so
TLS, the reconnect back-off and the loop heartbeat are set the same way everywhere.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from spd_common.heartbeat import Heartbeat, watch_mqtt_loop

Callback = Callable[..., None]


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
) -> mqtt.Client:
    """A paho client (callback API 2, MQTT 5), not yet connected.

    ``tls`` turns on TLS with the CA and, unless ``client_cert`` is false (a probe that must be
    refused), this client's certificate. paho reconnects by itself, waiting between
    ``reconnect_min_s`` and ``reconnect_max_s`` (doubling). ``heartbeat`` beats on every pass of
    the network loop (:func:`spd_common.heartbeat.watch_mqtt_loop`): keep ``reconnect_max_s`` well
    within its deadline.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
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


def start_loop(client: mqtt.Client, host: str, port: int, heartbeat: Heartbeat, **connect: Any) -> None:
    """Connect in the background (paho retries by itself), watch the loop's heartbeat, start the network thread."""
    client.connect_async(host, port, **connect)
    heartbeat.watch()
    client.loop_start()


def stop_loop(client: mqtt.Client, heartbeat: Heartbeat) -> None:
    """Retire the loop's heartbeat (a stopped loop is not a wedged one), disconnect, end the network thread."""
    heartbeat.retire()
    client.disconnect()
    client.loop_stop()
