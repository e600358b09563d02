"""Device sync: ships the event log to the broker and applies the gateway's acks.

Threads (each owns what it names):

* paho's network thread — the MQTT socket; runs ``_on_connect``, ``_on_message``
  (ack → :meth:`EventLog.mark_acked`), ``_on_disconnect``.
* the sender thread — reads unacknowledged events from the log and publishes
  them in batches, keeping at most ``window`` batches beyond the last ack.

Both beat heartbeats (:mod:`spd_common.heartbeat`): ``sync-mqtt`` and ``sync-sender``.

Delivery is at-least-once: after every (re)connect, and whenever acks stop
coming for ``resend_after_s`` while a backlog exists, the sender rewinds to
the last acknowledged sequence and publishes everything after it again. The
gateway is idempotent on ``(device, seq)``, so duplicates are harmless. A
broker PUBACK moves nothing: only the gateway's ack marks rows acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from device import __version__
from device.eventlog import EventLog, EventLogError
from spd_common.heartbeat import MQTT_LOOP_DEADLINE_S, HeartbeatRegistry
from spd_common.mqtt import Address, Subscriptions, TlsSettings, make_client, start_loop, stop_loop
from spd_common.wire import (
    Channel,
    DeviceState,
    DeviceStatus,
    WireError,
    decode_ack,
    encode_batch,
    encode_state,
    topic,
)

log = logging.getLogger(__name__)

SENDER_DEADLINE_S = 60.0  # a pass every 0.5 s; a read of the log may wait on a busy SQLite (30 s)


@dataclass(slots=True)
class SyncStats:
    batches_sent: int = 0
    events_sent: int = 0
    rewinds: int = 0
    acks: int = 0
    bad_acks: int = 0
    connects: int = 0
    rejected_by_gateway: list[tuple[int, str]] = field(default_factory=list)


class DeviceSync:
    """Publishes a device's unacknowledged events and applies acks (QoS 1)."""

    def __init__(
        self,
        eventlog: EventLog,
        *,
        site: str,
        host: str,
        port: int,
        batch_size: int = 200,
        window: int = 4,
        resend_after_s: float = 5.0,
        state_every_s: float = 30.0,
        prune_every_s: float = 600.0,
        keepalive_s: int = 15,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        tls: TlsSettings | None = None,
        on_ack: Callable[[int], None] | None = None,
        on_command: Callable[[bytes, bool], None] | None = None,
        state_extra: Callable[[], dict[str, Any]] | None = None,
        heartbeats: HeartbeatRegistry | None = None,
        fallbacks: Sequence[Address] = (),
        mqtt_version: str = "5",
    ) -> None:
        """``fallbacks``: a broker cluster's other nodes, tried in turn after a drop; ``mqtt_version`` ``"3.1.1"``
        for an engine without MQTT 5 (the wire is the same: topics, QoS 1, retained state, last will)."""
        self.log = eventlog
        self.device = eventlog.device
        self.site = site
        self.host, self.port = host, port
        self.fallbacks = tuple(fallbacks)
        self.batch_size = batch_size
        self.window = window
        self.resend_after_s = resend_after_s
        self.state_every_s = state_every_s
        self.prune_every_s = prune_every_s
        self.keepalive_s = keepalive_s
        self.stats = SyncStats()
        self._on_ack_cb = on_ack
        self._on_command_cb = on_command  # (payload, retained) for each message on the cmd topic
        self._state_extra = state_extra
        self._t_events = topic(site, self.device, Channel.EVENTS)
        self._t_ack = topic(site, self.device, Channel.ACK)
        self._t_state = topic(site, self.device, Channel.STATE)
        self._t_cmd = topic(site, self.device, Channel.CMD)
        self._wake = threading.Condition()
        self._connected = False
        self._stopping = False
        self._sent_upto = 0
        self._last_progress = time.monotonic()
        self._thread: threading.Thread | None = None

        hb = heartbeats or HeartbeatRegistry()
        self._sender_beat = hb.heartbeat("sync-sender", deadline_s=SENDER_DEADLINE_S)
        # while the broker is away paho beats once per attempt: back-off plus the connect must fit
        self._mqtt_beat = hb.heartbeat("sync-mqtt", deadline_s=max(MQTT_LOOP_DEADLINE_S, reconnect_max_s + 30.0))
        client = make_client(f"dev-{site}-{self.device}", tls=tls, reconnect_min_s=reconnect_min_s,
                             reconnect_max_s=reconnect_max_s, on_connect=self._on_connect,
                             on_disconnect=self._on_disconnect, on_message=self._on_message, heartbeat=self._mqtt_beat,
                             version=mqtt_version)
        client.max_inflight_messages_set(window * 2)
        self._subscriptions = Subscriptions(client)  # a refused subscription is asked for again
        client.will_set(self._t_state, self._state_payload(DeviceStatus.OFFLINE), qos=1, retain=True)
        self._client = client

    # ------------------------------------------------------------ lifecycle

    def start(self) -> DeviceSync:
        self._sender_beat.watch()
        start_loop(self._client, self.host, self.port, self._mqtt_beat, fallbacks=self.fallbacks,
                   keepalive=self.keepalive_s)
        self._thread = threading.Thread(target=self._sender, name=f"sync-{self.device}", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, publish_offline: bool = True) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sender_beat.retire()
        if publish_offline and self._connected:
            info = self._client.publish(self._t_state, self._state_payload(DeviceStatus.OFFLINE), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        stop_loop(self._client, self._mqtt_beat)

    def notify(self) -> None:
        """Wake the sender: a new event was committed."""
        with self._wake:
            self._wake.notify_all()

    def publish_state(self) -> None:
        """Publish the retained online state now (e.g. right after a pushed component was applied)."""
        if self._connected and not self._stopping:
            self._client.publish(self._t_state, self._state_payload(DeviceStatus.ONLINE), qos=1, retain=True)

    @property
    def connected(self) -> bool:
        return self._connected

    # ------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            log.warning("device %s: broker refused connection: %s", self.device, rc)
            return
        self._subscriptions.subscribe([(self._t_ack, 1), *([(self._t_cmd, 1)] if self._on_command_cb else [])])
        client.publish(self._t_state, self._state_payload(DeviceStatus.ONLINE), qos=1, retain=True)
        with self._wake:
            self._connected = True
            self.stats.connects += 1
            self._sent_upto = self.log.acked_seq  # resend everything not yet acknowledged
            self._last_progress = time.monotonic()
            self._wake.notify_all()
        log.info("device %s: connected, backlog %d", self.device, self.log.backlog())

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        with self._wake:
            self._connected = False
        if not self._stopping:
            log.info("device %s: disconnected (%s); will reconnect", self.device, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._t_cmd and self._on_command_cb is not None:
            try:
                self._on_command_cb(bytes(msg.payload), bool(msg.retain))
            except Exception:
                log.exception("device %s: command handler failed", self.device)
            return
        try:
            ack = decode_ack(self.device, bytes(msg.payload))
        except WireError as err:
            self.stats.bad_acks += 1
            log.warning("device %s: ignored ack: %s", self.device, err)
            return
        try:
            newly = self.log.mark_acked(ack.acked)
        except EventLogError as err:
            self.stats.bad_acks += 1
            log.error("device %s: refused ack: %s", self.device, err)
            return
        except Exception:  # the log cannot write now (disk full, I/O error): the ack will come again
            log.exception("device %s: could not record ack %d", self.device, ack.acked)
            return
        for r in ack.rejected:
            self.stats.rejected_by_gateway.append((r.seq, r.reason))
            log.warning("device %s: gateway quarantined event %d: %s", self.device, r.seq, r.reason)
        self.stats.acks += 1
        with self._wake:
            if newly:
                self._last_progress = time.monotonic()
            self._wake.notify_all()
        if self._on_ack_cb is not None:
            try:
                self._on_ack_cb(ack.acked)
            except Exception:
                log.exception("on_ack callback failed")

    # ------------------------------------------------------------ sender thread

    def _sender(self) -> None:
        next_state = time.monotonic() + self.state_every_s
        next_prune = time.monotonic() + self.prune_every_s
        while True:
            self._sender_beat()
            with self._wake:
                if self._stopping:
                    return
                connected = self._connected
            try:
                sent = self._send_some() if connected else False
            except Exception:
                log.exception("device %s: sender pass failed", self.device)
                sent = False
            now = time.monotonic()
            if connected and now >= next_state:
                next_state = now + self.state_every_s
                self._client.publish(self._t_state, self._state_payload(DeviceStatus.ONLINE), qos=1, retain=True)
            if now >= next_prune:
                next_prune = now + self.prune_every_s
                try:
                    pruned = self.log.prune()
                    if pruned:
                        log.info("device %s: pruned %d acknowledged events past retention", self.device, pruned)
                except Exception:
                    log.exception("device %s: prune failed", self.device)
            if not sent:
                with self._wake:
                    if not self._stopping:
                        self._wake.wait(timeout=0.5)

    def _send_some(self) -> bool:
        acked = self.log.acked_seq
        with self._wake:
            if self._sent_upto < acked:
                self._sent_upto = acked
            stalled = time.monotonic() - self._last_progress > self.resend_after_s
            if stalled and self._sent_upto > acked:
                log.info("device %s: no ack progress for %.1fs, resending from %d", self.device,
                         self.resend_after_s, acked + 1)
                self.stats.rewinds += 1
                self._sent_upto = acked
                self._last_progress = time.monotonic()
            if self._sent_upto - acked >= self.window * self.batch_size:
                return False
            start = self._sent_upto
        events = self.log.unacked(after_seq=start, limit=self.batch_size)
        if not events:
            return False
        payload = encode_batch(self.site, self.device, events)
        info = self._client.publish(self._t_events, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        with self._wake:
            if self._sent_upto == start:  # not rewound meanwhile
                if start == acked:
                    self._last_progress = time.monotonic()
                self._sent_upto = events[-1].seq
        self.stats.batches_sent += 1
        self.stats.events_sent += len(events)
        return True

    def _state_payload(self, status: DeviceStatus) -> bytes:
        try:
            backlog = self.log.backlog()
        except Exception:  # the log may be closed while the will is built at shutdown
            backlog = 0
        extra: dict[str, Any] = {}
        if self._state_extra is not None:
            try:
                extra = self._state_extra()
            except Exception:
                log.exception("device %s: state_extra callback failed", self.device)
        return encode_state(
            DeviceState(self.device, status, backlog=backlog, version=__version__, ts_ms=int(time.time() * 1000),
                        extra=extra)
        )
