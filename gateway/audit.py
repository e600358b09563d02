"""The gateway's audit trail: who asked for which command, enrolment and revocation, and hash-chain break alarms.

Every command sent, certificate issued or revoked and event file imported is
one row in ``audit_log`` (when, who asked, what, on which device, outcome),
append-only (a trigger refuses updates and deletes) and hash-chained as the
device's event log is: each row stores ``prev`` (the hash of the row before,
or the genesis hash) and ``hash``, SHA-256 over the canonical form of its id,
content and ``prev``; ``audit_head`` holds the last id and hash, so a row
removed from the end shows too. :func:`verify_audit_chain` (``spd-gateway
audit verify``) names the first row that does not hold.

A store made before the chain existed is upgraded in place the first time an
:class:`AuditLog` opens it: the columns are added and the existing rows are
chained, oldest first, in one transaction (the update trigger is dropped and
re-created inside it), and an ``audit_chained`` row records how many rows were
chained then. Those older rows are vouched for only from that moment on.

Chain-break alarms are
read from the store's ``chain_breaks`` table and grouped into consecutive
sequence ranges per device, so an operator sees "CAB01, seq 40..42" once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.store import GatewayStore
from spd_common.wire import GENESIS_HASH, canonical

log = logging.getLogger(__name__)

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'ok',
    detail TEXT NOT NULL DEFAULT '{}',
    prev TEXT,
    hash TEXT
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER NOT NULL,
    last_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""


class AuditAction(StrEnum):
    COMMAND_SENT = "command_sent"
    DEVICE_ENROLLED = "device_enrolled"
    CERT_REVOKED = "cert_revoked"
    EVENTS_IMPORTED = "events_imported"
    TOKEN_ISSUED = "token_issued"
    STAFF_IMPORTED = "staff_imported"  # who may open the cabinets changed
    CENSUS_IMPORTED = "census_imported"
    AUDIT_CHAINED = "audit_chained"  # rows written before the hash chain existed were chained on upgrade


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    device: str
    outcome: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChainBreakAlarm:
    device: str
    first_seq: int
    last_seq: int
    details: tuple[str, ...]
    detected_at: float

    def __str__(self) -> str:
        span = f"seq {self.first_seq}" if self.first_seq == self.last_seq else f"seq {self.first_seq}..{self.last_seq}"
        return f"hash chain break on {self.device}, {span}: {'; '.join(self.details)}"


@dataclass(frozen=True, slots=True)
class AuditChainBreak:
    """The first row of ``audit_log`` that does not hold, and why."""

    row: int
    detail: str

    def __str__(self) -> str:
        return f"audit log row {self.row}: {self.detail}"


def audit_row_hash(row_id: int, at: float, actor: str, action: str, device: str, outcome: str, detail: str,
                   prev: str) -> str:
    """SHA-256 over the canonical form of a row's id, content (``detail`` as stored) and predecessor's hash."""
    return hashlib.sha256(canonical([row_id, at, actor, action, device, outcome, detail, prev])).hexdigest()


_NO_UPDATE_TRIGGER = "audit_log_no_update"


class AuditLog:
    """Append-only, hash-chained rows in the gateway store."""

    def __init__(self, store: GatewayStore) -> None:
        self.store = store
        with store.transaction() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(audit_log)")}
            if have and "hash" not in have:  # a store from before the chain: add the columns first
                db.execute("ALTER TABLE audit_log ADD COLUMN prev TEXT")
                db.execute("ALTER TABLE audit_log ADD COLUMN hash TEXT")
            for statement in _statements(AUDIT_SCHEMA):
                db.execute(statement)
            chained = self._chain_unchained(db)
        if chained:
            log.warning("audit: chained %d rows written before the audit log was hash-chained", chained)
            self.record("spd-gateway", AuditAction.AUDIT_CHAINED, rows=chained)

    @staticmethod
    def _head(db: sqlite3.Connection) -> tuple[int, str]:
        row = db.execute("SELECT last_id, last_hash FROM audit_head WHERE id = 1").fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def _chain_unchained(self, db: sqlite3.Connection) -> int:
        """Chain rows after the head that have no hash (written before the chain existed); how many."""
        last_id, last_hash = self._head(db)
        rows = db.execute("SELECT id, at, actor, action, device, outcome, detail FROM audit_log "
                          "WHERE id > ? AND hash IS NULL ORDER BY id", (last_id,)).fetchall()
        if not rows:
            return 0
        trigger = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                             (_NO_UPDATE_TRIGGER,)).fetchone()[0]
        db.execute(f"DROP TRIGGER {_NO_UPDATE_TRIGGER}")  # re-created below, in the same transaction
        for row_id, at, actor, action, device, outcome, detail in rows:
            digest = audit_row_hash(row_id, at, actor, action, device, outcome, detail, last_hash)
            db.execute("UPDATE audit_log SET prev = ?, hash = ? WHERE id = ?", (last_hash, digest, row_id))
            last_id, last_hash = row_id, digest
        db.execute(trigger)
        self._set_head(db, last_id, last_hash)
        return len(rows)

    @staticmethod
    def _set_head(db: sqlite3.Connection, last_id: int, last_hash: str) -> None:
        db.execute("INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, ?, ?) "
                   "ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id, last_hash = excluded.last_hash",
                   (last_id, last_hash))

    def record(self, actor: str, action: AuditAction, *, device: str = "", outcome: str = "ok",
               **detail: Any) -> None:
        at = time.time()
        detail_text = json.dumps(detail, sort_keys=True, ensure_ascii=False)
        with self.store.transaction() as db:
            last_id, prev = self._head(db)
            top = db.execute("SELECT COALESCE(MAX(id), 0) FROM audit_log").fetchone()[0]
            row_id = max(int(top), last_id) + 1
            digest = audit_row_hash(row_id, at, actor, action.value, device, outcome, detail_text, prev)
            db.execute("INSERT INTO audit_log (id, at, actor, action, device, outcome, detail, prev, hash) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row_id, at, actor, action.value, device, outcome, detail_text, prev, digest))
            self._set_head(db, row_id, digest)
        log.info("audit: %s %s %s %s", actor, action.value, device, outcome)

    def entries(self, *, device: str | None = None, limit: int = 100) -> list[AuditEntry]:
        rows = self.store.query(
            "SELECT id, at, actor, action, device, outcome, detail FROM audit_log WHERE (? IS NULL OR device = ?) "
            "ORDER BY id DESC LIMIT ?", (device, device, limit))
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def verify(self) -> AuditChainBreak | None:
        """Recompute every row's hash and link; the first row that does not hold, or None."""
        return verify_audit_chain(self.store)


def verify_audit_chain(store: GatewayStore) -> AuditChainBreak | None:
    """Walk ``audit_log`` oldest first; the first row whose hash or link does not hold, or a missing tail."""
    rows = store.query("SELECT id, at, actor, action, device, outcome, detail, prev, hash FROM audit_log ORDER BY id")
    head = store.query("SELECT last_id, last_hash FROM audit_head WHERE id = 1")
    prev_id, prev_hash = 0, GENESIS_HASH
    for row_id, at, actor, action, device, outcome, detail, prev, digest in rows:
        if digest is None:
            return AuditChainBreak(row_id, "not chained (written without a hash)")
        if prev != prev_hash:
            what = "the genesis hash" if prev_id == 0 else f"the hash of row {prev_id}"
            return AuditChainBreak(row_id, f"prev does not match {what} (a row removed or altered before it)")
        if digest != audit_row_hash(row_id, at, actor, action, device, outcome, detail, prev):
            return AuditChainBreak(row_id, "hash does not match the row's content (altered)")
        prev_id, prev_hash = row_id, digest
    if head:
        last_id, last_hash = int(head[0][0]), str(head[0][1])
        if (prev_id, prev_hash) != (last_id, last_hash):
            return AuditChainBreak(last_id, f"the head records row {last_id} as the last, "
                                            f"the log ends at row {prev_id} (rows removed from the end)")
    elif rows:
        return AuditChainBreak(int(rows[0][0]), "rows but no head")
    return None


def _statements(script: str) -> list[str]:
    """Split the schema into statements, keeping trigger bodies whole."""
    out, cur = [], []
    for line in script.strip().splitlines():
        cur.append(line)
        text = "\n".join(cur)
        if text.rstrip().endswith(";") and (not text.lstrip().upper().startswith("CREATE TRIGGER")
                                            or text.rstrip().upper().endswith("END;")):
            out.append(text)
            cur = []
    return out


def chain_break_alarms(store: GatewayStore) -> list[ChainBreakAlarm]:
    """Chain breaks grouped into consecutive sequence ranges per device, oldest first."""
    rows = store.query("SELECT device, seq, detail, detected_at FROM chain_breaks ORDER BY device, seq")
    alarms: list[ChainBreakAlarm] = []
    for device, seq, detail, at in rows:
        last = alarms[-1] if alarms else None
        if last is not None and last.device == device and seq <= last.last_seq + 1:
            details = last.details if detail in last.details else (*last.details, detail)
            alarms[-1] = ChainBreakAlarm(device, last.first_seq, max(seq, last.last_seq), details,
                                         min(at, last.detected_at))
        else:
            alarms.append(ChainBreakAlarm(device, seq, seq, (detail,), at))
    return alarms


def device_alarm_counts(store: GatewayStore) -> dict[str, int]:
    """Per device: alarm events it reported (refused commands, forced doors ...), chain-break ranges, and the
    gateway's ``not_linked`` alarms about a cabinet's takes (gateway/linking.py)."""
    counts = {str(d): int(n) for d, n in store.query("SELECT device, COUNT(*) FROM events WHERE kind = 'alarm' "
                                                     "GROUP BY device")}
    for a in chain_break_alarms(store):
        counts[a.device] = counts.get(a.device, 0) + 1
    if store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'link_alarms'"):
        for d, n in store.query("SELECT device, COUNT(*) FROM link_alarms GROUP BY device"):
            counts[str(d)] = counts.get(str(d), 0) + int(n)
    return counts
