"""The device's durable, append-only, hash-chained event log (the outbox).

Invariant 1 lives here: :meth:`EventLog.append` returns only after the event
is committed with ``synchronous=FULL`` in WAL mode, so the nurse's green light
follows a durable write. Rows are marked acknowledged only from a gateway ack
(never from a broker PUBACK) and only acknowledged rows are ever pruned.

The sequence counter and the chain head live in the ``head`` row, updated in
the same transaction as the insert, so pruning never lets a sequence number
or a hash link be reused.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spd_common.wire import GENESIS_HASH, Event, check_id, event_hash

log = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL_S = 60.0
"""While appends keep failing, one ERROR line at the first failure and then at most one per this interval."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    device TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    acked_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    acked_at REAL
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE OF seq, ts_ms, kind, body, prev, hash ON events
BEGIN SELECT RAISE(ABORT, 'event log is append-only'); END;
"""


class EventLogError(RuntimeError):
    """The event log cannot do what was asked (wrong device, broken file)."""


class LogWriteFailed(EventLogError, OSError):
    """An append could not be committed (disk full, I/O error): nothing was recorded, nobody may be told it was."""


@dataclass(frozen=True, slots=True)
class ChainBreak:
    seq: int
    detail: str


class EventLog:
    """Append-only SQLite outbox for one device. Thread-safe; one connection."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str,
        retention_s: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_id("device", device)
        self.path = Path(path)
        self.device = device
        self.retention_s = retention_s
        self._clock = clock
        self._lock = threading.Lock()
        # failed appends since the last success: callers retry (a cabinet every second), so a full disk
        # must not write one ERROR per retry into the journal it shares the disk with
        self._failures = 0
        self._failing_since = 0.0
        self._failure_logged_at = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # schema and head row in one transaction: a reader never sees a log without its head
        self._db.executescript("BEGIN IMMEDIATE;" + SCHEMA)
        try:
            row = self._db.execute("SELECT device FROM head WHERE id = 1").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO head (id, device, last_seq, last_hash, acked_seq) VALUES (1, ?, 0, ?, 0)",
                    (device, GENESIS_HASH),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if row is not None and row[0] != device:
            raise EventLogError(f"{self.path} belongs to device {row[0]!r}, not {device!r}")

    # ------------------------------------------------------------ writing

    def append(self, kind: str, body: dict[str, Any], *, ts_ms: int | None = None) -> Event:
        """Record one event durably and return it (with its seq and hash)."""
        return self.append_many([(kind, body)], ts_ms=ts_ms)[0]

    def append_many(self, events: Sequence[tuple[str, dict[str, Any]]], *, ts_ms: int | None = None) -> list[Event]:
        """Record several events durably, in order, in one transaction: all of them or (``LogWriteFailed``) none.

        They share one timestamp and continue the chain one after the other,
        exactly as the same number of :meth:`append` calls would.
        """
        ts = int(self._clock() * 1000) if ts_ms is None else ts_ms
        rows: list[tuple[str, str, dict[str, Any]]] = []
        for kind, body in events:
            body_text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            rows.append((kind, body_text, json.loads(body_text)))
        if not rows:
            return []
        with self._lock:
            try:
                out = self._append_locked(ts, rows)
            except sqlite3.OperationalError as err:  # SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY past the timeout
                self._note_failure(err)
                what = "event" if len(rows) == 1 else f"{len(rows)} events"
                raise LogWriteFailed(f"{what} not recorded: {err}") from err
            if self._failures:
                log.warning("event log %s: writable again after %d failed appends over %.0f s",
                            self.path, self._failures, time.monotonic() - self._failing_since)
                self._failures = 0
            return out

    @property
    def failing(self) -> int:
        """Appends that failed since the last one that succeeded (0: the log is writable)."""
        return self._failures

    def _note_failure(self, err: sqlite3.OperationalError) -> None:
        now = time.monotonic()
        self._failures += 1
        if self._failures == 1:
            self._failing_since = self._failure_logged_at = now
            log.error("event log %s: append failed: %s", self.path, err)
        elif now - self._failure_logged_at >= FAILURE_LOG_INTERVAL_S:
            self._failure_logged_at = now
            log.error("event log %s: still failing (%d appends over %.0f s): %s",
                      self.path, self._failures, now - self._failing_since, err)

    def _append_locked(self, ts: int, rows: list[tuple[str, str, dict[str, Any]]]) -> list[Event]:
        db = self._db
        if db.in_transaction:  # a failed commit can leave SQLite inside the transaction
            db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        out: list[Event] = []
        try:
            seq, last_hash = db.execute("SELECT last_seq, last_hash FROM head WHERE id = 1").fetchone()
            for kind, body_text, body_copy in rows:
                seq += 1
                digest = event_hash(self.device, seq, ts, kind, body_copy, last_hash)
                db.execute(
                    "INSERT INTO events (seq, ts_ms, kind, body, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, ts, kind, body_text, last_hash, digest),
                )
                out.append(Event(self.device, seq, ts, kind, body_copy, last_hash, digest))
                last_hash = digest
            db.execute("UPDATE head SET last_seq = ?, last_hash = ? WHERE id = 1", (seq, last_hash))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return out

    def mark_acked(self, upto_seq: int) -> int:
        """Apply a cumulative gateway ack; returns how many rows became acknowledged.

        An ack beyond the last written sequence is a gateway or identity error:
        it is refused rather than trusted.
        """
        now = self._clock()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                last_seq, acked = db.execute("SELECT last_seq, acked_seq FROM head WHERE id = 1").fetchone()
                if upto_seq > last_seq:
                    raise EventLogError(f"ack for seq {upto_seq} but the log ends at {last_seq}")
                if upto_seq <= acked:
                    db.execute("COMMIT")
                    return 0
                cur = db.execute(
                    "UPDATE events SET acked_at = ? WHERE seq > ? AND seq <= ? AND acked_at IS NULL",
                    (now, acked, upto_seq),
                )
                db.execute("UPDATE head SET acked_seq = ? WHERE id = 1", (upto_seq,))
                db.execute("COMMIT")
                return cur.rowcount
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def prune(self, *, now: float | None = None) -> int:
        """Delete acknowledged rows older than the retention. Never unacknowledged ones."""
        cutoff = (self._clock() if now is None else now) - self.retention_s
        with self._lock:
            acked = self._db.execute("SELECT acked_seq FROM head WHERE id = 1").fetchone()[0]
            cur = self._db.execute(
                "DELETE FROM events WHERE seq <= ? AND acked_at IS NOT NULL AND acked_at < ?",
                (acked, cutoff),
            )
            return cur.rowcount

    # ------------------------------------------------------------ reading

    def unacked(self, *, after_seq: int = 0, limit: int = 500) -> list[Event]:
        """Unacknowledged events with ``seq > after_seq`` in order."""
        with self._lock:
            acked = self._db.execute("SELECT acked_seq FROM head WHERE id = 1").fetchone()[0]
            rows = self._db.execute(
                "SELECT seq, ts_ms, kind, body, prev, hash FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (max(after_seq, acked), limit),
            ).fetchall()
        return [self._event(r) for r in rows]

    def events(self, *, from_seq: int = 1, limit: int = 1000) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, ts_ms, kind, body, prev, hash FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
                (from_seq, limit),
            ).fetchall()
        return [self._event(r) for r in rows]

    @property
    def last_seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT last_seq FROM head WHERE id = 1").fetchone()[0])

    @property
    def acked_seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT acked_seq FROM head WHERE id = 1").fetchone()[0])

    def backlog(self) -> int:
        """Number of events the gateway has not yet acknowledged."""
        with self._lock:
            last, acked = self._db.execute("SELECT last_seq, acked_seq FROM head WHERE id = 1").fetchone()
        return int(last - acked)

    def verify_chain(self) -> list[ChainBreak]:
        """Recompute every hash still in the log and check each link."""
        breaks: list[ChainBreak] = []
        prev_seq: int | None = None
        prev_hash: str | None = None
        with self._lock:
            rows = self._db.execute("SELECT seq, ts_ms, kind, body, prev, hash FROM events ORDER BY seq").fetchall()
            head_seq, head_hash = self._db.execute("SELECT last_seq, last_hash FROM head WHERE id = 1").fetchone()
        for row in rows:
            ev = self._event(row)
            if not ev.hash_ok():
                breaks.append(ChainBreak(ev.seq, "hash does not match content"))
            if prev_seq is not None and ev.seq == prev_seq + 1 and ev.prev != prev_hash:
                breaks.append(ChainBreak(ev.seq, "prev does not match the hash of the event before"))
            if prev_seq is not None and ev.seq != prev_seq + 1 and ev.seq > 1:
                # a gap is legal only if everything before it was acknowledged and pruned
                breaks.append(ChainBreak(ev.seq, f"gap after seq {prev_seq}"))
            prev_seq, prev_hash = ev.seq, ev.hash
        if rows and (prev_seq != head_seq or prev_hash != head_hash):
            breaks.append(ChainBreak(head_seq, "last row does not match the chain head"))
        return breaks

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _event(self, row: tuple[Any, ...]) -> Event:
        seq, ts, kind, body, prev, digest = row
        return Event(self.device, seq, ts, kind, json.loads(body), prev, digest)
