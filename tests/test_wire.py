"""The wire contract: topics, batches, acks, state, and refusal of bad payloads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spd_common.wire import (
    GENESIS_HASH,
    Ack,
    Channel,
    DeviceState,
    DeviceStatus,
    Event,
    Rejection,
    UnsupportedVersion,
    WireError,
    decode_ack,
    decode_batch,
    decode_state,
    encode_ack,
    encode_batch,
    encode_state,
    event_hash,
    parse_topic,
    subscription,
    topic,
)


def make_events(device: str = "HH01", n: int = 3) -> list[Event]:
    out, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        body = {"admission": f"ZY{seq:010d}", "udi": "]d20109506000134352", "operator": "N1", "dept": "OR"}
        h = event_hash(device, seq, 1000 + seq, "consume", body, prev)
        out.append(Event(device, seq, 1000 + seq, "consume", body, prev, h))
        prev = h
    return out


def test_topic_layout_per_site_and_device() -> None:
    assert topic("H1", "HH01", Channel.EVENTS) == "spd/v1/H1/HH01/events"
    assert subscription(Channel.EVENTS) == "spd/v1/+/+/events"
    assert subscription(Channel.EVENTS, share_group="gw") == "$share/gw/spd/v1/+/+/events"
    addr = parse_topic("spd/v1/H1/HH01/ack")
    assert (addr.site, addr.device, addr.channel) == ("H1", "HH01", Channel.ACK)


@pytest.mark.parametrize(
    "bad",
    ["spd/v1/H1/HH01", "spd/v2/H1/HH01/events", "spd/v1/H1/HH01/other", "spd/v1/H1/+/events", "spd/v1/H1/a b/events"],
)
def test_bad_topics_are_refused(bad: str) -> None:
    with pytest.raises(WireError):
        parse_topic(bad)


def test_batch_round_trip_keeps_every_field() -> None:
    events = make_events()
    batch = decode_batch("spd/v1/H1/HH01/events", encode_batch("H1", "HH01", events))
    assert batch.events == events
    assert batch.invalid == []


def test_unknown_version_is_refused_with_reason() -> None:
    doc = json.loads(encode_batch("H1", "HH01", make_events()))
    doc["v"] = 2
    with pytest.raises(UnsupportedVersion) as err:
        decode_batch("spd/v1/H1/HH01/events", json.dumps(doc).encode())
    assert err.value.reason == "unsupported_version"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "bad_json"),
        (b"[1,2]", "bad_json"),
        (b'{"v":1,"site":"H1","device":"HH02","events":[]}', "identity_mismatch"),
        (b'{"v":1,"site":"H1","device":"HH01","events":[]}', "bad_batch"),
        (b'{"site":"H1","device":"HH01","events":[]}', "unsupported_version"),
    ],
)
def test_malformed_payloads_are_refused_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        decode_batch("spd/v1/H1/HH01/events", payload)
    assert err.value.reason == reason


def test_one_bad_event_does_not_lose_the_valid_ones() -> None:
    events = make_events(n=3)
    doc = json.loads(encode_batch("H1", "HH01", events))
    doc["events"][1]["body"]["udi"] = "tampered"  # hash no longer matches
    doc["events"].append({"seq": "x"})
    batch = decode_batch("spd/v1/H1/HH01/events", json.dumps(doc).encode())
    assert [e.seq for e in batch.events] == [1, 3]
    assert [(i.seq, i.reason) for i in batch.invalid] == [(2, "bad_hash"), (None, "bad_event")]


def test_unknown_event_kind_is_invalid() -> None:
    doc = json.loads(encode_batch("H1", "HH01", make_events(n=1)))
    doc["events"][0]["kind"] = "teleport"
    batch = decode_batch("spd/v1/H1/HH01/events", json.dumps(doc).encode())
    assert batch.invalid[0].reason == "unknown_kind"


def test_ack_round_trip_and_identity_check() -> None:
    ack = Ack("HH01", 42, (Rejection(7, "bad_hash"),))
    assert decode_ack("HH01", encode_ack(ack)) == ack
    with pytest.raises(WireError):
        decode_ack("HH02", encode_ack(ack))
    with pytest.raises(WireError):
        decode_ack("HH01", b'{"v":1,"device":"HH01","acked":-1}')


def test_state_round_trip() -> None:
    st_ = DeviceState("HH01", DeviceStatus.ONLINE, backlog=5, version="0.1.0", ts_ms=1)
    assert decode_state("spd/v1/H1/HH01/state", encode_state(st_)) == st_


@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_wire_error(data: bytes) -> None:
    try:
        decode_batch("spd/v1/H1/HH01/events", data)
    except WireError:
        pass


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=6))
def test_random_json_objects_are_refused_cleanly(doc: dict[str, object]) -> None:
    try:
        decode_batch("spd/v1/H1/HH01/events", json.dumps(doc).encode())
    except WireError:
        pass
