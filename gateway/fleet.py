"""The device fleet: registry, versioned config/catalog/allow-list pushes as retained signed commands, and the listing.

Desired state is kept per device and component with an increasing version.
A push signs one ``desired_state`` command carrying every component of that
device and publishes it retained on the device's ``cmd`` topic, so a device
that was offline gets it when it reconnects. Devices report the versions
they applied in their state (``extra.applied``); a device that comes online
behind its desired versions gets the desired state re-signed and re-sent
(a retained command older than its lifetime would be refused as expired).

Threads: :class:`FleetLink` runs paho's network thread (state in, commands
out); :class:`Fleet` methods may be called from it and from the CLI.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from gateway.audit import AuditAction, AuditLog, device_alarm_counts
from gateway.commands import CommandSequence, CommandSigner
from gateway.store import GatewayStore
from spd_common.command_schema import CommandKind, Component
from spd_common.heartbeat import MQTT_LOOP_DEADLINE_S, HeartbeatRegistry
from spd_common.mqtt import Address, TlsSettings, make_client, start_loop, stop_loop
from spd_common.wire import Channel, DeviceState, DeviceStatus, WireError, decode_state, subscription, topic

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]
"""(topic, payload, retain) -> None; QoS 1."""


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One line of ``spd-gateway devices``."""

    device: str
    site: str
    status: str  # online / offline / unknown
    last_seen: float | None
    version: str
    backlog: int
    alarms: int
    desired: dict[str, int]
    applied: dict[str, int]

    @property
    def in_sync(self) -> bool:
        return all(self.applied.get(c, 0) >= v for c, v in self.desired.items())


class Fleet:
    """Registry and pushes over one gateway store."""

    def __init__(self, store: GatewayStore, signer: CommandSigner, publish: Publish, *, audit: AuditLog | None = None,
                 offline_after_s: float = 120.0, resend_after_s: float = 300.0) -> None:
        self.store = store
        self.signer = signer
        self.publish = publish
        self.audit = audit or AuditLog(store)
        self.sequence = CommandSequence(store)
        self.offline_after_s = offline_after_s
        self.resend_after_s = resend_after_s
        self._last_sent: dict[str, float] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ pushes and commands

    def register(self, site: str, device: str) -> None:
        """Make a device known before it ever reports (at enrolment)."""
        self.store.devices.register(site, device)

    def known(self) -> list[tuple[str, str]]:
        return self.store.devices.known()

    def push(self, component: Component, doc: Any, *, requested_by: str,
             devices: list[tuple[str, str]] | None = None) -> dict[str, int]:
        """Set a new version of ``component`` for the devices (default: every known one) and publish it."""
        targets = devices if devices is not None else self.known()
        versions: dict[str, int] = {}
        text = json.dumps(doc, sort_keys=True, ensure_ascii=False)
        with self._lock:
            for site, device in targets:
                versions[device] = self.store.devices.push_desired(site, device, component.value, text,
                                                                    by=requested_by, now=time.time())
                self._send_desired(site, device, requested_by)
        return versions

    def _send_desired(self, site: str, device: str, requested_by: str) -> int:
        components = {r.component: {"version": r.version, "doc": json.loads(r.doc)}
                      for r in self.store.devices.desired(device)}
        seq = self.sequence.next(device)
        payload = self.signer.sign(CommandKind.DESIRED_STATE, device=device, site=site, seq=seq,
                                   requested_by=requested_by, args={"components": components})
        self._last_sent[device] = time.monotonic()  # before publishing: a state report meanwhile must not resend
        self.publish(topic(site, device, Channel.CMD), payload, True)
        self.audit.record(requested_by, AuditAction.COMMAND_SENT, device=device, cmd=CommandKind.DESIRED_STATE.value,
                          seq=seq, versions={c: v["version"] for c, v in components.items()})
        return seq

    def unlock(self, site: str, device: str, *, seconds: int, requested_by: str) -> int:
        """Send a one-time, short-lived unlock; returns its sequence number."""
        with self._lock:
            seq = self.sequence.next(device)
            payload = self.signer.sign(CommandKind.UNLOCK, device=device, site=site, seq=seq,
                                       requested_by=requested_by, args={"seconds": seconds})
            self.publish(topic(site, device, Channel.CMD), payload, False)
        self.audit.record(requested_by, AuditAction.COMMAND_SENT, device=device, cmd=CommandKind.UNLOCK.value,
                          seq=seq, seconds=seconds)
        return seq

    def lockdown(self, site: str, device: str, *, on: bool, reason: str, requested_by: str) -> int:
        """Send a signed lockdown (``on``) or its lifting; returns its sequence number."""
        with self._lock:
            seq = self.sequence.next(device)
            payload = self.signer.sign(CommandKind.LOCKDOWN, device=device, site=site, seq=seq,
                                       requested_by=requested_by, args={"on": on, "reason": reason})
            self.publish(topic(site, device, Channel.CMD), payload, False)
        self.audit.record(requested_by, AuditAction.COMMAND_SENT, device=device, cmd=CommandKind.LOCKDOWN.value,
                          seq=seq, on=on, reason=reason)
        return seq

    def rotate(self, site: str, device: str, *, enrol_url: str, requested_by: str) -> int:
        """Ask a device to renew its certificate with a new key at the enrolment service ``enrol_url``."""
        with self._lock:
            seq = self.sequence.next(device)
            payload = self.signer.sign(CommandKind.ROTATE_CREDENTIALS, device=device, site=site, seq=seq,
                                       requested_by=requested_by, args={"url": enrol_url})
            self.publish(topic(site, device, Channel.CMD), payload, False)
        self.audit.record(requested_by, AuditAction.COMMAND_SENT, device=device,
                          cmd=CommandKind.ROTATE_CREDENTIALS.value, seq=seq, url=enrol_url)
        return seq

    # ------------------------------------------------------------ what devices report

    def desired(self, device: str) -> dict[str, int]:
        return {r.component: r.version for r in self.store.devices.desired(device)}

    def record_state(self, site: str, state: DeviceState) -> None:
        """Note the versions a device applied; re-send its desired state if it came online behind."""
        applied_raw = state.extra.get("applied", {})
        applied = {str(k): int(v) for k, v in applied_raw.items() if isinstance(v, int)} \
            if isinstance(applied_raw, dict) else {}
        self.store.devices.record_applied(state.device, applied, now=time.time())
        desired = self.desired(state.device)
        behind = [c for c, v in desired.items() if applied.get(c, 0) < v]
        if state.status is not DeviceStatus.ONLINE or not behind:
            return
        with self._lock:
            if time.monotonic() - self._last_sent.get(state.device, -1e9) <= self.resend_after_s:
                return
            log.info("fleet: %s is online behind its desired %s; re-sending", state.device, ", ".join(behind))
            self._send_desired(site, state.device, "fleet")

    def applied(self, device: str) -> dict[str, int]:
        return self.store.devices.applied(device)

    def devices(self, *, now: float | None = None) -> list[DeviceRow]:
        return device_rows(self.store, offline_after_s=self.offline_after_s, now=now)


def device_rows(store: GatewayStore, *, offline_after_s: float, now: float | None = None) -> list[DeviceRow]:
    """Every known device: online only with a report fresher than ``offline_after_s``, offline once seen, else
    unknown; its backlog, alarms and desired and applied versions (``spd-gateway devices``, the screen)."""
    at = time.time() if now is None else now
    alarms = device_alarm_counts(store)
    out = []
    for device, site, last_seen, status, backlog, version in store.devices.states():
        fresh = last_seen is not None and at - last_seen <= offline_after_s
        shown = DeviceStatus.ONLINE.value if status == DeviceStatus.ONLINE.value and fresh else \
            DeviceStatus.OFFLINE.value if last_seen is not None else "unknown"
        desired = {r.component: r.version for r in store.devices.desired(device)}
        out.append(DeviceRow(device, site, shown, last_seen, version, int(backlog), alarms.get(device, 0),
                             desired, store.devices.applied(device)))
    return out


def format_devices(rows: list[DeviceRow], *, now: float | None = None) -> str:
    """The table printed by ``spd-gateway devices``."""
    at = time.time() if now is None else now
    head = f"{'DEVICE':<12} {'SITE':<6} {'STATUS':<8} {'LAST SEEN':>10} {'VERSION':<9} {'BACKLOG':>7} {'ALARMS':>6}  " \
           "CONFIG/CATALOG/ALLOWLIST (applied/desired)"
    lines = [head]
    for r in rows:
        seen = "never" if r.last_seen is None else _ago(at - r.last_seen)
        comps = " ".join(f"{c}:{r.applied.get(c, 0)}/{r.desired[c]}" for c in sorted(r.desired)) or "-"
        lines.append(f"{r.device:<12} {r.site:<6} {r.status:<8} {seen:>10} {r.version or '-':<9} {r.backlog:>7} "
                     f"{r.alarms:>6}  {comps}")
    return "\n".join(lines)


def _ago(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


class FleetLink:
    """The fleet's MQTT connection (gateway identity): reads device state, publishes commands."""

    def __init__(self, store: GatewayStore, *, host: str, port: int, tls: TlsSettings | None,
                 client_id: str = "spd-gateway-fleet", heartbeats: HeartbeatRegistry | None = None,
                 fallbacks: Sequence[Address] = (), mqtt_version: str = "5") -> None:
        self.store = store
        self.fleet: Fleet | None = None
        self._connected = threading.Event()
        self._network_thread = -1  # set on connect: the thread paho runs callbacks on
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat("fleet-mqtt", deadline_s=MQTT_LOOP_DEADLINE_S)
        self._client = make_client(client_id, tls=tls, on_connect=self._on_connect, on_message=self._on_message,
                                   heartbeat=self._beat, version=mqtt_version)
        self.host, self.port = host, port
        self.fallbacks = tuple(fallbacks)  # a broker cluster's other nodes

    def publish(self, topic_text: str, payload: bytes, retain: bool) -> None:
        info = self._client.publish(topic_text, payload, qos=1, retain=retain)
        if threading.get_ident() != self._network_thread:  # never block paho's own thread waiting on itself
            info.wait_for_publish(10)

    def start(self) -> FleetLink:
        start_loop(self._client, self.host, self.port, self._beat, fallbacks=self.fallbacks, keepalive=15)
        return self

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        stop_loop(self._client, self._beat)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            log.error("fleet: broker refused connection: %s", rc)
            return
        self._network_thread = threading.get_ident()
        client.subscribe(subscription(Channel.STATE), qos=1)
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload or self.fleet is None:
            return
        try:
            state = decode_state(msg.topic, bytes(msg.payload))
            site = msg.topic.split("/")[2]
            # a retained state replayed at (re)subscription is old news: it does not make the device seen now
            self.store.update_device_state(site, state, live=not msg.retain)
            self.fleet.record_state(site, state)
        except WireError as err:
            log.warning("fleet: ignored state on %s: %s", msg.topic, err)
        except Exception:
            log.exception("fleet: failed to record state from %s", msg.topic)
