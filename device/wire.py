"""The wire contract between devices and gateways: topics, payloads, versions.

Defined once, here, and imported by both sides (``device`` and ``gateway``).
Every payload is compact UTF-8 JSON with a ``v`` field; a decoder refuses an
unknown version or a malformed payload with a :class:`WireError` whose
``reason`` is a short machine-readable code and whose message explains it.

Topic layout (``{site}`` and ``{device}`` match :data:`ID_PATTERN`)::

    spd/v1/{site}/{device}/events   device -> gateway   QoS 1   batches of events
    spd/v1/{site}/{device}/ack      gateway -> device   QoS 1   cumulative acks
    spd/v1/{site}/{device}/cmd      gateway -> device   QoS 1   signed commands
    spd/v1/{site}/{device}/state    device -> all       QoS 1   retained, last will

See ``docs/wire.md`` for the prose version of this module.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeGuard

WIRE_VERSION: Final = 1
TOPIC_ROOT: Final = "spd/v1"
ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GENESIS_HASH: Final = "0" * 64
MAX_BATCH_EVENTS: Final = 1000
MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
MAX_BODY_BYTES: Final = 16 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class WireError(ValueError):
    """A payload or topic that does not follow the contract.

    ``reason`` is a stable code (``bad_json``, ``unsupported_version``, ...)
    suitable for counters and for the ``rejected`` list of an ack.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class UnsupportedVersion(WireError):
    """The payload names a contract version this code does not speak."""


class Channel(StrEnum):
    """The four per-device MQTT channels."""

    EVENTS = "events"
    ACK = "ack"
    CMD = "cmd"
    STATE = "state"


class EventKind(StrEnum):
    """What happened on a device. New kinds are added, never renamed."""

    CONSUME = "consume"  # wristband + item scan: the nurse used an item on a patient
    TAKEN = "taken"  # cabinet inventory: an item left the cabinet
    RETURNED = "returned"  # cabinet inventory: an item came back
    RESTOCKED = "restocked"  # a restocker put an item in
    RETURN_UNUSED = "return_unused"  # a charged item came back unused (credit)
    ALARM = "alarm"
    ACCESS = "access"  # badge accepted or refused, door opened, closed
    REFUSED_SCAN = "refused_scan"  # a scan refused at the device, with its reason


# ---------------------------------------------------------------- topics


def topic(site: str, device: str, channel: Channel) -> str:
    """The topic of one device's channel; ids are checked."""
    check_id("site", site)
    check_id("device", device)
    return f"{TOPIC_ROOT}/{site}/{device}/{channel.value}"


def subscription(channel: Channel, *, site: str = "+", share_group: str | None = None) -> str:
    """The gateway's wildcard subscription for ``channel`` (optionally MQTT 5 shared)."""
    base = f"{TOPIC_ROOT}/{site}/+/{channel.value}"
    return f"$share/{share_group}/{base}" if share_group else base


@dataclass(frozen=True, slots=True)
class TopicAddress:
    site: str
    device: str
    channel: Channel


def parse_topic(text: str) -> TopicAddress:
    """Split a concrete topic into site, device and channel, or raise WireError."""
    parts = text.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise WireError("bad_topic", f"not an spd/v1 device topic: {text!r}")
    _, _, site, device, chan = parts
    try:
        channel = Channel(chan)
    except ValueError:
        raise WireError("bad_topic", f"unknown channel {chan!r} in {text!r}") from None
    check_id("site", site)
    check_id("device", device)
    return TopicAddress(site, device, channel)


def check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise WireError("bad_id", f"{what} id {value!r} must match {ID_PATTERN.pattern}")
    return value


# ---------------------------------------------------------------- events


def canonical(obj: Any) -> bytes:
    """The one byte form used for hashing: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(device: str, seq: int, ts_ms: int, kind: str, body: dict[str, Any], prev: str) -> str:
    """SHA-256 over the canonical form of an event's content and its predecessor's hash."""
    return hashlib.sha256(canonical([device, seq, ts_ms, kind, body, prev])).hexdigest()


@dataclass(frozen=True, slots=True)
class Event:
    """One fact recorded by a device. Identity: ``(device, seq)``."""

    device: str
    seq: int
    ts_ms: int
    kind: str
    body: dict[str, Any]
    prev: str
    hash: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.device, self.seq)

    def hash_ok(self) -> bool:
        return self.hash == event_hash(self.device, self.seq, self.ts_ms, self.kind, self.body, self.prev)

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts_ms,
            "kind": self.kind,
            "body": self.body,
            "prev": self.prev,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """An event inside a batch that failed validation; ``seq`` is kept when readable."""

    seq: int | None
    reason: str
    detail: str
    raw: Any


@dataclass(frozen=True, slots=True)
class Batch:
    device: str
    site: str
    events: list[Event]
    invalid: list[InvalidEvent] = field(default_factory=list)


def encode_batch(site: str, device: str, events: list[Event]) -> bytes:
    return _dump({"v": WIRE_VERSION, "site": site, "device": device, "events": [e.to_wire() for e in events]})


def decode_batch(topic_text: str, payload: bytes) -> Batch:
    """Decode an events payload received on ``topic_text``.

    A payload-level problem (not JSON, wrong version, device not matching the
    topic) raises :class:`WireError`. A problem with one event only puts it in
    ``Batch.invalid`` so the valid events around it are kept.
    """
    addr = parse_topic(topic_text)
    if addr.channel is not Channel.EVENTS:
        raise WireError("bad_topic", f"not an events topic: {topic_text!r}")
    doc = _load(payload)
    _check_version(doc)
    if doc.get("device") != addr.device or doc.get("site") != addr.site:
        raise WireError("identity_mismatch", "payload site/device differ from the topic")
    raw_events = doc.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise WireError("bad_batch", "'events' must be a non-empty list")
    if len(raw_events) > MAX_BATCH_EVENTS:
        raise WireError("bad_batch", f"{len(raw_events)} events exceed the limit of {MAX_BATCH_EVENTS}")
    events: list[Event] = []
    invalid: list[InvalidEvent] = []
    for raw in raw_events:
        try:
            events.append(_decode_event(addr.device, raw))
        except WireError as err:
            seq = raw.get("seq") if isinstance(raw, dict) else None
            seq = seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else None
            invalid.append(InvalidEvent(seq, err.reason, err.detail, raw))
    return Batch(addr.device, addr.site, events, invalid)


def _decode_event(device: str, raw: Any) -> Event:
    if not isinstance(raw, dict):
        raise WireError("bad_event", "event is not an object")
    extra = set(raw) - {"seq", "ts", "kind", "body", "prev", "hash"}
    if extra:
        raise WireError("bad_event", f"unknown event fields {sorted(extra)}")
    seq, ts, kind, body = raw.get("seq"), raw.get("ts"), raw.get("kind"), raw.get("body")
    prev, digest = raw.get("prev"), raw.get("hash")
    if not _is_int(seq) or seq < 1:
        raise WireError("bad_event", f"seq must be a positive integer, got {seq!r}")
    if not _is_int(ts) or ts < 0:
        raise WireError("bad_event", f"ts must be a non-negative integer (ms), got {ts!r}")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise WireError("unknown_kind", f"event kind {kind!r} is not one of {sorted(_KINDS)}")
    if not isinstance(body, dict):
        raise WireError("bad_event", "body must be an object")
    if len(canonical(body)) > MAX_BODY_BYTES:
        raise WireError("bad_event", f"body larger than {MAX_BODY_BYTES} bytes")
    if not isinstance(prev, str) or not _HEX64.match(prev):
        raise WireError("bad_event", "prev must be 64 lowercase hex digits")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise WireError("bad_event", "hash must be 64 lowercase hex digits")
    ev = Event(device, seq, ts, kind, body, prev, digest)
    if not ev.hash_ok():
        raise WireError("bad_hash", f"event {seq} hash does not match its content")
    return ev


_KINDS = frozenset(k.value for k in EventKind)

# ---------------------------------------------------------------- acks


@dataclass(frozen=True, slots=True)
class Rejection:
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative: every event with ``seq <= acked`` is durably stored at the gateway.

    ``rejected`` lists events stored in quarantine (kept, not processed), so the
    device can report them; they are covered by ``acked`` like any other.
    """

    device: str
    acked: int
    rejected: tuple[Rejection, ...] = ()


def encode_ack(ack: Ack) -> bytes:
    return _dump(
        {
            "v": WIRE_VERSION,
            "device": ack.device,
            "acked": ack.acked,
            "rejected": [{"seq": r.seq, "reason": r.reason} for r in ack.rejected],
        }
    )


def decode_ack(device: str, payload: bytes) -> Ack:
    doc = _load(payload)
    _check_version(doc)
    if doc.get("device") != device:
        raise WireError("identity_mismatch", f"ack for {doc.get('device')!r} received by {device!r}")
    acked = doc.get("acked")
    if not _is_int(acked) or acked < 0:
        raise WireError("bad_ack", f"acked must be a non-negative integer, got {acked!r}")
    rejected_raw = doc.get("rejected", [])
    if not isinstance(rejected_raw, list):
        raise WireError("bad_ack", "rejected must be a list")
    rejected = []
    for r in rejected_raw:
        if not isinstance(r, dict) or not _is_int(r.get("seq")) or not isinstance(r.get("reason"), str):
            raise WireError("bad_ack", f"bad rejected entry {r!r}")
        rejected.append(Rejection(r["seq"], r["reason"]))
    return Ack(device, acked, tuple(rejected))


# ---------------------------------------------------------------- device state


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class DeviceState:
    device: str
    status: DeviceStatus
    backlog: int = 0
    version: str = ""
    ts_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def encode_state(state: DeviceState) -> bytes:
    return _dump(
        {
            "v": WIRE_VERSION,
            "device": state.device,
            "status": state.status.value,
            "backlog": state.backlog,
            "version": state.version,
            "ts": state.ts_ms,
            "extra": state.extra,
        }
    )


def decode_state(topic_text: str, payload: bytes) -> DeviceState:
    addr = parse_topic(topic_text)
    doc = _load(payload)
    _check_version(doc)
    if doc.get("device") != addr.device:
        raise WireError("identity_mismatch", "state payload device differs from the topic")
    try:
        status = DeviceStatus(str(doc.get("status")))
    except ValueError:
        raise WireError("bad_state", f"unknown status {doc.get('status')!r}") from None
    backlog, ts = doc.get("backlog", 0), doc.get("ts", 0)
    if not _is_int(backlog) or not _is_int(ts):
        raise WireError("bad_state", "backlog and ts must be integers")
    extra = doc.get("extra", {})
    extra = extra if isinstance(extra, dict) else {}
    return DeviceState(addr.device, status, backlog, str(doc.get("version", "")), ts, extra)


# ---------------------------------------------------------------- helpers


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("too_large", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload)
    except RecursionError:
        raise WireError("bad_json", "payload nests too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, and the int digit limit
        raise WireError("bad_json", f"payload is not UTF-8 JSON ({str(err)[:200]})") from None
    if not isinstance(doc, dict):
        raise WireError("bad_json", "payload is not a JSON object")
    return doc


def _check_version(doc: dict[str, Any]) -> None:
    v = doc.get("v")
    if v != WIRE_VERSION:
        raise UnsupportedVersion("unsupported_version", f"contract version {v!r}; this side speaks {WIRE_VERSION}")
