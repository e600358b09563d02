"""Events and ingest: device events stored once per ``(device, seq)``, quarantine, refused payloads, chain breaks.

An event batch is committed before the device is acked; each event is stored on its own (a savepoint),
so one bad event is quarantined and the rest of its batch kept. ``events(device, seq)`` is unique, so a
resent batch stores nothing twice.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.data.engine import Engine, SqliteEngine, Transaction
from gateway.data.multirow import GROUP_ROWS, chunks, marks, rows_of
from spd_common.wire import (
    GENESIS_HASH,
    MAX_SEQ,
    Batch,
    Event,
    EventKind,
    InvalidEvent,
    Rejection,
    WireError,
    check_event,
    readable_seq,
    shown,
)

log = logging.getLogger(__name__)

EVENT_FAULTS: tuple[type[BaseException], ...] = (
    ValueError,  # WireError, UnicodeEncodeError, an integer past the digit limit
    TypeError,
    OverflowError,  # an integer past SQLite's 64 bits
    RecursionError,
    *SqliteEngine.data_faults,  # a value of a type SQLite cannot bind ...
)
"""What storing one event can raise because of that event (with the engine's ``data_faults``: on
PostgreSQL a NUL in text, a number past 64 bits). Anything else (``OperationalError``: disk full, I/O
error, database locked past its timeout; a corrupt database; a lost connection) is a failure of the store
and fails the whole batch, so no ack goes out and the device resends. Taking a store failure for an event
fault is harmless: the quarantine row written instead fails the same way and the batch still fails."""

EVENTS_WRITERS = "events"
"""The key every transaction that inserts events shares, and the readers that walk ``events`` by id wait for."""

STORE_FAULTS: tuple[type[BaseException], ...] = (OSError, MemoryError)
"""What a failure of the store itself raises while a batch is stored, with the engine's ``store_faults``
(after :data:`EVENT_FAULTS` and its ``data_faults`` were taken out): the whole group commit is rolled
back, no ack goes out and the devices resend. The drivers' ``DatabaseError`` is the base of their
``IntegrityError`` and the like, which :meth:`EventStore._store_event` takes as event faults first."""

ADVANCE_READ = 1000
"""How many seqs after a device's contiguous seq one read of :meth:`EventStore._advance_from` looks at."""
ADVANCE_DEVICES = 250  # devices whose next seqs one statement reads: 6 parameters each, well within SQLite's limit

MAX_RAW_CHARS = 65536
"""Longest raw form of a quarantined event or refused payload that is kept (a valid body is at most 16 KiB)."""
MAX_DETAIL_CHARS = 1000
MAX_REASON_CHARS = 40


@dataclass(slots=True)
class IngestResult:
    new: int = 0
    duplicates: int = 0
    quarantined: int = 0
    conflicts: int = 0
    contiguous: int = 0
    unidentified: int = 0  # refused events without a usable seq, kept in bad_payloads
    rejected: list[Rejection] = field(default_factory=list)
    chain_breaks: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    event: Event


class EventRow(NamedTuple):
    """An event as stored, with its store id and when it was stored (``body`` the JSON text)."""

    id: int
    device: str
    seq: int
    ts_ms: int
    kind: str
    body: str
    stored_at: float


class ChainBreakRow(NamedTuple):
    device: str
    seq: int
    detail: str
    detected_at: float


class EventStore:
    """The ``events``, ``quarantine``, ``bad_payloads`` and ``chain_breaks`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._faults = (*EVENT_FAULTS, *engine.data_faults)
        self._store_faults = (*STORE_FAULTS, *engine.store_faults)

    def ingest(self, batch: Batch, *, now: float | None = None) -> IngestResult:
        """Store a batch once per ``(device, seq)``, verify links, and advance the device's contiguous seq.

        An event whose fields break the contract or cannot be stored is kept in
        quarantine with its reason, and the events around it are stored (see
        :meth:`_ingest_batch`). Only a failure of the store itself raises, and
        then nothing of the batch is committed.
        """
        (res,) = self.ingest_group([batch], now=now)
        if isinstance(res, BaseException):
            raise res
        return res

    def ingest_group(self, batches: Sequence[Batch], *, now: float | None = None) -> list[IngestResult | Exception]:
        """Store many batches (of many devices) in ONE transaction: group commit; one result per batch, in order.

        Each batch is stored as :meth:`ingest` stores it, under a savepoint of its own: its events in one pass,
        or, if one of them is at fault, each under its own savepoint, so one bad event is quarantined alone. A
        batch that fails in a way that is neither an event fault nor a failure of the store (a bug) is rolled
        back alone: its result is the exception and it must not be acknowledged; the other batches are
        committed. A failure of the store itself (the engine's ``store_faults``, ``OSError``, ``MemoryError``)
        raises, and then nothing of the group is committed. Every result's ``contiguous`` is its device's
        contiguous seq after the whole group.
        """
        at = time.time() if now is None else now
        results: list[IngestResult | Exception] = []
        with self._engine.transaction() as db:
            self._engine.share(db, EVENTS_WRITERS)  # the readers by id wait for this group (read_settled)
            devices: dict[str, str] = {}
            for batch in batches:
                devices.setdefault(batch.device, batch.site)
            db.executemany(  # psycopg sends them in one pipeline; in device order, so that two gateways
                # storing batches of the same devices lock their rows in the same order (no deadlock)
                "INSERT INTO devices (device, site, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen",
                [(device, site, at) for device, site in sorted(devices.items())],
            )
            planned = self._plain_group(db, batches, at) if len(batches) > 1 else None
            if planned is not None:
                results.extend(planned)
            else:
                for batch in batches:
                    results.append(self._ingest_batch(db, batch, at))
            contiguous = self._advance_all(db, list(devices))
        for batch, res in zip(batches, results, strict=True):
            if isinstance(res, IngestResult):
                res.contiguous = contiguous[batch.device]
        return results

    def _plain_group(self, db: Transaction, batches: Sequence[Batch], at: float) -> list[IngestResult] | None:
        """A group of plain batches (:func:`_plain_rows`), none with a refused event, in three statements
        whatever its size: the links of every device read in one query, their new events written in
        multi-row inserts under one savepoint. Where each batch alone costs a savepoint, a range read and its
        inserts — on PostgreSQL a round trip each, five per batch of one scan — this is the group of a
        thousand devices scanning once a second, and of a hundred devices sending their backlogs a few
        batches each. A device's batches are planned in the group's order on one set of links, so the
        second learns what the first writes. None (nothing written) when a batch is not plain: then every
        batch is stored as :meth:`_ingest_batch` stores it."""
        if any(b.invalid or not b.checked for b in batches):
            return None
        seqs_of: dict[str, list[object]] = {}
        for batch in batches:
            seqs_of.setdefault(batch.device, []).extend(ev.seq for ev in batch.events)
        ranges: list[tuple[str, int, int]] = []
        for device, seqs in seqs_of.items():
            span = _plain_span(seqs)
            if span is None:
                return None
            ranges.append((device, *span))
        known: dict[str, dict[int, tuple[str, str]]] = {device: {} for device, _, _ in ranges}
        for i in range(0, len(ranges), 300):
            part = ranges[i:i + 300]
            where = " OR ".join(["(device = ? AND seq BETWEEN ? AND ?)"] * len(part))
            for device, seq, prev, hash_ in db.execute(
                    f"SELECT device, seq, prev, hash FROM events WHERE {where}",
                    [v for d, lo, hi in part for v in (d, lo - 1, hi + 1)]).fetchall():
                known[str(device)][int(seq)] = (str(prev), str(hash_))
        links = {device: _Links(lo, hi, known[device]) for device, lo, hi in ranges}
        results: list[IngestResult] = []
        rows: list[tuple[object, ...]] = []
        for batch in batches:
            res = IngestResult()
            planned = _plain_rows(batch, links[batch.device], res, at)
            if planned is None:
                return None
            results.append(res)
            rows += planned
        if rows:
            rows.sort(key=lambda r: (r[0], r[1]))  # by device and seq: two gateways lock keys in one order
            db.execute("SAVEPOINT plain_group")
            if not self._insert_planned(db, rows):  # batch by batch, from the group's start
                db.execute("ROLLBACK TO plain_group")
                db.execute("RELEASE plain_group")
                return None
            db.execute("RELEASE plain_group")
        return results

    def _insert_planned(self, db: Transaction, rows: list[tuple[object, ...]]) -> bool:
        """Write planned events (:func:`_plain_rows`) in multi-row inserts of up to ``GROUP_ROWS`` rows; False
        when one of them is at fault or was not new after all (not what the links said): the caller rolls
        back and stores one by one.

        One statement of 400 rows, not 400 executions of one: on PostgreSQL even in one pipeline each row was
        its own bind and execute, for the server and for psycopg, and that was the ingest writer's largest
        cost in a burst."""
        full = len(rows) - len(rows) % GROUP_ROWS
        written = 0
        try:
            if full:  # one executemany of the full chunks: on PostgreSQL one pipeline, the server inserting one
                # chunk while psycopg sends the next
                written += db.executemany(_insert_events(GROUP_ROWS), [
                    [v for row in part for v in row] for part in chunks(rows[:full], GROUP_ROWS)]).rowcount
            if full < len(rows):
                rest = [v for row in rows[full:] for v in row]
                written += db.execute(_insert_events(len(rows) - full), rest).rowcount
        except self._faults:
            return False
        return written == len(rows)

    def _ingest_batch(self, db: Transaction, batch: Batch, at: float) -> IngestResult | Exception:
        """One batch under its savepoint: first all its events in one go; if one of them is at fault, all of
        that is rolled back and each event is stored under a savepoint of its own (so the bad one is
        quarantined alone). The first pass saves two statements per event, most of a PostgreSQL group's
        round trips, and a batch with a bad event is rare."""
        db.execute("SAVEPOINT batch")
        try:
            res = self._store_batch(db, batch, at, each_apart=False)
            if res is None:
                db.execute("ROLLBACK TO batch")
                res = self._store_batch(db, batch, at, each_apart=True)
                assert res is not None
        except self._store_faults:
            raise
        except Exception as err:  # a bug with this batch: it alone is rolled back and not acknowledged
            log.exception("device %s: batch could not be stored; rolled back alone", batch.device)
            db.execute("ROLLBACK TO batch")
            db.execute("RELEASE batch")
            return err
        db.execute("RELEASE batch")
        return res

    def _store_batch(self, db: Transaction, batch: Batch, at: float, *, each_apart: bool) -> IngestResult | None:
        """The batch's events and its refused ones; ``each_apart``: every event under its own savepoint, else
        None as soon as one event is at fault (the caller rolls the batch back and stores each apart)."""
        res = IngestResult()
        links = _Links.read(db, batch.device, [ev.seq for ev in batch.events])
        planned = None if each_apart else _plain_rows(batch, links, res, at)
        if planned is not None:  # the new events in one statement
            if planned and not self._insert_planned(db, planned):
                return None
        else:
            for ev in batch.events:
                stored = links.get(ev.seq) if batch.checked and links.covers(ev.seq) else None
                if stored is not None and stored[1] == ev.hash:  # a resend of a stored event: nothing to write
                    res.duplicates += 1
                    continue
                if each_apart:
                    self._store_event(db, batch.site, ev, at, res, checked=batch.checked, links=links)
                    continue
                try:
                    self._write_event(db, batch.site, ev, at, res, links, checked=batch.checked)
                except self._faults:  # first, as _store_event takes them: IntegrityError is a DatabaseError too
                    return None
        for bad in batch.invalid:
            self._quarantine(db, batch.device, bad, at, res)
        return res

    def _store_event(
        self, db: Transaction, site: str, ev: Event, at: float, res: IngestResult, *, checked: bool,
        links: _Links | None = None,
    ) -> None:
        part = IngestResult()
        db.execute("SAVEPOINT event")
        try:
            self._write_event(db, site, ev, at, part, links or _Links.NONE, checked=checked)
        except self._faults as err:
            db.execute("ROLLBACK TO event")
            db.execute("RELEASE event")
            if isinstance(err, WireError):
                reason, detail = err.reason, err.detail
            else:
                reason, detail = "unstorable", f"{type(err).__name__}: {shown(str(err), 200)}"
            raw = {"seq": ev.seq, "ts": ev.ts_ms, "kind": ev.kind, "body": ev.body, "prev": ev.prev, "hash": ev.hash}
            self._quarantine(db, ev.device, InvalidEvent(readable_seq(raw), reason, detail, raw), at, res)
            return
        db.execute("RELEASE event")
        res.new += part.new
        res.duplicates += part.duplicates
        res.conflicts += part.conflicts
        res.chain_breaks += part.chain_breaks

    def _write_event(self, db: Transaction, site: str, ev: Event, at: float, res: IngestResult, links: _Links, *,
                     checked: bool) -> None:
        """Check an event built in code (an imported export, not by ``decode_batch``), then insert it."""
        if not checked:
            check_event(ev)
        self._insert_event(db, site, ev, at, res, links)

    def _insert_event(
        self, db: Transaction, site: str, ev: Event, at: float, res: IngestResult, links: _Links
    ) -> None:
        cur = db.execute(
            INSERT_EVENT,
            (ev.device, ev.seq, site, ev.ts_ms, ev.kind, json.dumps(ev.body, ensure_ascii=False), ev.prev, ev.hash, at),
        )
        known = links.covers(ev.seq)
        if cur.rowcount == 0:
            if known:
                row = links.get(ev.seq)
                stored_hash = row[1] if row is not None else None
            else:
                one = db.execute("SELECT hash FROM events WHERE device = ? AND seq = ?", (ev.device, ev.seq)).fetchone()
                stored_hash = one[0] if one is not None else None
            if stored_hash is not None and stored_hash != ev.hash:
                res.conflicts += 1
                self._chain_break(db, ev.device, ev.seq, "same seq received with different content", at, res)
            else:
                res.duplicates += 1
            return
        res.new += 1
        # verify the link backwards, and forwards if the successor arrived first
        if ev.seq == 1:
            if ev.prev != GENESIS_HASH:
                self._chain_break(db, ev.device, ev.seq, "first event does not start from the genesis hash", at, res)
        else:
            before = links.get(ev.seq - 1) if known else _link(db, ev.device, ev.seq - 1)
            if before is not None and before[1] != ev.prev:
                self._chain_break(db, ev.device, ev.seq, "prev does not match the stored predecessor", at, res)
        after = links.get(ev.seq + 1) if known else _link(db, ev.device, ev.seq + 1)
        if after is not None and after[0] != ev.hash:
            self._chain_break(db, ev.device, ev.seq + 1, "prev does not match the stored predecessor", at, res)
        if known:
            links.add(ev.seq, ev.prev, ev.hash)

    def _quarantine(self, db: Transaction, device: str, bad: InvalidEvent, at: float, res: IngestResult) -> None:
        """Keep a refused event with its reason: under its seq when that is usable, else as a bad payload.

        Every value written is bounded, escaped text (``raw`` is ASCII JSON), so the
        row can be written whatever the event held; if it still fails, the store failed.
        """
        reason = _safe_text(bad.reason, MAX_REASON_CHARS) or "bad_event"
        detail = _safe_text(bad.detail, MAX_DETAIL_CHARS)
        raw = raw_text(bad.raw)
        seq = bad.seq if bad.seq is not None and readable_seq({"seq": bad.seq}) is not None else None
        log.warning("device %s: event seq=%s quarantined: %s (%s)", device, seq, reason, detail)
        if seq is None:
            db.execute(
                "INSERT INTO bad_payloads (topic, reason, detail, payload, received_at) VALUES (?, ?, ?, ?, ?)",
                (f"device:{device}", reason, detail, raw.encode("ascii"), at),
            )
            res.unidentified += 1
            return
        exists = db.execute("SELECT 1 FROM events WHERE device = ? AND seq = ?", (device, seq)).fetchone()
        if exists:  # a valid copy is already stored; the bad copy adds nothing
            res.duplicates += 1
            return
        cur = db.execute(
            "INSERT INTO quarantine (device, seq, reason, detail, raw, stored_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (device, seq, reason, detail, raw, at),
        )
        res.quarantined += cur.rowcount
        res.rejected.append(Rejection(seq, reason))

    def _chain_break(
        self, db: Transaction, device: str, seq: int, detail: str, at: float, res: IngestResult
    ) -> None:
        log.error("device %s: hash chain break at seq %d: %s", device, seq, detail)
        db.execute(
            "INSERT INTO chain_breaks (device, seq, detail, detected_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (device, seq, detail, at),
        )
        res.chain_breaks.append((seq, detail))

    def _advance_all(self, db: Transaction, devices: list[str]) -> dict[str, int]:
        """The contiguous seqs of a group's devices, each moved past what follows it: their contiguous seqs read
        in one statement and the next :data:`ADVANCE_READ` seqs of each in one more (per :data:`ADVANCE_DEVICES`
        devices); a device whose window is all there reads on alone (:meth:`_advance_from`); the moved ones
        written in one ``executemany``. One read per device was the ingest writer's largest cost on PostgreSQL
        at a thousand devices scanning once a second (a round trip each)."""
        start: dict[str, int] = {}
        for part in chunks(devices, 500):
            start.update((str(d), int(c)) for d, c in db.execute(
                f"SELECT device, contiguous_seq FROM devices WHERE device IN ({marks(len(part))})",
                list(part)).fetchall())
        contiguous: dict[str, int] = {}
        for part in chunks(devices, ADVANCE_DEVICES):
            window = " OR ".join(["(device = ? AND seq > ? AND seq <= ?)"] * len(part))
            bounds = [v for d in part for v in (d, start[d], start[d] + ADVANCE_READ)]
            present: dict[str, set[int]] = {d: set() for d in part}
            for d, seq in db.execute(f"SELECT device, seq FROM events WHERE {window} "
                                     f"UNION ALL SELECT device, seq FROM quarantine WHERE {window}",
                                     bounds + bounds).fetchall():
                present[str(d)].add(int(seq))
            for d in part:
                c, seqs = start[d], present[d]
                while c + 1 in seqs:
                    c += 1
                contiguous[d] = self._advance_from(db, d, c) if c == start[d] + ADVANCE_READ else c
        moved = [(contiguous[d], d) for d in devices if contiguous[d] != start[d]]
        if moved:
            db.executemany("UPDATE devices SET contiguous_seq = ? WHERE device = ?", moved)
        return contiguous

    def _advance_from(self, db: Transaction, device: str, contiguous: int) -> int:
        """The device's contiguous seq moved from ``contiguous`` past every stored or quarantined seq that
        follows it, reading both tables in one statement per :data:`ADVANCE_READ` seqs."""
        while True:
            present: set[int] = set()
            bound: float = float("inf")
            rows = db.execute(
                "SELECT 0, seq FROM (SELECT seq FROM events WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?) AS e "
                "UNION ALL "
                "SELECT 1, seq FROM (SELECT seq FROM quarantine WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?) "
                "AS q",
                (device, contiguous, ADVANCE_READ, device, contiguous, ADVANCE_READ)).fetchall()
            for table in (0, 1):
                seqs = sorted(int(r[1]) for r in rows if r[0] == table)
                present.update(seqs)
                if len(seqs) == ADVANCE_READ:  # more may follow: trust this read only up to its last seq
                    bound = min(bound, seqs[-1])
            while contiguous + 1 in present and contiguous + 1 <= bound:
                contiguous += 1
            if contiguous < bound:  # stopped at a gap, or read everything there is
                return contiguous

    def record_bad_payload(self, topic_text: str, reason: str, detail: str, payload: bytes) -> None:
        with self._engine.transaction() as db:
            db.execute(
                "INSERT INTO bad_payloads (topic, reason, detail, payload, received_at) VALUES (?, ?, ?, ?, ?)",
                (_safe_text(topic_text, 300), _safe_text(reason, MAX_REASON_CHARS),
                 _safe_text(detail, MAX_DETAIL_CHARS), bytes(payload[:MAX_RAW_CHARS]), time.time()),
            )

    def consumption_events(self, *, after_id: int, limit: int) -> list[StoredEvent]:
        rows = self._engine.read_settled(
            EVENTS_WRITERS,
            "SELECT id, device, seq, ts_ms, kind, body, prev, hash FROM events "
            "WHERE id > ? AND kind = ? ORDER BY id LIMIT ?",
            (after_id, EventKind.CONSUME.value, limit),
        )
        return [StoredEvent(r[0], Event(r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])) for r in rows]

    def last_event_id(self) -> int:
        return int(self._engine.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    def charging_events(self, *, after_id: int, limit: int) -> list[StoredEvent]:
        """Consumptions, returns of unused items and items put back in a cabinet after ``after_id``, in store order."""
        rows = self._engine.read_settled(
            EVENTS_WRITERS,
            "SELECT id, device, seq, ts_ms, kind, body, prev, hash FROM events "
            "WHERE id > ? AND kind IN (?, ?, ?, ?) ORDER BY id LIMIT ?",
            (after_id, EventKind.CONSUME.value, EventKind.RETURN_UNUSED.value, EventKind.RETURNED.value,
             EventKind.RESTOCKED.value, limit),
        )
        return [StoredEvent(r[0], Event(r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])) for r in rows]

    def events_of_kinds(self, kinds: tuple[str, ...], *, after_id: int, limit: int) -> list[EventRow]:
        """Events of these kinds stored after ``after_id``, in store order."""
        marks = ", ".join("?" * len(kinds))
        rows = self._engine.read_settled(
            EVENTS_WRITERS,
            f"SELECT id, device, seq, ts_ms, kind, body, stored_at FROM events WHERE id > ? AND kind IN ({marks}) "
            "ORDER BY id LIMIT ?", (after_id, *kinds, limit))
        return [EventRow(*r) for r in rows]

    def device_events(self, device: str, kind: str, *, first_seq: int, last_seq: int) -> list[EventRow]:
        """One device's events of ``kind`` with ``first_seq <= seq <= last_seq``, by seq."""
        rows = self._engine.query(
            "SELECT id, device, seq, ts_ms, kind, body, stored_at FROM events WHERE device = ? AND kind = ? "
            "AND seq >= ? AND seq <= ? ORDER BY seq", (device, kind, first_seq, last_seq))
        return [EventRow(*r) for r in rows]

    def chain_breaks(self) -> list[ChainBreakRow]:
        rows = self._engine.query("SELECT device, seq, detail, detected_at FROM chain_breaks ORDER BY device, seq")
        return [ChainBreakRow(*r) for r in rows]


def _link(db: Transaction, device: str, seq: int) -> tuple[str, str] | None:
    """(prev, hash) of a stored event."""
    row = db.execute("SELECT prev, hash FROM events WHERE device = ? AND seq = ?", (device, seq)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


class _Links:
    """(prev, hash) of a device's stored events around one batch: read in one range query, kept up to date.

    Covers the seqs ``lo .. hi`` of the batch: for those, the events at ``seq - 1``, ``seq`` and ``seq + 1``
    are all known without a query (stored before the batch, or stored by it — :meth:`add`). A batch whose
    seqs are not plain, close-together integers covers nothing, and each event looks its neighbours up.
    """

    NONE: _Links

    def __init__(self, lo: int, hi: int, rows: dict[int, tuple[str, str]]) -> None:
        self.lo, self.hi, self._rows = lo, hi, rows

    @classmethod
    def read(cls, db: Transaction, device: str, seqs: list[object]) -> _Links:
        span = _plain_span(seqs)
        if span is None:
            return cls.NONE
        lo, hi = span
        rows = db.execute("SELECT seq, prev, hash FROM events WHERE device = ? AND seq BETWEEN ? AND ?",
                          (device, lo - 1, hi + 1)).fetchall()
        return cls(lo, hi, {int(r[0]): (str(r[1]), str(r[2])) for r in rows})

    def covers(self, seq: object) -> bool:
        return type(seq) is int and self.lo <= seq <= self.hi

    def get(self, seq: int) -> tuple[str, str] | None:
        return self._rows.get(seq)

    def add(self, seq: int, prev: str, hash_: str) -> None:
        self._rows[seq] = (prev, hash_)


_Links.NONE = _Links(1, 0, {})


def _plain_span(seqs: list[object]) -> tuple[int, int] | None:
    """The range ``lo .. hi`` of a batch's seqs when they are plain, close-together integers; else None."""
    plain = [s for s in seqs if type(s) is int and 1 <= s <= MAX_SEQ - 1]
    if not plain or len(plain) != len(seqs):
        return None
    lo, hi = min(plain), max(plain)
    if hi - lo > 2 * len(plain) + 16:  # scattered seqs: the range would read events the batch never touches
        return None
    return lo, hi


@functools.lru_cache(maxsize=64)
def _insert_events(n: int) -> str:
    """The insert of ``n`` events in one statement; a resent ``(device, seq)`` is left as stored."""
    return ("INSERT INTO events (device, seq, site, ts_ms, kind, body, prev, hash, stored_at) "
            f"VALUES {rows_of(9, n)} ON CONFLICT (device, seq) DO NOTHING")


INSERT_EVENT = _insert_events(1)


def _plain_rows(batch: Batch, links: _Links, res: IngestResult, at: float) -> list[tuple[object, ...]] | None:
    """The usual batch, planned from its links alone: decoded and checked, every seq within the links read,
    each event new or a resend, every new one linking to what is stored and to its batch. The new events'
    :data:`INSERT_EVENT` rows (stored at ``at``) to write in multi-row inserts (on PostgreSQL a statement for
    hundreds of events instead of a round trip each), the new events and the resends counted in ``res``;
    ``links`` learns the new ones. None for anything else (a conflict, a chain break, a seq out of range): ``res`` and
    ``links`` untouched, and the batch is stored event by event, as :meth:`EventStore._insert_event` does."""
    if not batch.checked or links is _Links.NONE:
        return None
    planned: dict[int, tuple[str, str]] = {}
    rows: list[tuple[object, ...]] = []
    duplicates = 0
    for ev in batch.events:
        if not links.covers(ev.seq):
            return None
        stored = planned.get(ev.seq) or links.get(ev.seq)
        if stored is not None:
            if stored[1] != ev.hash:
                return None
            duplicates += 1
            continue
        if ev.seq == 1:
            if ev.prev != GENESIS_HASH:
                return None
        else:
            before = planned.get(ev.seq - 1) or links.get(ev.seq - 1)
            if before is not None and before[1] != ev.prev:
                return None
        after = planned.get(ev.seq + 1) or links.get(ev.seq + 1)
        if after is not None and after[0] != ev.hash:
            return None
        planned[ev.seq] = (ev.prev, ev.hash)
        rows.append((ev.device, ev.seq, batch.site, ev.ts_ms, ev.kind, json.dumps(ev.body, ensure_ascii=False),
                     ev.prev, ev.hash, at))
    res.new += len(rows)
    res.duplicates += duplicates
    for seq, link in planned.items():
        links.add(seq, *link)
    return rows


def _safe_text(text: object, limit: int) -> str:
    """``text`` as storable UTF-8 of at most ``limit`` characters (lone surrogates and the like escaped)."""
    value = text if isinstance(text, str) else shown(text, limit)
    value = value[:limit]
    return value.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]


def raw_text(raw: object) -> str:
    """The raw form of a refused event as ASCII JSON (``\\uXXXX`` escapes), at most :data:`MAX_RAW_CHARS`.

    Never fails: a value JSON cannot write (nested past the recursion limit, a
    type built in code) falls back to its shortened ``repr``.
    """
    try:
        text = json.dumps(raw, ensure_ascii=True, allow_nan=True, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = shown(raw, MAX_RAW_CHARS)
    if len(text) > MAX_RAW_CHARS:
        text = text[: MAX_RAW_CHARS - 40] + f"...<{len(text) - MAX_RAW_CHARS + 40} more chars cut>"
    return text.encode("ascii", "backslashreplace").decode("ascii")
