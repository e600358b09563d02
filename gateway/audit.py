"""The gateway's audit trail: who asked for which command, enrolment and revocation, and hash-chain break alarms.

Every command sent, certificate issued or revoked and event file imported is
one row in ``audit_log`` (when, who asked, what, on which device, outcome),
append-only (a trigger refuses updates and deletes) and hash-chained as the
device's event log is: each row stores ``prev`` (the hash of the row before,
or the genesis hash) and ``hash``, SHA-256 over the canonical form of its id,
content and ``prev``; ``audit_head`` holds the last id and hash, so a row
removed from the end shows too. :func:`verify_audit_chain` (``spd-gateway
audit verify``) names the first row that does not hold.

A store made before the chain existed is upgraded in place: opening the store
adds the columns (migration ``0004_audit_chain``), and the first time an
:class:`AuditLog` opens it the existing rows are chained, oldest first, in one
transaction (the update trigger is dropped and
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
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.data.audit import AuditRow
from gateway.store import GatewayStore
from spd_common.wire import GENESIS_HASH, canonical

log = logging.getLogger(__name__)

class AuditAction(StrEnum):
    COMMAND_SENT = "command_sent"
    DEVICE_ENROLLED = "device_enrolled"
    CERT_REVOKED = "cert_revoked"
    EVENTS_IMPORTED = "events_imported"
    TOKEN_ISSUED = "token_issued"
    STAFF_IMPORTED = "staff_imported"  # who may open the cabinets changed
    CENSUS_IMPORTED = "census_imported"
    CENSUS_MARKED = "census_marked"  # the site said the ADT-fed census is (not) complete
    CATALOG_IMPORTED = "catalog_imported"  # prices and charge codes changed
    RECALLS_IMPORTED = "recalls_imported"
    LOT_EXPIRY_IMPORTED = "lot_expiry_imported"
    HIS_LINES_IMPORTED = "his_lines_imported"  # the HIS's charge lines for reconciliation
    WEB_SIGN_IN = "web_sign_in"  # the supervisor's screen: outcome ok or failed (with why)
    WEB_SIGN_OUT = "web_sign_out"
    CHARGE_RESENT = "charge_resent"  # a parked charge put back in the HIS outbox (screen or API)
    ALARM_ACKNOWLEDGED = "alarm_acknowledged"
    UNLOCK_REFUSED = "unlock_refused"  # a remote unlock asked for on the screen and not sent (role, no fleet link)
    BOOKS_EXPORTED = "books_exported"  # a report of the books downloaded from the screen (which, month, format)
    WEB_ACCOUNT_CHANGED = "web_account_changed"  # spd-gateway user add/passwd/disable
    API_TOKEN_CHANGED = "api_token_changed"  # spd-gateway web-token create/revoke
    STOCK_RECEIPTS_IMPORTED = "stock_receipts_imported"  # delivery and restock notes into the stock ledger
    STOCK_COUNT_IMPORTED = "stock_count_imported"  # a stock-take: the ledger adjusted to what was counted
    PAR_LEVELS_IMPORTED = "par_levels_imported"
    ROUTES_IMPORTED = "routes_imported"
    REPLENISH_REQUESTED = "replenish_requested"  # an urgent request from a ward
    REPLENISH_DELIVERED = "replenish_delivered"
    TERMS_IMPORTED = "terms_imported"  # suppliers, purchase contracts, registrations, VBP categories and items
    AUDIT_CHAINED = "audit_chained"  # rows written before the hash chain existed were chained on upgrade
    INCIDENT_OPENED = "incident_opened"  # a critical alarm became an incident (gateway/notify.py)
    INCIDENT_RESOLVED = "incident_resolved"  # its condition cleared, or a person closed it
    NOTICE_SENT = "notice_sent"  # an incident notice delivered after failed attempts
    NOTICE_FAILED = "notice_failed"  # an incident notice not delivered: first failure, or given up


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


def _row_hash(row: AuditRow, prev: str) -> str:
    return audit_row_hash(row.id, row.at, row.actor, row.action, row.device, row.outcome, row.detail, prev)


class AuditLog:
    """Append-only, hash-chained rows in the gateway store."""

    def __init__(self, store: GatewayStore) -> None:
        self.store = store
        chained = store.audit.chain_unchained(_row_hash)
        if chained:
            log.warning("audit: chained %d rows written before the audit log was hash-chained", chained)
            self.record("spd-gateway", AuditAction.AUDIT_CHAINED, rows=chained)

    def record(self, actor: str, action: AuditAction, *, device: str = "", outcome: str = "ok",
               **detail: Any) -> None:
        detail_text = json.dumps(detail, sort_keys=True, ensure_ascii=False)
        self.store.audit.append(time.time(), actor, action.value, device, outcome, detail_text, _row_hash)
        log.info("audit: %s %s %s %s", actor, action.value, device, outcome)

    def entries(self, *, device: str | None = None, limit: int = 100) -> list[AuditEntry]:
        return [AuditEntry(r.id, r.at, r.actor, r.action, r.device, r.outcome, json.loads(r.detail))
                for r in self.store.audit.latest(device=device, limit=limit)]

    def verify(self) -> AuditChainBreak | None:
        """Recompute every row's hash and link; the first row that does not hold, or None."""
        return verify_audit_chain(self.store)


def verify_audit_chain(store: GatewayStore) -> AuditChainBreak | None:
    """Walk ``audit_log`` oldest first; the first row whose hash or link does not hold, or a missing tail."""
    rows = store.audit.all()
    head = store.audit.head()
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
        last_id, last_hash = head
        if (prev_id, prev_hash) != (last_id, last_hash):
            return AuditChainBreak(last_id, f"the head records row {last_id} as the last, "
                                            f"the log ends at row {prev_id} (rows removed from the end)")
    elif rows:
        return AuditChainBreak(rows[0].id, "rows but no head")
    return None


def chain_break_alarms(store: GatewayStore) -> list[ChainBreakAlarm]:
    """Chain breaks grouped into consecutive sequence ranges per device, oldest first."""
    rows = store.events.chain_breaks()
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
    counts = store.devices.alarm_counts()
    for a in chain_break_alarms(store):
        counts[a.device] = counts.get(a.device, 0) + 1
    for d, n in store.links.alarm_counts().items():
        counts[d] = counts.get(d, 0) + n
    return counts
