"""End-to-end ingest fuzzing: generated batches, valid and hostile, through the gateway's real ingest path.

Each input is one batch: bytes that choose (:class:`ByteDraw`) a device, which of
its events to send (new ones, a resend from the last ack, old duplicates, a gap),
and which events or envelopes to make hostile (huge or negative integers in any
field, NaN and Infinity, lone surrogates, NUL bytes, deep nesting, wrong types,
malformed hash-chain fields, a forged copy of a stored event, another device's
identity, payloads that are not batches). The batch goes through
:meth:`gateway.ingest.IngestService.handle` into a real :class:`GatewayStore`
(SQLite in a temp dir) with a publish function that captures the ack.

A model of what each device sent is kept beside the store, and after every batch:

* no exception escaped ``handle`` and the store never failed;
* every valid event is stored exactly once, with its hash and body as sent;
* every hostile event is kept with a reason: in ``quarantine`` under its seq (and
  named in the ack's ``rejected``), or in ``bad_payloads`` when its seq is not a
  usable identity; a forged copy of a stored event leaves it unchanged and is
  recorded as a chain break; a hostile payload gets a ``bad_payloads`` row and no ack;
* the ack is exactly the highest contiguous seq stored or quarantined, and, read
  through a second SQLite connection from inside the publish function, what it
  covers is already committed.

Run it with ``python -m hw_sim.fuzz ingest --engine random --inputs N`` (or
``spd-sim fuzz ingest ...``); ``tests/test_fuzz_ingest.py`` runs a short one.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.ingest import IngestService
from gateway.store import MAX_DETAIL_CHARS, MAX_RAW_CHARS, MAX_REASON_CHARS, GatewayStore
from spd_common.wire import GENESIS_HASH, MAX_SEQ, MAX_TS_MS, Ack, EventKind, decode_ack, event_hash

SITE = "site-1"
DEVICES = ("hh-01", "hh-02", "cab-01")
BATCHES_PER_STORE = 5000  # a fresh store (and model) after this many batches keeps each check cheap
_KINDS = tuple(k.value for k in EventKind)
_REASONS = frozenset({"bad_event", "unknown_kind", "bad_hash", "unstorable"})
_FORGED = "same seq received with different content"


class FuzzCheckFailed(AssertionError):
    """The ingest path broke one of its promises on a generated batch."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise FuzzCheckFailed(what)


class ByteDraw:
    """Choices read from fuzzer bytes; once they run out every choice is 0 (a plain valid one)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def below(self, n: int) -> int:
        if n <= 1:
            return 0
        width = 1 if n <= 256 else 2 if n <= 65536 else 4
        chunk = self._data[self._pos:self._pos + width]
        self._pos += width
        return int.from_bytes(chunk, "little") % n if chunk else 0

    def chance(self, one_in: int) -> bool:
        """True about once in ``one_in`` draws (False when the bytes have run out)."""
        return self.below(one_in) == one_in - 1


# ---------------------------------------------------------------- valid events


def _valid_body(draw: ByteDraw, seq: int) -> dict[str, Any]:
    choice = draw.below(16)
    if choice == 1:  # NUL, GS, line separators, astral and CJK text: all valid, stored as they came
        return {"udi": f"]d2\x1d21SN{seq}\x00", "note": "漢字 😀 \u2028\x7f", "dept": ""}
    if choice == 2:  # the deepest nesting allowed
        return {"deep": json.loads("[" * 31 + "]" * 31)}
    if choice == 3:
        return {"max": 2**63 - 1, "min": -(2**63), "f": 1.5e308, "neg": -0.0, "t": True, "n": None}
    if choice == 4:
        return {}
    if choice == 5 and draw.chance(32):  # near the 16 KiB body limit
        return {"udi": "x" * 16_000}
    return {"admission": f"ZY{seq:010d}", "udi": f"]d201095060001343521727123110LOT\x1d21SN{seq}",
            "operator": "N0001", "dept": "OR-3"}


@dataclass
class DeviceModel:
    """What one device has sent, and what the gateway must hold for it."""

    device: str
    log: list[dict[str, Any]] = field(default_factory=list)  # wire form of event seq = index + 1
    sent: int = 0  # highest seq sent so far
    stored: dict[int, str] = field(default_factory=dict)  # seq -> hash of the valid event stored
    quarantined: set[int] = field(default_factory=set)
    acked: int = 0

    def event(self, seq: int, draw: ByteDraw) -> dict[str, Any]:
        while len(self.log) < seq:
            n = len(self.log) + 1
            prev = self.log[-1]["hash"] if self.log else GENESIS_HASH
            kind = _KINDS[draw.below(len(_KINDS))]
            ts = MAX_TS_MS if draw.chance(64) else 1_795_430_400_000 + n * 1000
            body = _valid_body(draw, n)
            digest = event_hash(self.device, n, ts, kind, body, prev)
            self.log.append({"seq": n, "ts": ts, "kind": kind, "body": body, "prev": prev, "hash": digest})
        return self.log[seq - 1]

    def contiguous(self) -> int:
        k = self.acked
        while k + 1 in self.stored or k + 1 in self.quarantined:
            k += 1
        return k


# ---------------------------------------------------------------- hostile events


_BAD_SEQS: tuple[Any, ...] = (2**70, 2**63, 2**64, MAX_SEQ + 1, 0, -1, -(2**70), 1.5, float("nan"), float("inf"),
                              "5", True, None, [5], {"seq": 5}, 10**4000)
_BAD_TS: tuple[Any, ...] = (2**70, 2**63, -1, MAX_TS_MS + 1, 1.0, float("nan"), float("inf"), float("-inf"), "now",
                            None, True, [1])
_BAD_KINDS: tuple[Any, ...] = ("scan", "", "consume\x00", "CONSUME", " consume", "\ud800", "x" * 5000, 7, None,
                               ["consume"], {"k": "consume"})
_BAD_HEX: tuple[Any, ...] = ("AB" * 32, "ab" * 31, "ab" * 33, "ab" * 32 + "\n", "g" * 64, "", None, 0, ["ab" * 32],
                             "\x00" * 64, "ab" * 31 + "\ud800a")


def _bad_body(draw: ByteDraw) -> Any:
    options: tuple[Any, ...] = (
        [], "text", None, 5, True,
        {"n": 2**64}, {"n": -(2**63) - 1}, {"n": 10**300},
        {"f": float("nan")}, {"f": float("inf")}, {"f": float("-inf")},
        {"\udc80": 1}, {"udi": "ok\ud800"}, {"list": ["fine", {"deep": "\udfff"}]},
        {"d": json.loads("[" * 33 + "]" * 33)}, {"d": json.loads('{"a":' * 40 + "1" + "}" * 40)},
        {"udi": "x" * 17_000},
    )
    return options[draw.below(len(options))]


@dataclass
class Hostile:
    """One hostile event in a batch and what the gateway must do with it."""

    raw: Any
    seq: int | None  # the usable identity it carries, None when it has none
    reason: str  # the expected reason; "forged" for a valid-looking copy of a stored event


def _rehash(ev: dict[str, Any], device: str) -> None:
    try:
        ev["hash"] = event_hash(device, ev["seq"], ev["ts"], ev["kind"], ev["body"], ev["prev"])
    except (ValueError, TypeError, RecursionError):  # a lone surrogate cannot be hashed: any hash will do
        ev["hash"] = "ab" * 32


def _hostile(draw: ByteDraw, model: DeviceModel, seq: int) -> Hostile:
    base = dict(model.event(seq, draw))
    choice = draw.below(12)
    if choice == 0:
        base["seq"] = _BAD_SEQS[draw.below(len(_BAD_SEQS))]
        _rehash(base, model.device)
        return Hostile(base, None, "bad_event")
    if choice == 1:
        base["ts"] = _BAD_TS[draw.below(len(_BAD_TS))]
        _rehash(base, model.device)
        return Hostile(base, seq, "bad_event")
    if choice == 2:
        base["kind"] = _BAD_KINDS[draw.below(len(_BAD_KINDS))]
        _rehash(base, model.device)
        return Hostile(base, seq, "unknown_kind")
    if choice == 3:
        base["body"] = _bad_body(draw)
        _rehash(base, model.device)
        return Hostile(base, seq, "bad_event")
    if choice == 4:
        base["prev"] = _BAD_HEX[draw.below(len(_BAD_HEX))]
        _rehash(base, model.device)
        return Hostile(base, seq, "bad_event")
    if choice == 5:
        base["hash"] = _BAD_HEX[draw.below(len(_BAD_HEX))]
        return Hostile(base, seq, "bad_event")
    if choice == 6:  # well formed, wrong: a flipped digit, or hashed as another device's event
        if draw.below(2):
            base["hash"] = ("0" if base["hash"][0] != "0" else "1") + base["hash"][1:]
        else:
            _rehash(base, "other-device")
        return Hostile(base, seq, "bad_hash")
    if choice == 7:
        del base[("seq", "ts", "kind", "body", "prev", "hash")[draw.below(6)]]
        return Hostile(base, seq if "seq" in base else None, "unknown_kind" if "kind" not in base else "bad_event")
    if choice == 8:
        base["extra"] = "field"
        return Hostile(base, seq, "bad_event")
    if choice == 9:
        shapes: tuple[Any, ...] = (None, 3, "event", [1, 2], {}, True, 2**70)
        return Hostile(shapes[draw.below(len(shapes))], None, "bad_event")
    if choice == 10 and seq in model.stored:  # a forged copy of a stored event, correctly hashed
        base["body"] = {"udi": "forged", "n": draw.below(1000)}
        _rehash(base, model.device)
        return Hostile(base, seq, "forged")
    base["body"] = {**base["body"], "nul": "\x00", "s": ("\ud800", "\udfff", "a\udc00b")[draw.below(3)]}
    _rehash(base, model.device)
    return Hostile(base, seq, "bad_event")


# ---------------------------------------------------------------- hostile envelopes


def _hostile_envelope(draw: ByteDraw, device: str, events: list[Any]) -> tuple[bytes, str]:
    """A payload that is not a valid batch as a whole, and the reason it must be refused with."""
    other = next(d for d in DEVICES if d != device)
    good = {"v": 1, "site": SITE, "device": device, "events": events}
    choice = draw.below(10)
    if choice == 0:
        return json.dumps({**good, "device": other}).encode(), "identity_mismatch"
    if choice == 1:
        return json.dumps({**good, "site": "site-2"}).encode(), "identity_mismatch"
    if choice == 2:
        return json.dumps({**good, "v": (2, "1", None, 1.0 + 1e-9)[draw.below(4)]}).encode(), "unsupported_version"
    if choice == 3:
        return json.dumps({**good, "events": ([], {}, None, "x")[draw.below(4)]}).encode(), "bad_batch"
    if choice == 4:
        return json.dumps({**good, "events": [{}] * 1001}).encode(), "bad_batch"
    if choice == 5:
        return b"\xff" + json.dumps(good).encode(), "bad_json"
    if choice == 6:
        return json.dumps(good).encode()[:-1], "bad_json"
    if choice == 7:
        return b"[" * 50_000 + b"]" * 50_000, "bad_json"
    if choice == 8:
        return b'{"v":1,"device":"' + device.encode() + b'","events":[],"n":' + b"9" * 5000 + b"}", "bad_json"
    return json.dumps(events).encode(), "bad_json"


# ---------------------------------------------------------------- the fuzzer


class IngestFuzzer:
    """One store and one model, fed batch by batch; :meth:`one_batch` raises on any broken promise."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="fuzz-ingest-")) if workdir is None else workdir
        self.generation = 0
        self.batches = 0
        self.events_valid = 0
        self.events_hostile = 0
        self.envelopes_hostile = 0
        self._open()

    def _open(self) -> None:
        self.generation += 1
        self.path = self.workdir / f"gateway-{self.generation}.db"
        self.store = GatewayStore(self.path, synchronous="OFF")
        self.reader = sqlite3.connect(self.path, check_same_thread=False)  # sees only what is committed
        self.models = {d: DeviceModel(d) for d in DEVICES}
        self.acks: list[tuple[str, Ack]] = []
        self.bad_payloads = 0
        self.forged: set[tuple[str, int]] = set()
        self.service = IngestService(self.store, host="127.0.0.1", port=1, publish=self._publish)
        self._in_store = 0

    def _close(self) -> None:
        self.reader.close()
        self.store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def reset(self) -> None:
        """Start again on a fresh store (after a failed check, the model no longer matches it)."""
        self._close()
        self._open()

    def close(self) -> None:
        self._close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _publish(self, topic_text: str, payload: bytes) -> None:
        device = topic_text.split("/")[3]
        ack = decode_ack(device, payload)
        model = self.models[device]
        if ack.acked > model.acked:  # everything the ack newly covers is committed: another connection sees it
            seen = self.reader.execute(
                "SELECT COUNT(*) FROM (SELECT seq FROM events WHERE device = ?1 AND seq > ?2 AND seq <= ?3 "
                "UNION SELECT seq FROM quarantine WHERE device = ?1 AND seq > ?2 AND seq <= ?3)",
                (device, model.acked, ack.acked),
            ).fetchone()[0]
            _require(seen == ack.acked - model.acked,
                     f"{device}: ack {ack.acked} published before seqs {model.acked + 1}..{ack.acked} were committed")
        self.acks.append((topic_text, ack))

    # ------------------------------------------------------------ one batch

    def one_batch(self, draw: ByteDraw) -> None:
        if self._in_store >= BATCHES_PER_STORE:
            self.reset()
        self._in_store += 1
        self.batches += 1
        model = self.models[DEVICES[draw.below(len(DEVICES))]]
        seqs = self._choose_seqs(draw, model)
        events: list[Any] = []
        hostile: list[Hostile] = []
        valid: list[dict[str, Any]] = []
        for seq in seqs:
            if draw.chance(4):
                bad = _hostile(draw, model, seq)
                hostile.append(bad)
                events.append(bad.raw)
            else:
                ev = model.event(seq, draw)
                valid.append(ev)
                events.append(ev)
                if draw.chance(16):  # the same event twice in one batch
                    events.append(ev)
        model.sent = max(model.sent, *seqs)
        topic_text = f"spd/v1/{SITE}/{model.device}/events"
        if draw.chance(24):
            payload, reason = _hostile_envelope(draw, model.device, events)
            self.envelopes_hostile += 1
            self._run(topic_text, payload)
            self._check_refused_payload(topic_text, reason)
            return
        self.events_valid += len(valid)
        self.events_hostile += len(hostile)
        self._run(topic_text, json.dumps({"v": 1, "site": SITE, "device": model.device, "events": events}).encode())
        self._check_batch(model, valid, hostile)

    def _choose_seqs(self, draw: ByteDraw, model: DeviceModel) -> list[int]:
        n = 1 + draw.below(8)
        how = draw.below(8)
        if how == 0 and model.sent:  # an old duplicate
            start = 1 + draw.below(model.sent)
        elif how == 1:  # resend from the last ack (after a reconnect)
            start = model.acked + 1
        elif how == 2:  # a gap: the batch before this one was lost
            start = model.sent + 2 + draw.below(3)
        else:
            start = model.sent + 1
        seqs = list(range(start, start + n))
        if draw.chance(8):  # out of order inside the batch
            seqs.reverse()
        return seqs

    def _run(self, topic_text: str, payload: bytes) -> None:
        failures = self.service.stats.store_failures
        self.service.handle(topic_text, payload)  # anything escaping is a crash
        _require(self.service.stats.store_failures == failures, "the store failed on a generated batch")

    # ------------------------------------------------------------ checks

    def _check_refused_payload(self, topic_text: str, reason: str) -> None:
        acks = len(self.acks)
        self.bad_payloads += 1
        row = self._read("SELECT topic, reason FROM bad_payloads ORDER BY id DESC LIMIT 1")
        _require(row == [(topic_text, reason)], f"refused payload recorded as {row}, expected {reason}")
        _require(len(self.acks) == acks, "a refused payload was acked")
        self._check_totals()

    def _check_batch(self, model: DeviceModel, valid: list[dict[str, Any]], hostile: list[Hostile]) -> None:
        _require(bool(self.acks), "no ack for a batch")
        topic_text, ack = self.acks.pop()
        _require(not self.acks, "more than one ack for a batch")
        _require(topic_text == f"spd/v1/{SITE}/{model.device}/ack", f"ack on {topic_text}")
        new_valid = []
        for ev in valid:
            if ev["seq"] not in model.stored:
                model.stored[ev["seq"]] = ev["hash"]
                new_valid.append(ev)
        rejected = {(r.seq, r.reason) for r in ack.rejected}
        for bad in hostile:
            if bad.seq is None:
                self.bad_payloads += 1
            elif bad.reason == "forged":
                self.forged.add((model.device, bad.seq))
            elif bad.seq not in model.stored:
                model.quarantined.add(bad.seq)
                _require((bad.seq, bad.reason) in rejected,
                         f"{model.device}: hostile seq {bad.seq} ({bad.reason}) not in the ack's rejected {rejected}")
        _require(all(seq in model.quarantined for seq, _ in rejected), f"ack rejects unexpected seqs: {rejected}")
        expected = model.contiguous()
        _require(ack.acked == expected, f"{model.device}: acked {ack.acked}, expected {expected}")
        model.acked = expected
        for ev in new_valid:
            row = self._read("SELECT hash, body FROM events WHERE device = ? AND seq = ?",
                                   (model.device, ev["seq"]))
            _require(len(row) == 1 and row[0][0] == ev["hash"] and json.loads(row[0][1]) == ev["body"],
                     f"{model.device}: valid event {ev['seq']} not stored as sent")
        for bad in hostile:
            if bad.seq is not None and bad.reason != "forged" and bad.seq in model.quarantined:
                self._check_quarantine_row(model.device, bad.seq)
            if bad.reason == "forged":
                (stored,) = self._read("SELECT hash FROM events WHERE device = ? AND seq = ?",
                                             (model.device, bad.seq))[0]
                _require(stored == model.stored[bad.seq], f"{model.device}: forged copy of {bad.seq} replaced it")
        self._check_totals()

    def _check_quarantine_row(self, device: str, seq: int) -> None:
        row = self._read("SELECT reason, detail, raw FROM quarantine WHERE device = ? AND seq = ?", (device, seq))
        _require(len(row) == 1, f"{device}: hostile seq {seq} not quarantined")
        reason, detail, raw = row[0]
        _require(reason in _REASONS and len(reason) <= MAX_REASON_CHARS, f"quarantine reason {reason!r}")
        _require(0 < len(detail) <= MAX_DETAIL_CHARS, f"quarantine detail of {len(detail)} chars")
        _require(raw.isascii() and len(raw) <= MAX_RAW_CHARS, "quarantine raw not bounded ASCII")

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The oracle's own read of the store file (a second connection: it checks what was committed)."""
        with closing(sqlite3.connect(self.store.path)) as db:
            return db.execute(sql, params).fetchall()

    def _check_totals(self) -> None:
        counts = {name: int(self._read(f"SELECT COUNT(*) FROM {name}")[0][0])  # fixed table names
                  for name in ("events", "quarantine", "bad_payloads", "chain_breaks")}
        counts["quarantined"] = counts["quarantine"]
        stored = sum(len(m.stored) for m in self.models.values())
        quarantined = sum(len(m.quarantined) for m in self.models.values())
        _require(counts["events"] == stored, f"{counts['events']} events stored, {stored} expected (once each)")
        _require(counts["quarantined"] == quarantined, f"{counts['quarantined']} quarantined, {quarantined} expected")
        _require(counts["bad_payloads"] == self.bad_payloads,
                 f"{counts['bad_payloads']} bad payloads, {self.bad_payloads} expected")
        breaks = {(d, s) for d, s, detail in self._read("SELECT device, seq, detail FROM chain_breaks")
                  if detail == _FORGED}
        _require(breaks == self.forged and counts["chain_breaks"] == len(self.forged),
                 f"chain breaks {counts['chain_breaks']} differ from the forged copies sent {len(self.forged)}")

    def summary(self) -> str:
        return (f"{self.batches} batches ({self.envelopes_hostile} hostile payloads), {self.events_valid} valid "
                f"and {self.events_hostile} hostile events")


_FUZZER: IngestFuzzer | None = None


def run_one(data: bytes) -> None:
    """The fuzz target: one generated batch on a long-lived fuzzer (reset after a failure)."""
    global _FUZZER
    if _FUZZER is None:
        _FUZZER = IngestFuzzer()
        for name in ("gateway.store", "gateway.ingest"):  # every hostile event is logged: too loud here
            logging.getLogger(name).setLevel(logging.CRITICAL)
        import atexit

        atexit.register(_FUZZER.close)
    try:
        _FUZZER.one_batch(ByteDraw(data))
    except BaseException:
        _FUZZER.reset()
        raise


def seeds() -> list[bytes]:
    import random

    rng = random.Random(20261203)
    return [b"", bytes(64), *(rng.randbytes(rng.randint(16, 400)) for _ in range(8))]


def fuzzer_summary() -> str:
    return _FUZZER.summary() if _FUZZER is not None else "no batches"
