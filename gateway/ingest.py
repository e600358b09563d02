"""Gateway ingest: MQTT events in, stored once, then a cumulative ack out.

Runs on paho's network thread: decode → :meth:`GatewayStore.ingest` (one
committed transaction) → publish the ack with the highest contiguous sequence
stored for that device. A malformed payload is stored in ``bad_payloads``
with its reason, logged and counted; ingestion goes on. A malformed event is
kept in quarantine with its reason and the rest of its batch is stored and
acknowledged. Only a failure of the store itself withholds the ack: the
device resends and nothing is lost.

:meth:`IngestService.handle` is the whole path from topic and payload to the
ack; the MQTT callback only calls it, and the ingest fuzzer
(``hw_sim/fuzz_ingest.py``) drives it with a publish function of its own.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.store import GatewayStore
from spd_common.heartbeat import MQTT_LOOP_DEADLINE_S, HeartbeatRegistry
from spd_common.mqtt import Address, Subscriptions, TlsSettings, is_mqtt5, make_client, start_loop, stop_loop
from spd_common.wire import (
    Ack,
    Channel,
    WireError,
    decode_batch,
    decode_state,
    encode_ack,
    parse_topic,
    subscription,
    topic,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestStats:
    batches: int = 0
    events_new: int = 0
    events_duplicate: int = 0
    quarantined: int = 0
    unidentified: int = 0  # refused events without a usable seq (kept in bad_payloads)
    bad_payloads: int = 0
    acks_sent: int = 0
    chain_breaks: int = 0
    store_failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class IngestService:
    """Subscribes to every device's events and state, stores, acks."""

    def __init__(
        self,
        store: GatewayStore,
        *,
        host: str,
        port: int,
        client_id: str = "spd-gateway",
        share_group: str | None = None,
        tls: TlsSettings | None = None,
        on_stored: Callable[[int], None] | None = None,
        heartbeats: HeartbeatRegistry | None = None,
        publish: Callable[[str, bytes], None] | None = None,
        fallbacks: Sequence[Address] = (),
        mqtt_version: str = "5",
    ) -> None:
        """``publish(topic, payload)`` sends an ack; by default on this service's MQTT client at QoS 1.

        ``fallbacks``: the other nodes of a clustered broker, tried in turn when the connection drops;
        ``mqtt_version`` ``"3.1.1"`` for an engine without MQTT 5 (no shared subscription then).
        """
        if share_group is not None and mqtt_version != "5":
            raise ValueError("a shared subscription (share_group) needs MQTT 5")
        self.store = store
        self._publish = publish if publish is not None else self._publish_mqtt
        self.stats = IngestStats()
        self.share_group = share_group
        self._on_stored = on_stored
        self._connected = threading.Event()
        self.host, self.port = host, port
        self.fallbacks = tuple(fallbacks)
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat("ingest-mqtt", deadline_s=MQTT_LOOP_DEADLINE_S)
        client = make_client(client_id, tls=tls, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                             on_message=self._on_message, heartbeat=self._beat, version=mqtt_version,
                             persistent_session=True)
        client.max_inflight_messages_set(100)
        self._subscriptions = Subscriptions(client)  # a refused subscription is asked for again
        self._client = client

    def start(self) -> IngestService:
        session: dict[str, Any] = {}  # MQTT 3.1.1: the client was made with clean session off
        if is_mqtt5(self._client):
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600  # the broker queues events while the gateway restarts
            session = {"clean_start": False, "properties": props}
        start_loop(self._client, self.host, self.port, self._beat, fallbacks=self.fallbacks, keepalive=15, **session)
        return self

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        stop_loop(self._client, self._beat)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            log.error("gateway: broker refused connection: %s", rc)
            return
        self._subscriptions.subscribe(
            [
                (subscription(Channel.EVENTS, share_group=self.share_group), 1),
                (subscription(Channel.STATE), 1),
            ]
        )
        self._connected.set()
        log.info("gateway: connected to %s:%d", client.host, client.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self._connected.clear()
        log.info("gateway: disconnected from broker (%s)", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload), retained=bool(msg.retain))
        except Exception:  # a bug: logged, no ack, and paho's network thread lives on
            log.exception("gateway: failed to handle message on %s", msg.topic)

    def handle(self, topic_text: str, payload: bytes, *, retained: bool = False) -> None:
        """One message from the broker: an events batch is stored and acked, a state recorded.

        ``retained``: the broker replayed a stored message at subscription; a replayed state does not
        make its device seen now.

        A payload-level fault is recorded in ``bad_payloads`` and not acked; a
        failure of the store is logged and not acked (the device resends).
        Anything else that escapes is a bug.
        """
        try:
            addr = parse_topic(topic_text)
            if addr.channel is Channel.EVENTS:
                self._handle_events(topic_text, payload)
            elif addr.channel is Channel.STATE and payload:  # an empty retained message clears state
                self.store.update_device_state(addr.site, decode_state(topic_text, payload), live=not retained)
        except WireError as err:
            self._bad(topic_text, err.reason, err.detail, payload)
        except (sqlite3.Error, OSError, MemoryError):
            # storage failed: nothing of the batch is committed, no ack goes out, the device resends
            self.stats.store_failures += 1
            log.exception("gateway: store failed while handling %s; not acknowledged", topic_text)

    def _handle_events(self, topic_text: str, payload: bytes) -> None:
        batch = decode_batch(topic_text, payload)
        res = self.store.ingest(batch)
        self.stats.batches += 1
        self.stats.events_new += res.new
        self.stats.events_duplicate += res.duplicates
        self.stats.quarantined += res.quarantined
        self.stats.unidentified += res.unidentified
        self.stats.chain_breaks += len(res.chain_breaks)
        for r in res.rejected:
            self.stats.reasons[r.reason] = self.stats.reasons.get(r.reason, 0) + 1
        ack = Ack(batch.device, res.contiguous, tuple(res.rejected))
        self._publish(topic(batch.site, batch.device, Channel.ACK), encode_ack(ack))
        self.stats.acks_sent += 1
        if res.new and self._on_stored is not None:
            self._on_stored(res.new)

    def _publish_mqtt(self, topic_text: str, payload: bytes) -> None:
        self._client.publish(topic_text, payload, qos=1)

    def _bad(self, topic_text: str, reason: str, detail: str, payload: bytes) -> None:
        self.stats.bad_payloads += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        log.warning("gateway: rejected payload on %s: %s: %s", topic_text, reason, detail)
        try:
            self.store.record_bad_payload(topic_text, reason, detail, payload)
        except Exception:
            log.exception("gateway: could not record bad payload")
