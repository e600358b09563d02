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
MAX_SEQ: Final = 9_999_999_999
"""Largest event sequence number: the charge id carries it as 10 digits (``gateway.bridge.types.MAX_SEQ``)."""
MAX_TS_MS: Final = 253_402_300_799_999
"""Latest event time, 9999-12-31T23:59:59.999Z: later ones have no four-digit year."""
MAX_BODY_DEPTH: Final = 32
"""Deepest nesting of objects and lists inside an event body (real bodies are one or two levels)."""
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_DETAIL_CHARS: Final = 300
"""Longest ``WireError.detail``: a detail quotes the offending value, shortened to this."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    PACK_OPENED = "pack_opened"  # a fixed-quantity pack's label (GS1 AI 30 count) scanned as it is opened
    STOCK_COUNTED = "stock_counted"  # a cabinet's full RFID inventory: every item present (in parts)


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
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise WireError("bad_id", f"{what} id {shown(value)} must match {ID_PATTERN.pattern}")
    return value


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error detail, at most ``limit`` characters, never failing.

    Details quote what a device sent; a hostile value can be megabytes long, nested
    beyond the recursion limit, or a 4,000-digit integer, and must not make the
    error itself fail or grow without bound. ``repr`` escapes lone surrogates and
    control characters, so the result is always storable text.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, str | bytes) and len(value) > limit:
        value = value[:limit]
    try:
        text = repr(value)
    except Exception:  # RecursionError on deep nesting, or an int over the digit limit inside a container
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    checked: bool = False  # every event passed check_event and its hash (decode_batch); the store need not repeat it


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
            invalid.append(InvalidEvent(readable_seq(raw), err.reason, err.detail[:MAX_DETAIL_CHARS], raw))
        except Exception as err:  # one event's fault, whatever it is, must not lose its batch
            detail = f"event could not be checked: {type(err).__name__}: {shown(str(err), 200)}"
            invalid.append(InvalidEvent(readable_seq(raw), "bad_event", detail, raw))
    return Batch(addr.device, addr.site, events, invalid, checked=True)


def readable_seq(raw: Any) -> int | None:
    """The ``seq`` of a (possibly invalid) raw event when it is a usable identity, else None.

    Usable means an integer in ``1..MAX_SEQ``: such an event can be kept in
    quarantine under its identity and covered by the cumulative ack.
    """
    seq = raw.get("seq") if isinstance(raw, dict) else None
    return seq if _is_int(seq) and 1 <= seq <= MAX_SEQ else None


def _decode_event(device: str, raw: Any) -> Event:
    if not isinstance(raw, dict):
        raise WireError("bad_event", f"event is not an object: {shown(raw)}")
    extra = set(raw) - {"seq", "ts", "kind", "body", "prev", "hash"}
    if extra:
        raise WireError("bad_event", f"unknown event fields {shown(sorted(extra))}")
    seq: Any = raw.get("seq")  # types unchecked until check_event
    ts: Any = raw.get("ts")
    kind: Any = raw.get("kind")
    body: Any = raw.get("body")
    prev: Any = raw.get("prev")
    digest: Any = raw.get("hash")
    ev = Event(device, seq, ts, kind, body, prev, digest)
    body_bytes = check_event(ev)
    if digest != _event_digest(device, seq, ts, kind, body_bytes, prev):
        raise WireError("bad_hash", f"event {seq} hash does not match its content")
    return ev


def check_event(ev: Event) -> bytes:
    """The contract's rules for one event's fields (all but the hash itself); raises :class:`WireError`.

    Returns the body's canonical bytes, from which the decoder computes the hash.

    Used by the decoder and again by the gateway store, so events built in code
    (an export file being imported) meet the same rules as events off the wire.
    """
    seq, ts, kind, body, prev, digest = ev.seq, ev.ts_ms, ev.kind, ev.body, ev.prev, ev.hash
    if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
        raise WireError("bad_event", f"seq must be an integer in 1..{MAX_SEQ}, got {shown(seq)}")
    if not _is_int(ts) or not 0 <= ts <= MAX_TS_MS:
        raise WireError("bad_event", f"ts must be an integer in 0..{MAX_TS_MS} (ms), got {shown(ts)}")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise WireError("unknown_kind", f"event kind {shown(kind)} is not one of {sorted(_KINDS)}")
    if not isinstance(body, dict):
        raise WireError("bad_event", f"body must be an object, got {shown(body)}")
    body_bytes = _canonical_body(body)
    if len(body_bytes) > MAX_BODY_BYTES:
        raise WireError("bad_event", f"body larger than {MAX_BODY_BYTES} bytes")
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise WireError("bad_event", f"prev must be 64 lowercase hex digits, got {shown(prev)}")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise WireError("bad_event", f"hash must be 64 lowercase hex digits, got {shown(digest)}")
    return body_bytes


_KINDS = frozenset(k.value for k in EventKind)


def _canonical_body(body: dict[str, Any]) -> bytes:
    """The body's canonical bytes, or :class:`WireError` for a body that could not be hashed or stored as it came.

    Nesting at most :data:`MAX_BODY_DEPTH` and integers within 64 bits are
    checked by an iterative walk (no recursion); the canonical encoding itself
    then refuses lone surrogates such as ``"\\ud800"`` (no UTF-8 form) and ``NaN``
    or ``Infinity`` (Python's JSON reader accepts them, JSON does not). Any other
    character, NUL and the GS separator included, is kept as it came.
    """
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is str or kind is float or kind is bool or value is None:
            continue
        if kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                raise WireError("bad_event", f"body integer {shown(value)} is outside 64 bits")
        elif kind is dict:
            if depth > MAX_BODY_DEPTH:
                raise WireError("bad_event", f"body nests deeper than {MAX_BODY_DEPTH} levels")
            for key, item in value.items():
                if type(key) is not str:  # JSON keys are strings; a body built in code may not be
                    raise WireError("bad_event", f"body key {shown(key)} is not a string")
                stack.append((item, depth + 1))
        elif kind is list:
            if depth > MAX_BODY_DEPTH:
                raise WireError("bad_event", f"body nests deeper than {MAX_BODY_DEPTH} levels")
            stack.extend((item, depth + 1) for item in value)
        else:
            raise WireError("bad_event", f"body value of type {kind.__name__} is not JSON")
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()
    except UnicodeEncodeError as err:
        bad = err.object[err.start:err.end] if isinstance(err.object, str) else ""
        raise WireError("bad_event", f"body text is not valid UTF-8 (lone surrogate {shown(bad)})") from None
    except ValueError:  # allow_nan=False
        raise WireError("bad_event", "body holds a number that is not finite (NaN or Infinity)") from None


def _event_digest(device: str, seq: int, ts_ms: int, kind: str, body_bytes: bytes, prev: str) -> str:
    """:func:`event_hash` from the body's canonical bytes (a list's canonical form is its items' joined by commas)."""
    head = canonical([device, seq, ts_ms, kind])[:-1]
    return hashlib.sha256(head + b"," + body_bytes + b"," + canonical(prev) + b"]").hexdigest()


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
    if not _is_int(acked) or not 0 <= acked <= MAX_SEQ:
        raise WireError("bad_ack", f"acked must be an integer in 0..{MAX_SEQ}, got {shown(acked)}")
    rejected_raw = doc.get("rejected", [])
    if not isinstance(rejected_raw, list):
        raise WireError("bad_ack", "rejected must be a list")
    rejected = []
    for r in rejected_raw:
        if not isinstance(r, dict) or readable_seq(r) is None or not isinstance(r.get("reason"), str):
            raise WireError("bad_ack", f"bad rejected entry {shown(r)}")
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


_STATUSES = frozenset(s.value for s in DeviceStatus)


def decode_state(topic_text: str, payload: bytes) -> DeviceState:
    addr = parse_topic(topic_text)
    doc = _load(payload)
    _check_version(doc)
    if doc.get("device") != addr.device:
        raise WireError("identity_mismatch", "state payload device differs from the topic")
    status_text = doc.get("status")
    if not isinstance(status_text, str) or status_text not in _STATUSES:
        raise WireError("bad_state", f"unknown status {shown(status_text)}")
    status = DeviceStatus(status_text)
    backlog, ts = doc.get("backlog", 0), doc.get("ts", 0)
    if not _is_int(backlog) or not _is_int(ts) or not 0 <= backlog <= INT64_MAX or not INT64_MIN <= ts <= INT64_MAX:
        raise WireError("bad_state", "backlog and ts must be 64-bit integers, backlog not negative")
    version = doc.get("version", "")
    if not isinstance(version, str) or len(version) > 64 or not _encodable(version):
        raise WireError("bad_state", f"version must be UTF-8 text of at most 64 characters, got {shown(version)}")
    extra = doc.get("extra", {})
    extra = extra if isinstance(extra, dict) else {}
    return DeviceState(addr.device, status, backlog, version, ts, extra)


# ---------------------------------------------------------------- helpers


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
