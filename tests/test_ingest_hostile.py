"""Gateway ingest against hostile events: one bad event is refused alone, the rest is stored and acked.

Every test drives the real path, :meth:`IngestService.handle` (decode → store →
ack) with a real SQLite store in a temp dir and a publish function that captures
the acks. A batch holds valid events around the hostile one; the valid ones must
be stored once and covered by the ack, the hostile one kept with its reason
(in ``quarantine`` under its seq, or in ``bad_payloads`` when its seq is not a
usable identity). Only a failure of the store itself withholds the ack.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.ingest import IngestService
from gateway.store import MAX_DETAIL_CHARS, MAX_RAW_CHARS, GatewayStore
from spd_common.wire import GENESIS_HASH, MAX_SEQ, MAX_TS_MS, Ack, canonical, decode_ack, event_hash

SITE, DEVICE = "H1", "HH01"
TOPIC = f"spd/v1/{SITE}/{DEVICE}/events"
FIELDS = ("seq", "ts", "kind", "body", "prev", "hash")


class Rig:
    """A store in a temp dir and an IngestService whose acks are captured instead of published."""

    def __init__(self, path: Path, **store_kw: Any) -> None:
        self.store = GatewayStore(path, **store_kw)
        self.acks: list[tuple[str, Ack]] = []
        self.service = IngestService(self.store, host="127.0.0.1", port=1, publish=self._publish)

    def _publish(self, topic_text: str, payload: bytes) -> None:
        device = topic_text.split("/")[3]
        self.acks.append((topic_text, decode_ack(device, payload)))

    def send(self, events: list[Any], *, device: str = DEVICE, site: str = SITE, topic: str = TOPIC) -> Ack | None:
        before = len(self.acks)
        payload = json.dumps({"v": 1, "site": site, "device": device, "events": events}).encode()
        self.service.handle(topic, payload)
        assert len(self.acks) - before <= 1
        return self.acks[-1][1] if len(self.acks) > before else None

    def stored(self, device: str = DEVICE) -> list[int]:
        return [r[0] for r in self.store._engine.query("SELECT seq FROM events WHERE device = ? ORDER BY seq",
                                                       (device,))]

    def quarantine(self) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in self.store._engine.query("SELECT seq, reason FROM quarantine ORDER BY seq")]

    def unidentified(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.store._engine.query(
            "SELECT reason, detail FROM bad_payloads WHERE topic = ? ORDER BY id", (f"device:{DEVICE}",))]


@pytest.fixture
def rig(store_location: Path | str) -> Iterator[Rig]:
    r = Rig(store_location)
    yield r
    r.store.close()


def chain(n: int, *, start_prev: str = GENESIS_HASH, first: int = 1) -> list[dict[str, Any]]:
    """``n`` valid wire events of DEVICE, ``first`` .. ``first + n - 1``, linked."""
    out, prev = [], start_prev
    for seq in range(first, first + n):
        body = {"admission": "ZY1", "udi": f"]d2010950600013435221SN{seq}", "operator": "N1", "dept": "OR"}
        digest = event_hash(DEVICE, seq, 1_795_430_400_000 + seq, "consume", body, prev)
        out.append({"seq": seq, "ts": 1_795_430_400_000 + seq, "kind": "consume", "body": body, "prev": prev,
                    "hash": digest})
        prev = digest
    return out


def rehash(ev: dict[str, Any], device: str = DEVICE) -> dict[str, Any]:
    """The event with its hash recomputed over whatever its fields now hold (when that can be hashed)."""
    try:
        ev["hash"] = event_hash(device, ev["seq"], ev["ts"], ev["kind"], ev["body"], ev["prev"])
    except (ValueError, TypeError, KeyError, RecursionError):
        ev["hash"] = "ab" * 32
    return ev


# ---------------------------------------------------------------- the two reported cases


def test_an_event_whose_seq_is_2_to_the_70_is_refused_alone_and_the_batch_is_acked(rig: Rig) -> None:
    good = chain(2)
    bad = rehash({**chain(3)[2], "seq": 2**70})
    ack = rig.send([good[0], good[1], bad])
    assert ack is not None and ack.acked == 2 and ack.rejected == ()
    assert rig.stored() == [1, 2]
    [(reason, detail)] = rig.unidentified()  # no usable seq: kept as a bad payload of this device
    assert reason == "bad_event" and "seq" in detail
    raw = rig.store._engine.query("SELECT payload FROM bad_payloads")[0][0]
    assert json.loads(raw)["seq"] == 2**70


def test_a_lone_surrogate_in_a_body_is_refused_alone_and_the_batch_is_acked(rig: Rig) -> None:
    good = chain(3)
    bad = {**good[2], "body": {**good[2]["body"], "udi": "\ud800lone"}}
    ack = rig.send([good[0], good[1], bad])
    assert ack is not None and ack.acked == 3
    assert [(r.seq, r.reason) for r in ack.rejected] == [(3, "bad_event")]
    assert rig.stored() == [1, 2] and rig.quarantine() == [(3, "bad_event")]
    (raw,) = rig.store._engine.query("SELECT raw FROM quarantine")[0]
    assert raw.isascii() and "\\ud800lone" in raw  # kept, escaped
    # the device resends 3 fixed: it is stored beside its quarantined copy and the ack holds
    assert rig.send(chain(4)[2:]) == Ack(DEVICE, 4, ())
    assert rig.stored() == [1, 2, 3, 4]


def test_an_event_built_in_code_with_a_huge_seq_is_quarantined_by_the_store_itself(rig: Rig) -> None:
    """The store checks each event again (an imported export does not pass the decoder) and isolates it."""
    from spd_common.wire import Batch, Event

    good = [Event(DEVICE, e["seq"], e["ts"], e["kind"], e["body"], e["prev"], e["hash"]) for e in chain(2)]
    huge = Event(DEVICE, 2**70, 1, "consume", {}, GENESIS_HASH, "ab" * 32)
    in_range = Event(DEVICE, 2**63 - 1, 1, "consume", {"x": "\udfff"}, GENESIS_HASH, "ab" * 32)
    res = rig.store.ingest(Batch(DEVICE, SITE, [good[0], huge, in_range, good[1]]))
    assert (res.new, res.contiguous, res.unidentified) == (2, 2, 2)
    assert rig.stored() == [1, 2]


# ---------------------------------------------------------------- every field, every hostile kind

_HOSTILE: list[tuple[str, Any, str]] = [
    # (field, value, expected reason); seq faults leave no usable identity ("unidentified")
    ("seq", 2**70, "unidentified"), ("seq", 2**63, "unidentified"), ("seq", MAX_SEQ + 1, "unidentified"),
    ("seq", 0, "unidentified"), ("seq", -1, "unidentified"), ("seq", -(2**70), "unidentified"),
    ("seq", 3.0, "unidentified"), ("seq", "3", "unidentified"), ("seq", True, "unidentified"),
    ("seq", None, "unidentified"), ("seq", [3], "unidentified"), ("seq", float("nan"), "unidentified"),
    ("seq", 10**4000, "unidentified"),
    ("ts", 2**70, "bad_event"), ("ts", -1, "bad_event"), ("ts", MAX_TS_MS + 1, "bad_event"),
    ("ts", float("nan"), "bad_event"), ("ts", float("inf"), "bad_event"), ("ts", "now", "bad_event"),
    ("ts", None, "bad_event"), ("ts", False, "bad_event"),
    ("kind", "scan", "unknown_kind"), ("kind", "consume\x00", "unknown_kind"), ("kind", "CONSUME", "unknown_kind"),
    ("kind", "x" * 100_000, "unknown_kind"), ("kind", "\ud800", "unknown_kind"), ("kind", ["consume"], "unknown_kind"),
    ("kind", 7, "unknown_kind"), ("kind", None, "unknown_kind"),
    ("body", [], "bad_event"), ("body", "text", "bad_event"), ("body", None, "bad_event"), ("body", 5, "bad_event"),
    ("body", {"n": 2**64}, "bad_event"), ("body", {"n": -(2**63) - 1}, "bad_event"),
    ("body", {"f": float("nan")}, "bad_event"), ("body", {"f": float("-inf")}, "bad_event"),
    ("body", {"\udc80key": 1}, "bad_event"), ("body", {"s": ["ok", {"deep": "\ud83d"}]}, "bad_event"),
    ("body", {"d": json.loads("[" * 40 + "]" * 40)}, "bad_event"),
    ("body", {"udi": "x" * 17_000}, "bad_event"),
    ("prev", "AB" * 32, "bad_event"), ("prev", "ab" * 31, "bad_event"), ("prev", "ab" * 32 + "\n", "bad_event"),
    ("prev", "ab" * 33, "bad_event"), ("prev", None, "bad_event"), ("prev", 0, "bad_event"),
    ("prev", "g" * 64, "bad_event"), ("prev", {"h": 1}, "bad_event"),
    ("hash", "AB" * 32, "bad_event"), ("hash", "ab" * 32 + "\n", "bad_event"), ("hash", 12, "bad_event"),
    ("hash", "ab" * 32, "bad_hash"),
]


@pytest.mark.parametrize(("field", "value", "expected"), _HOSTILE,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(_HOSTILE)])
def test_one_hostile_field_refuses_only_its_event(rig: Rig, field: str, value: Any, expected: str) -> None:
    good = chain(5)
    bad = dict(good[2])
    bad[field] = value
    if field != "hash":
        rehash(bad)
    ack = rig.send([good[0], good[1], bad, good[3], good[4]])
    assert ack is not None
    if expected == "unidentified":
        assert ack.acked == 2 and ack.rejected == ()  # seq 3 never arrived: the ack holds at 2
        assert rig.stored() == [1, 2, 4, 5] and rig.quarantine() == []
        [(reason, detail)] = rig.unidentified()
        assert reason == "bad_event" and 0 < len(detail) <= MAX_DETAIL_CHARS
    else:
        assert ack.acked == 5 and [(r.seq, r.reason) for r in ack.rejected] == [(3, expected)]
        assert rig.stored() == [1, 2, 4, 5] and rig.quarantine() == [(3, expected)]
        detail, raw = rig.store._engine.query("SELECT detail, raw FROM quarantine")[0]
        assert 0 < len(detail) <= MAX_DETAIL_CHARS and raw.isascii() and len(raw) <= MAX_RAW_CHARS


@pytest.mark.parametrize("shape", [None, 3, "event", [1, 2], {}, {"seq": 3, "extra": 1}],
                         ids=["null", "number", "string", "list", "empty", "unknown-field"])
def test_an_event_of_the_wrong_shape_refuses_only_itself(rig: Rig, shape: Any) -> None:
    good = chain(2)
    ack = rig.send([good[0], shape, good[1]])
    assert ack is not None and rig.stored() == [1, 2]
    if isinstance(shape, dict) and shape.get("seq") == 3:
        assert ack.acked == 3 and rig.quarantine() == [(3, "bad_event")]
    else:
        assert ack.acked == 2 and [r for r, _ in rig.unidentified()] == ["bad_event"]


def test_nul_bytes_control_characters_and_64_bit_extremes_in_a_body_are_stored_as_they_came(rig: Rig) -> None:
    body = {"udi": "]d2\x00\x1d21SN\u2028", "note": "漢字 😀 \x7f", "max": 2**63 - 1, "min": -(2**63),
            "f": 1.5e308, "deep": json.loads("[" * 31 + "]" * 31)}
    ev = rehash({"seq": 1, "ts": MAX_TS_MS, "kind": "alarm", "body": body, "prev": GENESIS_HASH, "hash": ""})
    assert rig.send([ev]) == Ack(DEVICE, 1, ())
    (stored,) = rig.store._engine.query("SELECT body FROM events")[0]
    assert json.loads(stored) == body and canonical(json.loads(stored)) == canonical(body)


# ---------------------------------------------------------------- batch shapes: duplicates, gaps, identity


def test_the_same_event_twice_in_one_batch_is_stored_once(rig: Rig) -> None:
    good = chain(3)
    assert rig.send([good[0], good[1], good[1], good[2], good[0]]) == Ack(DEVICE, 3, ())
    assert rig.stored() == [1, 2, 3] and rig.service.stats.events_duplicate == 2


def test_a_corrupt_copy_beside_its_valid_copy_adds_nothing(rig: Rig) -> None:
    good = chain(2)
    corrupt = {**good[1], "hash": "cd" * 32}
    assert rig.send([corrupt, good[0], good[1]]) == Ack(DEVICE, 2, ())
    assert rig.stored() == [1, 2] and rig.quarantine() == []


def test_two_different_valid_contents_for_one_seq_keep_the_first_and_record_a_chain_break(rig: Rig) -> None:
    good = chain(2)
    forged = rehash({**good[1], "body": {"udi": "forged"}})
    assert rig.send([good[0], good[1], forged]) == Ack(DEVICE, 2, ())
    assert rig.store._engine.query("SELECT hash FROM events WHERE seq = 2") == [(good[1]["hash"],)]
    assert rig.store._engine.query("SELECT seq, detail FROM chain_breaks") == [
        (2, "same seq received with different content")]


def test_a_gap_holds_the_ack_until_it_is_filled_and_a_quarantined_event_counts_as_stored(rig: Rig) -> None:
    good = chain(6)
    assert rig.send([good[0], good[1], good[3]]) == Ack(DEVICE, 2, ())
    bad3 = {**good[2], "hash": "ef" * 32}
    ack = rig.send([bad3])
    assert ack is not None and ack.acked == 4 and [r.seq for r in ack.rejected] == [3]
    assert rig.send([good[5]]) == Ack(DEVICE, 4, ())
    assert rig.send([good[4]]) == Ack(DEVICE, 6, ())


def test_a_batch_naming_another_device_than_its_topic_is_refused_whole_without_an_ack(rig: Rig) -> None:
    ack = rig.send(chain(2), device="HH02")  # published on HH01's topic
    assert ack is None and rig.stored() == [] and rig.stored("HH02") == []
    assert rig.store._engine.query("SELECT topic, reason FROM bad_payloads") == [(TOPIC, "identity_mismatch")]
    assert rig.send(chain(1), site="H2") is None  # site differs from the topic: refused the same way


@pytest.mark.parametrize("payload", [
    b"\xff\xfe not utf-8", b"[1, 2]", b'{"v": 1, "site": "H1", "device": "HH01", "events": []}',
    b'{"v": 2, "site": "H1", "device": "HH01", "events": [{}]}', b"[" * 100_000,
    b'{"v": 1, "site": "H1", "device": "HH01", "events": {"seq": 1}}',
], ids=["not-utf8", "not-object", "empty", "version", "deep", "events-not-list"])
def test_a_payload_that_is_not_a_batch_is_recorded_and_not_acked(rig: Rig, payload: bytes) -> None:
    rig.service.handle(TOPIC, payload)
    assert rig.acks == [] and rig.store.counts()["bad_payloads"] == 1 and rig.service.stats.store_failures == 0


@pytest.mark.parametrize("state", [
    {"status": "online", "backlog": 2**70}, {"status": ["online"]}, {"status": {"a": 1}},
    {"status": "online", "version": "\ud800"}, {"status": "online", "version": ["1"]},
    {"status": "online", "ts": 10**30},
], ids=["huge-backlog", "status-list", "status-object", "version-surrogate", "version-list", "huge-ts"])
def test_a_hostile_state_message_is_recorded_as_a_bad_payload(rig: Rig, state: dict[str, Any]) -> None:
    payload = json.dumps({"v": 1, "device": DEVICE, **state}).encode()
    rig.service.handle(f"spd/v1/{SITE}/{DEVICE}/state", payload)
    assert [r[0] for r in rig.store._engine.query("SELECT reason FROM bad_payloads")] == ["bad_state"]
    assert rig.service.stats.store_failures == 0


# ---------------------------------------------------------------- only a failing store withholds the ack


def test_a_full_disk_withholds_the_ack_and_the_resend_is_stored_once_space_is_back(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "gw.db")
    rig.send(chain(1))
    pages = rig.store._engine.query("PRAGMA page_count")[0][0]
    rig.store._engine.query(f"PRAGMA max_page_count = {pages}")  # the disk is now full
    big = chain(40)
    assert rig.send(big) is None and rig.service.stats.store_failures == 1
    assert rig.stored() == [1]  # nothing of the failed batch was committed
    rig.store._engine.query("PRAGMA max_page_count = 1073741823")
    assert rig.send(big) == Ack(DEVICE, 40, ())
    assert rig.stored() == list(range(1, 41))


def test_a_database_locked_beyond_its_timeout_withholds_the_ack(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "gw.db", busy_timeout_s=0.05)
    other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert rig.send(chain(2)) is None and rig.service.stats.store_failures == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert rig.send(chain(2)) == Ack(DEVICE, 2, ())


def test_the_ack_is_published_only_after_the_batch_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    seen: list[int] = []
    store = GatewayStore(path)
    reader = sqlite3.connect(path, check_same_thread=False)

    def publish(topic_text: str, payload: bytes) -> None:
        acked = decode_ack(DEVICE, payload).acked
        seen.append(reader.execute("SELECT COUNT(*) FROM events WHERE seq <= ?", (acked,)).fetchone()[0])

    service = IngestService(store, host="127.0.0.1", port=1, publish=publish)
    service.handle(TOPIC, json.dumps({"v": 1, "site": SITE, "device": DEVICE, "events": chain(3)}).encode())
    assert seen == [3]  # a separate connection already sees what the ack covers
    reader.close()
    store.close()


# ---------------------------------------------------------------- generated hostile values (hypothesis)

_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
_ANY_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                         max_leaves=8)
_HOSTILE_VALUE = st.one_of(
    st.integers(min_value=2**63, max_value=2**200), st.integers(min_value=-(2**200), max_value=0),
    st.floats(allow_nan=True, allow_infinity=True), st.text(st.characters(codec=None), max_size=30),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(["", "\x00", "ab" * 32 + "\n", "AB" * 32, "consume\x00"]), _ANY_JSON,
)
SLOW_OK = settings(max_examples=120, deadline=dt.timedelta(seconds=5),
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@SLOW_OK
@given(field=st.sampled_from(FIELDS), value=_HOSTILE_VALUE, where=st.integers(0, 4), keep_hash=st.booleans())
def test_generated_hostile_values_never_lose_the_valid_events_around_them(
    tmp_path_factory: pytest.TempPathFactory, field: str, value: Any, where: int, keep_hash: bool,
) -> None:
    # a seq of 1..4 would be another copy of a valid event (a duplicate or a chain break), not a hostile one
    assume(not (field == "seq" and isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4))
    rig = Rig(tmp_path_factory.mktemp("h") / "gw.db")
    try:
        good = chain(4)
        bad = dict(chain(5)[4])
        bad[field] = value
        if not keep_hash and field != "hash":
            rehash(bad)
        events: list[Any] = [*good]
        events.insert(where, bad)
        ack = rig.send(events)
        assert ack is not None and ack.acked >= 4
        assert rig.stored()[:4] == [1, 2, 3, 4]
        counts = rig.store.counts()
        landed = len(rig.stored()) + counts["quarantined"] + len(rig.unidentified())
        assert landed == 5  # the fifth event is stored (it was still valid), quarantined, or kept unidentified
        assert ack.acked == (5 if len(rig.stored()) + counts["quarantined"] == 5 else 4)
        assert rig.service.stats.store_failures == 0
    finally:
        rig.store.close()


_BODY = st.dictionaries(st.text(max_size=8), _ANY_JSON.filter(lambda v: v == v), max_size=4)  # NaN != NaN


@SLOW_OK
@given(body=_BODY, seq=st.integers(1, MAX_SEQ), ts=st.integers(0, MAX_TS_MS), kind=st.text(max_size=12))
def test_the_decoder_hash_from_canonical_body_bytes_equals_event_hash(body: dict[str, Any], seq: int, ts: int,
                                                                       kind: str) -> None:
    from spd_common.wire import WireError, _canonical_body, _event_digest

    try:
        body_bytes = _canonical_body(body)
    except WireError:  # a refused body (not finite, past 64 bits) is not the point here
        return
    expected = event_hash(DEVICE, seq, ts, kind, body, GENESIS_HASH)
    assert _event_digest(DEVICE, seq, ts, kind, body_bytes, GENESIS_HASH) == expected
