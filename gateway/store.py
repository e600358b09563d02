"""The gateway's durable store (SQLite): events, quarantine, HIS outbox, consumption list.

Every write that someone else is told about is committed first: an event
batch is committed before the device is acked; a charge is in the outbox
before it is sent; an accepted charge and its consumption record are written
in one transaction. Identities are unique keys, so every write is idempotent:
``events(device, seq)``, ``charges(charge_id)`` and ``charges(device, seq)``,
``consumption(device, seq)``.

One :class:`GatewayStore` owns one connection guarded by a lock; the gateway's
threads share it (SQLite serialises writers anyway).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from spd_common.wire import (
    GENESIS_HASH,
    Batch,
    DeviceState,
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    stored_at REAL NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);
CREATE TABLE IF NOT EXISTS quarantine (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw TEXT NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS bad_payloads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    contiguous_seq INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    status TEXT NOT NULL DEFAULT 'unknown',
    backlog INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS chain_breaks (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    detail TEXT NOT NULL,
    detected_at REAL NOT NULL,
    PRIMARY KEY (device, seq, detail)
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog (
    gtin TEXT PRIMARY KEY,
    item_code TEXT NOT NULL,
    charge_code TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL DEFAULT '',
    manufacturer TEXT NOT NULL DEFAULT '',
    price_fen INTEGER NOT NULL CHECK (price_fen >= 0),
    chargeable INTEGER NOT NULL DEFAULT 1,
    high_value INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    admission TEXT NOT NULL,
    item_key TEXT NOT NULL,
    line TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    ack_code TEXT,
    his_ref TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS charges_status ON charges (status, id);
CREATE UNIQUE INDEX IF NOT EXISTS charges_item_once ON charges (item_key) WHERE status != 'parked';
CREATE INDEX IF NOT EXISTS charges_item ON charges (item_key);
CREATE TABLE IF NOT EXISTS charge_rejects (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS consumption (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    charge_id TEXT,
    admission TEXT NOT NULL,
    gtin TEXT NOT NULL,
    item_code TEXT NOT NULL,
    name TEXT NOT NULL,
    lot TEXT NOT NULL,
    serial TEXT NOT NULL,
    expiry TEXT NOT NULL,
    price_fen INTEGER NOT NULL,
    operator TEXT NOT NULL,
    dept TEXT NOT NULL,
    used_at_ms INTEGER NOT NULL,
    his_ref TEXT,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
"""


RETURNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS returns (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_key TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    restocked INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    charge_id TEXT,
    credit_id TEXT UNIQUE,
    operator TEXT NOT NULL,
    dept TEXT NOT NULL,
    returned_at_ms INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS returns_charge_once ON returns (charge_id) WHERE outcome IN ('credited', 'voided');
CREATE TABLE IF NOT EXISTS item_releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_key TEXT NOT NULL,
    credit_id TEXT NOT NULL UNIQUE,
    released_at REAL NOT NULL
);
CREATE VIEW IF NOT EXISTS consumption_ledger AS
    SELECT device, seq, 'charge' AS entry, charge_id, admission, gtin, item_code, name, lot, serial,
           price_fen AS amount_fen, operator, dept, used_at_ms AS at_ms, his_ref
    FROM consumption
    UNION ALL
    SELECT r.device, r.seq, 'credit', c.credit_id, c.admission, c.gtin, c.item_code, c.name, c.lot, c.serial,
           -c.price_fen, r.operator, r.dept, r.returned_at_ms, c.credit_his_ref
    FROM consumption c JOIN returns r ON r.credit_id = c.credit_id;
"""
"""Returns of unused items and their credits (see docs/bridge.md). ``returns`` has one row per
``return_unused`` event with its outcome; a credit's outbox row lives in ``charges`` (item key
``credit:<credit id>``); an accepted credit marks the original ``consumption`` row (columns added by
:data:`CONSUMPTION_CREDIT_COLUMNS`); ``item_releases`` lists the item keys given back to stock, which the
charging worker drops from its consumed set; ``consumption_ledger`` is the month-end list with the
charges and, as negative amounts, their credits."""

CONSUMPTION_CREDIT_COLUMNS = (("credit_id", "TEXT"), ("credited_at", "REAL"), ("credit_his_ref", "TEXT"))


class ReturnOutcome(StrEnum):
    """What became of an item given back unused (``returns.outcome``)."""

    CREDITED = "credited"  # a credit for its charge is in the outbox
    VOIDED = "voided"  # its charge was parked (never booked): no credit (a queued one is voided), no resend
    NOT_CHARGED = "not_charged"  # no charge for it: stock restored, nothing sent to the HIS
    REFUSED = "refused"  # unreadable, not identifiable, or already returned


class StoreError(RuntimeError):
    """The gateway store refused an operation."""


EVENT_FAULTS: tuple[type[BaseException], ...] = (
    ValueError,  # WireError, UnicodeEncodeError, an integer past the digit limit
    TypeError,
    OverflowError,  # an integer past SQLite's 64 bits
    RecursionError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,  # a value of a type SQLite cannot bind
)
"""What storing one event can raise because of that event. Anything else (``OperationalError``: disk
full, I/O error, database locked past its timeout; a corrupt database) is a failure of the store and
fails the whole batch, so no ack goes out and the device resends. Taking a store failure for an event
fault is harmless: the quarantine row written instead fails the same way and the batch still fails."""

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
class OutboxCharge:
    """One charge waiting in the HIS outbox."""

    id: int
    charge_id: str
    device: str
    seq: int
    admission: str
    message: str  # the rendered HL7 message (MSH-10 = charge_id)
    attempts: int
    next_attempt_at: float
    line: str  # the charge line as JSON, for adapters that send it instead of HL7


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    event: Event


class GatewayStore:
    """SQLite store shared by the gateway's threads."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._add_credit_columns()
        self._db.executescript(RETURNS_SCHEMA)

    def _add_credit_columns(self) -> None:
        """Databases made before credits existed gain the consumption credit columns (idempotent)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(consumption)")}
        for name, sql_type in CONSUMPTION_CREDIT_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE consumption ADD COLUMN {name} {sql_type}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ ingest

    def ingest(self, batch: Batch, *, now: float | None = None) -> IngestResult:
        """Store a batch once per ``(device, seq)``, verify links, and advance the device's contiguous seq.

        Each event is stored on its own (a savepoint): one whose fields break the
        contract or cannot be stored is kept in quarantine with its reason, and the
        events around it are stored. Only a failure of the store itself raises, and
        then nothing of the batch is committed.
        """
        at = time.time() if now is None else now
        res = IngestResult()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO devices (device, site, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen",
                (batch.device, batch.site, at),
            )
            for ev in batch.events:
                self._store_event(db, batch.site, ev, at, res, checked=batch.checked)
            for bad in batch.invalid:
                self._quarantine(db, batch.device, bad, at, res)
            res.contiguous = self._advance(db, batch.device)
        return res

    def _store_event(
        self, db: sqlite3.Connection, site: str, ev: Event, at: float, res: IngestResult, *, checked: bool
    ) -> None:
        part = IngestResult()
        db.execute("SAVEPOINT event")
        try:
            if not checked:  # built in code (an imported export), not by decode_batch
                check_event(ev)
            self._insert_event(db, site, ev, at, part)
        except EVENT_FAULTS as err:
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

    def _insert_event(self, db: sqlite3.Connection, site: str, ev: Event, at: float, res: IngestResult) -> None:
        cur = db.execute(
            "INSERT OR IGNORE INTO events (device, seq, site, ts_ms, kind, body, prev, hash, stored_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.device, ev.seq, site, ev.ts_ms, ev.kind, json.dumps(ev.body, ensure_ascii=False), ev.prev, ev.hash, at),
        )
        if cur.rowcount == 0:
            row = db.execute("SELECT hash FROM events WHERE device = ? AND seq = ?", (ev.device, ev.seq)).fetchone()
            if row is not None and row[0] != ev.hash:
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
            before = db.execute("SELECT hash FROM events WHERE device = ? AND seq = ?", (ev.device, ev.seq - 1))
            row = before.fetchone()
            if row is not None and row[0] != ev.prev:
                self._chain_break(db, ev.device, ev.seq, "prev does not match the stored predecessor", at, res)
        after = db.execute("SELECT prev FROM events WHERE device = ? AND seq = ?", (ev.device, ev.seq + 1)).fetchone()
        if after is not None and after[0] != ev.hash:
            self._chain_break(db, ev.device, ev.seq + 1, "prev does not match the stored predecessor", at, res)

    def _quarantine(self, db: sqlite3.Connection, device: str, bad: InvalidEvent, at: float, res: IngestResult) -> None:
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
            "INSERT OR IGNORE INTO quarantine (device, seq, reason, detail, raw, stored_at) VALUES (?, ?, ?, ?, ?, ?)",
            (device, seq, reason, detail, raw, at),
        )
        res.quarantined += cur.rowcount
        res.rejected.append(Rejection(seq, reason))

    def _chain_break(
        self, db: sqlite3.Connection, device: str, seq: int, detail: str, at: float, res: IngestResult
    ) -> None:
        log.error("device %s: hash chain break at seq %d: %s", device, seq, detail)
        db.execute(
            "INSERT OR IGNORE INTO chain_breaks (device, seq, detail, detected_at) VALUES (?, ?, ?, ?)",
            (device, seq, detail, at),
        )
        res.chain_breaks.append((seq, detail))

    def _advance(self, db: sqlite3.Connection, device: str) -> int:
        (contiguous,) = db.execute("SELECT contiguous_seq FROM devices WHERE device = ?", (device,)).fetchone()
        start = contiguous
        while True:
            nxt = contiguous + 1
            if db.execute("SELECT 1 FROM events WHERE device = ? AND seq = ?", (device, nxt)).fetchone() is None \
                    and db.execute("SELECT 1 FROM quarantine WHERE device = ? AND seq = ?", (device, nxt)).fetchone() \
                    is None:
                break
            contiguous = nxt
        if contiguous != start:
            db.execute("UPDATE devices SET contiguous_seq = ? WHERE device = ?", (contiguous, device))
        return int(contiguous)

    def record_bad_payload(self, topic_text: str, reason: str, detail: str, payload: bytes) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO bad_payloads (topic, reason, detail, payload, received_at) VALUES (?, ?, ?, ?, ?)",
                (_safe_text(topic_text, 300), _safe_text(reason, MAX_REASON_CHARS),
                 _safe_text(detail, MAX_DETAIL_CHARS), bytes(payload[:MAX_RAW_CHARS]), time.time()),
            )

    def update_device_state(self, site: str, state: DeviceState) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO devices (device, site, last_seen, status, backlog, version) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen, status = excluded.status, "
                "backlog = excluded.backlog, version = excluded.version",
                (state.device, site, time.time(), state.status.value, state.backlog, state.version),
            )

    def contiguous_seq(self, device: str) -> int:
        rows = self.query("SELECT contiguous_seq FROM devices WHERE device = ?", (device,))
        return int(rows[0][0]) if rows else 0

    # ------------------------------------------------------------ leases

    def hold_lease(self, name: str, holder: str, ttl_s: float, *, now: float | None = None) -> bool:
        """Take or renew the lease ``name`` for ``holder``; False while another holder's lease is live.

        Several gateway instances share one store; only the holder of the
        ``charging`` lease runs the charging worker and the HIS sender, so a
        charge is never sent by two instances at once. A killed holder's lease
        runs out after ``ttl_s`` and another instance takes over.
        """
        t = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > t:
                return False
            db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                (name, holder, t + ttl_s),
            )
        return True

    def release_lease(self, name: str, holder: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # ------------------------------------------------------------ catalog

    def load_catalog_rows(self) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT gtin, item_code, charge_code, name, spec, manufacturer, price_fen, chargeable, high_value "
            "FROM catalog ORDER BY gtin"
        )

    def upsert_catalog(self, rows: Sequence[tuple[Any, ...]]) -> int:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO catalog (gtin, item_code, charge_code, name, spec, manufacturer, price_fen, chargeable, "
                "high_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gtin) DO UPDATE SET "
                "item_code = excluded.item_code, charge_code = excluded.charge_code, name = excluded.name, "
                "spec = excluded.spec, manufacturer = excluded.manufacturer, price_fen = excluded.price_fen, "
                "chargeable = excluded.chargeable, high_value = excluded.high_value",
                rows,
            )
        return len(rows)

    # ------------------------------------------------------------ charging input

    def cursor(self, name: str) -> int:
        rows = self.query("SELECT value FROM cursors WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def consumption_events(self, *, after_id: int, limit: int) -> list[StoredEvent]:
        rows = self.query(
            "SELECT id, device, seq, ts_ms, kind, body, prev, hash FROM events "
            "WHERE id > ? AND kind = ? ORDER BY id LIMIT ?",
            (after_id, EventKind.CONSUME.value, limit),
        )
        return [StoredEvent(r[0], Event(r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])) for r in rows]

    def last_event_id(self) -> int:
        return int(self.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    def charging_events(self, *, after_id: int, limit: int) -> list[StoredEvent]:
        """Consumptions, returns of unused items and items put back in a cabinet after ``after_id``, in store order."""
        rows = self.query(
            "SELECT id, device, seq, ts_ms, kind, body, prev, hash FROM events "
            "WHERE id > ? AND kind IN (?, ?, ?, ?) ORDER BY id LIMIT ?",
            (after_id, EventKind.CONSUME.value, EventKind.RETURN_UNUSED.value, EventKind.RETURNED.value,
             EventKind.RESTOCKED.value, limit),
        )
        return [StoredEvent(r[0], Event(r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])) for r in rows]

    def charged_item_keys(self) -> set[str]:
        """Item keys (``gtin/serial``) of charges that stand: not parked, not given back to stock."""
        rows = self.query(
            "SELECT item_key FROM charges WHERE status != 'parked' AND item_key NOT LIKE 'charge:%' "
            "AND item_key NOT LIKE 'credit:%' AND item_key NOT LIKE 'returned:%'"
        )
        return {r[0] for r in rows}

    def last_release_id(self) -> int:
        return int(self.query("SELECT COALESCE(MAX(id), 0) FROM item_releases")[0][0])

    def released_item_keys(self, *, after_id: int) -> list[tuple[int, str]]:
        """(release id, item key) of items given back to stock after ``after_id``, in release order."""
        rows = self.query("SELECT id, item_key FROM item_releases WHERE id > ? ORDER BY id", (after_id,))
        return [(int(r[0]), str(r[1])) for r in rows]

    # ------------------------------------------------------------ outbox

    def pending_charges(self, *, limit: int = 500) -> list[OutboxCharge]:
        rows = self.query(
            "SELECT id, charge_id, device, seq, admission, message, attempts, next_attempt_at, line FROM charges "
            "WHERE status = 'pending' ORDER BY id LIMIT ?",
            (limit,),
        )
        return [OutboxCharge(*r) for r in rows]

    def mark_retry(self, charge_id: str, detail: str, next_attempt_at: float) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE charges SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                "WHERE charge_id = ? AND status = 'pending'",
                (next_attempt_at, detail[:1000], charge_id),
            )

    def mark_parked(self, charge_id: str, code: str | None, detail: str) -> list[str]:
        """Park a pending charge with the HIS's (or the adapter's) reason; the ids of the credits voided with it.

        A credit already queued behind this charge (its item was given back while the charge was
        pending) would reverse a charge the HIS never booked, so it is voided in the same transaction:
        the credit's row gets status ``voided``, its return the outcome ``voided``, as a return of an
        already parked charge would have. A voided credit is never sent, and the charge, whose item was
        given back, can no longer be re-sent.
        """
        now = time.time()
        with self.transaction() as db:
            parked = db.execute(
                "UPDATE charges SET attempts = attempts + 1, status = 'parked', ack_code = ?, last_error = ?, "
                "finished_at = ? WHERE charge_id = ? AND status = 'pending'",
                (code, detail[:1000], now, charge_id),
            ).rowcount
            if not parked:
                return []
            waiting = db.execute(
                "SELECT r.device, r.seq, r.credit_id FROM returns r JOIN charges c ON c.charge_id = r.credit_id "
                "WHERE r.charge_id = ? AND r.outcome = ? AND c.status = 'pending'",
                (charge_id, ReturnOutcome.CREDITED.value),
            ).fetchall()
            for device, seq, credit_id in waiting:
                why = f"charge {charge_id} was parked, never booked: credit {credit_id} voided"
                db.execute(
                    "UPDATE charges SET status = 'voided', last_error = ?, finished_at = ? "
                    "WHERE charge_id = ? AND status = 'pending'",
                    (why, now, credit_id),
                )
                db.execute("UPDATE returns SET outcome = ?, detail = ? WHERE device = ? AND seq = ?",
                           (ReturnOutcome.VOIDED.value, why, device, seq))
                log.warning("%s", why)
        return [str(w[2]) for w in waiting]

    def mark_accepted(self, charge_id: str, code: str | None, his_ref: str | None) -> bool:
        """Record the HIS's acceptance and write the consumption record, in one transaction."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT device, seq, line, status FROM charges WHERE charge_id = ?", (charge_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"no charge {charge_id}")
            device, seq, line_text, status = row
            if status == "accepted":
                return False
            db.execute(
                "UPDATE charges SET attempts = attempts + 1, status = 'accepted', ack_code = ?, his_ref = ?, "
                "finished_at = ?, last_error = '' WHERE charge_id = ?",
                (code, his_ref, now, charge_id),
            )
            credited = db.execute(
                "SELECT charge_id, item_key, restocked FROM returns WHERE credit_id = ?", (charge_id,)
            ).fetchone()
            if credited is not None:
                self._apply_credit(db, charge_id, credited[0], credited[1], bool(credited[2]), his_ref, now)
                return True
            line = json.loads(line_text)
            self._insert_consumption(db, device, seq, charge_id, line, his_ref, now)
        return True

    def _apply_credit(
        self, db: sqlite3.Connection, credit_id: str, original: str, item_key: str, restocked: bool,
        his_ref: str | None, now: float,
    ) -> None:
        """The HIS accepted a credit: mark the original consumption, and give a restocked item back to stock."""
        db.execute(
            "UPDATE consumption SET credit_id = ?, credited_at = ?, credit_his_ref = ? WHERE charge_id = ?",
            (credit_id, now, his_ref, original),
        )
        if restocked:
            released = db.execute(
                "UPDATE charges SET item_key = 'returned:' || ? || ':' || item_key "
                "WHERE charge_id = ? AND item_key = ?",
                (credit_id, original, item_key),
            ).rowcount
            if released:
                db.execute(
                    "INSERT OR IGNORE INTO item_releases (item_key, credit_id, released_at) VALUES (?, ?, ?)",
                    (item_key, credit_id, now),
                )

    def _insert_consumption(
        self, db: sqlite3.Connection, device: str, seq: int, charge_id: str | None,
        line: dict[str, Any], his_ref: str | None, now: float,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO consumption (device, seq, charge_id, admission, gtin, item_code, name, lot, serial, "
            "expiry, price_fen, operator, dept, used_at_ms, his_ref, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                device, seq, charge_id, line["admission"], line["gtin"], line["item_code"], line["name"],
                line["lot"], line["serial"], line["expiry"], line["price_fen"], line["operator"], line["dept"],
                line["ts_ms"], his_ref, now,
            ),
        )

    def requeue_parked(self, charge_id: str) -> bool:
        """Send a parked charge again; refused (False) for a charge whose item was given back."""
        with self.transaction() as db:
            returned = db.execute(
                "SELECT 1 FROM returns WHERE charge_id = ? AND outcome IN (?, ?)",
                (charge_id, ReturnOutcome.CREDITED.value, ReturnOutcome.VOIDED.value),
            ).fetchone()
            if returned is not None:
                log.warning("charge %s not resent: its item was given back unused", charge_id)
                return False
            cur = db.execute(
                "UPDATE charges SET status = 'pending', next_attempt_at = 0, finished_at = NULL "
                "WHERE charge_id = ? AND status = 'parked'",
                (charge_id,),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------ reporting

    def counts(self) -> dict[str, int]:
        q = {
            "events": "SELECT COUNT(*) FROM events",
            "consume_events": "SELECT COUNT(*) FROM events WHERE kind = 'consume'",
            "quarantined": "SELECT COUNT(*) FROM quarantine",
            "bad_payloads": "SELECT COUNT(*) FROM bad_payloads",
            "chain_breaks": "SELECT COUNT(*) FROM chain_breaks",
            "charges": "SELECT COUNT(*) FROM charges",
            "charges_pending": "SELECT COUNT(*) FROM charges WHERE status = 'pending'",
            "charges_accepted": "SELECT COUNT(*) FROM charges WHERE status = 'accepted'",
            "charges_parked": "SELECT COUNT(*) FROM charges WHERE status = 'parked'",
            "credits_voided": "SELECT COUNT(*) FROM charges WHERE status = 'voided'",
            "charge_rejects": "SELECT COUNT(*) FROM charge_rejects",
            "consumption": "SELECT COUNT(*) FROM consumption",
            "returns": "SELECT COUNT(*) FROM returns",
            "credits_accepted": "SELECT COUNT(*) FROM consumption WHERE credit_id IS NOT NULL",
        }
        return {k: int(self.query(sql)[0][0]) for k, sql in q.items()}

    def integrity_check(self) -> str:
        return str(self.query("PRAGMA integrity_check")[0][0])


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
