"""The gateway's audit trail: who asked for which command, enrolment and revocation, and hash-chain break alarms.

Every command sent, certificate issued or revoked and event file imported is
one row in ``audit_log`` (when, who asked, what, on which device, outcome),
append-only (a trigger refuses updates and deletes). Chain-break alarms are
read from the store's ``chain_breaks`` table and grouped into consecutive
sequence ranges per device, so an operator sees "CAB01, seq 40..42" once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.store import GatewayStore

log = logging.getLogger(__name__)

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'ok',
    detail TEXT NOT NULL DEFAULT '{}'
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


class AuditLog:
    """Append-only rows in the gateway store."""

    def __init__(self, store: GatewayStore) -> None:
        self.store = store
        with store.transaction() as db:
            for statement in _statements(AUDIT_SCHEMA):
                db.execute(statement)

    def record(self, actor: str, action: AuditAction, *, device: str = "", outcome: str = "ok",
               **detail: Any) -> None:
        with self.store.transaction() as db:
            db.execute("INSERT INTO audit_log (at, actor, action, device, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
                       (time.time(), actor, action.value, device, outcome,
                        json.dumps(detail, sort_keys=True, ensure_ascii=False)))
        log.info("audit: %s %s %s %s", actor, action.value, device, outcome)

    def entries(self, *, device: str | None = None, limit: int = 100) -> list[AuditEntry]:
        rows = self.store.query(
            "SELECT id, at, actor, action, device, outcome, detail FROM audit_log WHERE (? IS NULL OR device = ?) "
            "ORDER BY id DESC LIMIT ?", (device, device, limit))
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]


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
