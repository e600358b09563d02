"""Gateway ingest: MQTT events in, stored once in a group commit, then a cumulative ack out.

paho's network thread decodes each message and queues it (:mod:`gateway.group_commit`, bounded); the
``ingest-writer`` thread takes what is queued — many batches from many devices — stores every
event batch in ONE transaction (:meth:`EventStore.ingest_group`: group commit, a bad event still
quarantined alone), commits, and only then publishes each batch's ack with the highest contiguous sequence
stored for its device, and acknowledges the messages to the broker (MQTT PUBACK, manual ack). The broker
sends at most ``queue_size`` unacknowledged messages (the MQTT 5 Receive Maximum this client announces),
so under load the rest wait at the broker: back-pressure, not loss or growing memory.

A malformed payload is stored in ``bad_payloads`` with its reason, logged and counted; ingestion goes on. A
malformed event is kept in quarantine with its reason and the rest of its batch is stored and acknowledged.
Only a failure of the store itself withholds the acks (of the whole group): the devices resend and nothing
is lost. A crash after the commit and before the acks loses nothing either: the broker redelivers the
messages not yet PUBACKed, or the devices resend, and the store keeps each ``(device, seq)`` once.

:meth:`IngestService.handle_group` is the whole path from messages to acks; :meth:`IngestService.handle`
is a group of one, which the ingest fuzzer (``hw_sim/fuzz_ingest.py``) drives with a publish function of
its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.data.events import IngestResult
from gateway.group_commit import GroupWriter
from gateway.store import GatewayStore
from spd_common.heartbeat import MQTT_LOOP_DEADLINE_S, HeartbeatRegistry
from spd_common.mqtt import Address, Subscriptions, TlsSettings, is_mqtt5, make_client, start_loop, stop_loop
from spd_common.wire import (
    Ack,
    Batch,
    Channel,
    DeviceState,
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
    groups: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


Decoded = Batch | DeviceState | Exception | None
"""What a message carries (:func:`decode_inbound`): an event batch, a device state, nothing to store (an empty
retained state), or the fault found decoding it."""


def decode_inbound(topic_text: str, payload: bytes) -> Decoded:
    """Decode a message from the broker; never raises. A fault of the payload is returned as its
    :class:`WireError`, a fault of the decoder itself (a bug) as whatever it raised: the writer handles both,
    as it handles the messages it decodes itself."""
    try:
        addr = parse_topic(topic_text)
        if addr.channel is Channel.EVENTS:
            return decode_batch(topic_text, payload)
        if addr.channel is Channel.STATE and payload:  # an empty retained message clears state
            return decode_state(topic_text, payload)
        return None
    except Exception as err:
        return err


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from the broker, queued for the writer; ``settle`` acknowledges it to the broker.
    ``decoded``: ``(what it carries,)`` when decoded before it was queued, else None (the writer decodes it)."""

    topic: str
    payload: bytes
    retained: bool = False
    settle: Callable[[], None] | None = None
    decoded: tuple[Decoded] | None = None


DEFAULT_QUEUE_SIZE = 1024
"""Messages (event batches, states) the broker may hand the gateway before they are stored and acknowledged.
The broker sends no more until the group holding them is committed, so this window must cover what arrives
during one commit: 1,000 devices sending one-event batches at 1/s, with commits of up to half a second on a
loaded disk, need 500; 256 was measured to choke there."""
QUEUE_SLACK = 2
"""The writer's queue holds this many times the Receive Maximum (messages of an old connection still queued
while the broker redelivers them on the new one, retained states sent at subscription)."""
ACK_INFLIGHT = 100
"""Acks published at QoS 1 and not yet acknowledged by the broker. The broker's own Receive Maximum
(Mosquitto: ``max_inflight_messages``, 100 in deploy/mosquitto) must not be exceeded. Since the acks no
longer share paho's network thread with storing, the broker's PUBACKs come back within a round trip and 100
carries tens of thousands of acks a second."""
DEFAULT_MAX_GROUP = 1024
"""Most messages stored in one transaction."""
MAX_GROUP_BYTES = 8 * 1024 * 1024
"""A group also ends at this many payload bytes (some 20,000 events in large batches)."""


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
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_group: int = DEFAULT_MAX_GROUP,
        group_in_turn: bool = False,
    ) -> None:
        """``publish(topic, payload)`` sends an ack; by default on this service's MQTT client at QoS 1.

        ``fallbacks``: the other nodes of a clustered broker, tried in turn when the connection drops;
        ``mqtt_version`` ``"3.1.1"`` for an engine without MQTT 5 (no shared subscription then).

        ``queue_size``: messages the broker may hand the gateway before they are stored and acknowledged
        (the MQTT 5 Receive Maximum; the writer's queue holds as many). ``max_group``: most messages stored
        in one transaction. ``group_in_turn``: take each group once the store's writers' turn is had
        (:meth:`gateway.data.engine.Engine.writers_turn`), for a process that shares a SQLite file with
        other writing processes (the gateway's ``ingest`` part); it holds the store's connection from then
        on, so where other loops share that connection (one process) they would wait on a group's decoding.
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
        self.queue_size = queue_size
        heartbeats = heartbeats or HeartbeatRegistry()
        self._beat = heartbeats.heartbeat("ingest-mqtt", deadline_s=MQTT_LOOP_DEADLINE_S)
        # room for more than the broker may send: a broker that hands over retained messages or redelivers
        # after a reconnect beyond the Receive Maximum must not block paho's thread (its keepalive) for long
        self.writer: GroupWriter[Inbound] = GroupWriter(self.handle_group, capacity=QUEUE_SLACK * queue_size,
                                                         max_group=max_group, heartbeats=heartbeats,
                                                         weight=lambda m: len(m.payload),
                                                         max_group_weight=MAX_GROUP_BYTES,
                                                         turn=store.writers_turn if group_in_turn else None)
        self._session = 0  # the broker connection a queued message came on (its mid means nothing on another)
        client = make_client(client_id, tls=tls, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                             on_message=self._on_message, heartbeat=self._beat, version=mqtt_version,
                             persistent_session=True)
        client.max_inflight_messages_set(ACK_INFLIGHT)
        client.manual_ack_set(True)  # PUBACK once the message's group is committed (or refused), not on arrival
        self._subscriptions = Subscriptions(client)  # a refused subscription is asked for again
        self._client = client

    def start(self) -> IngestService:
        session: dict[str, Any] = {}  # MQTT 3.1.1: the client was made with clean session off
        if is_mqtt5(self._client):
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600  # the broker queues events while the gateway restarts
            props.ReceiveMaximum = self.queue_size  # no more unacknowledged messages than the writer's queue holds
            session = {"clean_start": False, "properties": props}
        self.writer.start()
        start_loop(self._client, self.host, self.port, self._beat, fallbacks=self.fallbacks, keepalive=15, **session)
        return self

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        stop_loop(self._client, self._beat)
        self.writer.stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            log.error("gateway: broker refused connection: %s", rc)
            return
        self._session += 1
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        if receive_max is not None and int(receive_max) < ACK_INFLIGHT:
            log.warning("gateway: the broker takes %s unacknowledged messages, fewer than the %d acks this gateway "
                        "keeps in flight; raise its max_inflight_messages", receive_max, ACK_INFLIGHT)
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
        settle = None
        if msg.qos > 0:
            session, mid, qos = self._session, msg.mid, msg.qos

            def settle() -> None:
                if session == self._session:  # on a new connection the broker redelivers it anyway
                    client.ack(mid, qos)

        payload = bytes(msg.payload)
        # decoded here, in paho's network thread: the writer's thread then only stores, and a group's
        # decoding runs while the writer waits for the store with the previous one
        self.writer.put(Inbound(msg.topic, payload, bool(msg.retain), settle, (decode_inbound(msg.topic, payload),)))

    def handle(self, topic_text: str, payload: bytes, *, retained: bool = False) -> None:
        """One message from the broker, handled at once as a group of one (see :meth:`handle_group`).

        ``retained``: the broker replayed a stored message at subscription; a replayed state does not
        make its device seen now.
        """
        self.handle_group([Inbound(topic_text, payload, retained)])

    def handle_group(self, messages: list[Inbound]) -> None:
        """Messages from the broker: event batches stored in one transaction, then acked; states recorded.

        A payload-level fault is recorded in ``bad_payloads`` and not acked; a failure of the store is
        logged and nothing of the group is acked (the devices resend). A batch that failed in the store for
        any other reason (a bug) is rolled back alone and not acked, the rest of the group is acked, and
        then its exception escapes. Every message is then settled with
        the broker, whatever became of it: an unsettled message would hold a place of the Receive Maximum.
        """
        batches: list[tuple[str, Batch]] = []
        states: list[tuple[str, DeviceState, bool]] = []
        try:
            for m in messages:
                decoded = m.decoded[0] if m.decoded is not None else decode_inbound(m.topic, m.payload)
                if isinstance(decoded, Batch):
                    batches.append((m.topic, decoded))
                elif isinstance(decoded, DeviceState):
                    states.append((parse_topic(m.topic).site, decoded, not m.retained))
                elif isinstance(decoded, WireError):
                    self._bad(m.topic, decoded.reason, decoded.detail, m.payload)
                elif decoded is not None:  # the decoder failed (a bug): the group fails, as it did in the writer
                    raise decoded
            if batches:
                self._store_and_ack(batches)
            if states:  # after the events' acks; the group's states in one transaction
                self._store_states(states)
        finally:
            for m in messages:
                if m.settle is not None:
                    m.settle()

    def _store_and_ack(self, batches: list[tuple[str, Batch]]) -> None:
        try:
            results = self.store.ingest_group([b for _, b in batches])
        except self.store.store_faults:
            # storage failed: nothing of the group is committed, no ack goes out, the devices resend
            self.stats.store_failures += 1
            log.exception("gateway: store failed on a group of %d batches; not acknowledged", len(batches))
            return
        self.stats.groups += 1
        new = 0
        bugs: list[Exception] = []
        for (topic_text, batch), res in zip(batches, results, strict=True):
            if not isinstance(res, IngestResult):
                log.error("gateway: batch on %s not stored (%r); not acknowledged", topic_text, res)
                bugs.append(res)
                continue
            self._count(res)
            ack = Ack(batch.device, res.contiguous, tuple(res.rejected))
            self._publish(topic(batch.site, batch.device, Channel.ACK), encode_ack(ack))
            self.stats.acks_sent += 1
            new += res.new
        if new and self._on_stored is not None:
            self._on_stored(new)
        if bugs:  # the other batches are stored and acked; a batch the store could not take is a bug: it escapes
            raise bugs[0]

    def _store_states(self, states: list[tuple[str, DeviceState, bool]]) -> None:
        try:
            self.store.update_device_states(states)
        except self.store.store_faults:
            self.stats.store_failures += 1
            log.exception("gateway: store failed on %d device states", len(states))

    def _count(self, res: IngestResult) -> None:
        self.stats.batches += 1
        self.stats.events_new += res.new
        self.stats.events_duplicate += res.duplicates
        self.stats.quarantined += res.quarantined
        self.stats.unidentified += res.unidentified
        self.stats.chain_breaks += len(res.chain_breaks)
        for r in res.rejected:
            self.stats.reasons[r.reason] = self.stats.reasons.get(r.reason, 0) + 1

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
