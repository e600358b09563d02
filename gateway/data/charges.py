"""Charges, the HIS outbox, returns and credits, and the consumption list.

A charge is in the outbox (``charges``) before it is sent; an accepted charge and its consumption record
are written in one transaction. ``charges(charge_id)``, ``charges(device, seq)`` and
``consumption(device, seq)`` are unique, so every write is idempotent. A credit's outbox row lives in
``charges`` too (item key ``credit:<credit id>``); ``returns`` has one row per return with its outcome;
``item_releases`` lists the item keys given back to stock; the ``consumption_ledger`` view is the
month-end list with the charges and, as negative amounts, their credits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from gateway.data.engine import Engine, Transaction
from spd_common.wire import Event

log = logging.getLogger(__name__)

RELEASES_WRITERS = "item_releases"
"""The key the transactions that insert ``item_releases`` share (see ``Engine.read_settled``)."""


class ReturnOutcome(StrEnum):
    """What became of an item given back unused (``returns.outcome``)."""

    CREDITED = "credited"  # a credit for its charge is in the outbox
    VOIDED = "voided"  # its charge was parked (never booked): no credit (a queued one is voided), no resend
    NOT_CHARGED = "not_charged"  # no charge for it: stock restored, nothing sent to the HIS
    REFUSED = "refused"  # unreadable, not identifiable, or already returned


class StoreError(RuntimeError):
    """The gateway store refused an operation."""


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


class ChargeListing(NamedTuple):
    charge_id: str
    device: str
    seq: int
    status: str
    attempts: int
    ack_code: str | None
    last_error: str


class ChargeStore:
    """The outbox and what hangs on it: ``charges``, ``consumption``, ``returns``, ``item_releases``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def charged_item_keys(self) -> set[str]:
        """Item keys (``gtin/serial``) of charges that stand: not parked, not given back to stock."""
        rows = self._engine.query(
            "SELECT item_key FROM charges WHERE status != 'parked' AND item_key NOT LIKE 'charge:%' "
            "AND item_key NOT LIKE 'credit:%' AND item_key NOT LIKE 'returned:%'"
        )
        return {r[0] for r in rows}

    def listing(self, *, status: str | None, limit: int) -> list[ChargeListing]:
        """Charges and credits in outbox order (only those with ``status`` when given), for ``spd-gateway charges``."""
        rows = self._engine.query(
            "SELECT charge_id, device, seq, status, attempts, ack_code, last_error FROM charges "
            "WHERE (CAST(? AS TEXT) IS NULL OR status = ?) ORDER BY id LIMIT ?",
            (status, status, limit),
        )
        return [ChargeListing(*r) for r in rows]

    def consumed_item_keys(self, *, since: float) -> list[str]:
        """Item keys of the charges made since ``since`` that are not parked (the devices' consumed serials)."""
        rows = self._engine.query(
            "SELECT item_key FROM charges WHERE status != 'parked' AND item_key NOT LIKE 'charge:%' "
            "AND created_at >= ? ORDER BY item_key",
            (since,),
        )
        return [str(r[0]) for r in rows]

    def last_release_id(self) -> int:
        return int(self._engine.query("SELECT COALESCE(MAX(id), 0) FROM item_releases")[0][0])

    def released_item_keys(self, *, after_id: int) -> list[tuple[int, str]]:
        """(release id, item key) of items given back to stock after ``after_id``, in release order."""
        rows = self._engine.read_settled(RELEASES_WRITERS, "SELECT id, item_key FROM item_releases WHERE id > ? "
                                         "ORDER BY id", (after_id,))
        return [(int(r[0]), str(r[1])) for r in rows]

    def pending_charges(self, *, limit: int = 500) -> list[OutboxCharge]:
        rows = self._engine.query(
            "SELECT id, charge_id, device, seq, admission, message, attempts, next_attempt_at, line FROM charges "
            "WHERE status = 'pending' ORDER BY id LIMIT ?",
            (limit,),
        )
        return [OutboxCharge(*r) for r in rows]

    def pending_charges_after(self, *, after_id: int, limit: int) -> list[OutboxCharge]:
        """Pending charges queued after ``after_id``, in outbox order (the HIS feed's read of new rows)."""
        rows = self._engine.query(
            "SELECT id, charge_id, device, seq, admission, message, attempts, next_attempt_at, line FROM charges "
            "WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [OutboxCharge(*r) for r in rows]

    def mark_retry(self, charge_id: str, detail: str, next_attempt_at: float) -> None:
        with self._engine.transaction() as db:
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
        with self._engine.transaction() as db:
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
        with self._engine.transaction() as db:
            return self._accept(db, charge_id, code, his_ref, now)

    def mark_accepted_many(self, accepted: Sequence[tuple[str, str | None, str | None]]) -> int:
        """Record many acceptances (charge id, code, HIS reference) in ONE transaction; how many were new.

        A HIS lane sends its charges one after another and records what the HIS accepted a few dozen at a
        time, so the commit (an fsync) is shared. Each is written as :meth:`mark_accepted` writes it.
        """
        now = time.time()
        with self._engine.transaction() as db:
            return sum(self._accept(db, charge_id, code, his_ref, now) for charge_id, code, his_ref in accepted)

    def _accept(self, db: Transaction, charge_id: str, code: str | None, his_ref: str | None,
                now: float) -> bool:
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
        self, db: Transaction, credit_id: str, original: str, item_key: str, restocked: bool,
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
                self._engine.share(db, RELEASES_WRITERS)  # released_item_keys walks item_releases by id
                db.execute(
                    "INSERT INTO item_releases (item_key, credit_id, released_at) VALUES (?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (item_key, credit_id, now),
                )

    def _insert_consumption(
        self, db: Transaction, device: str, seq: int, charge_id: str | None,
        line: dict[str, Any], his_ref: str | None, now: float,
    ) -> None:
        db.execute(
            "INSERT INTO consumption (device, seq, charge_id, admission, gtin, item_code, name, lot, serial, "
            "expiry, price_fen, operator, dept, used_at_ms, his_ref, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                device, seq, charge_id, line["admission"], line["gtin"], line["item_code"], line["name"],
                line["lot"], line["serial"], line["expiry"], line["price_fen"], line["operator"], line["dept"],
                line["ts_ms"], his_ref, now,
            ),
        )

    def requeue_parked(self, charge_id: str) -> bool:
        """Send a parked charge again; refused (False) for a charge whose item was given back."""
        with self._engine.transaction() as db:
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

    @contextmanager
    def batch(self) -> Iterator[ChargingBatch]:
        """One transaction for the charging worker's pass over a batch of events."""
        with self._engine.transaction() as db:
            yield ChargingBatch(db)


class StandingCharge(NamedTuple):
    """A charge a return may be about."""

    charge_id: str
    status: str
    line: str  # the charge line as JSON


class ReturnRow(NamedTuple):
    """One row of ``returns``."""

    device: str
    seq: int
    item_key: str
    reason: str
    restocked: bool
    outcome: ReturnOutcome
    detail: str
    charge_id: str | None
    credit_id: str | None
    operator: str
    dept: str
    returned_at_ms: int
    recorded_at: float


class SettledReturn(NamedTuple):
    item_key: str
    outcome: str
    reason: str
    restocked: bool
    operator: str
    dept: str


class LaterEvent(NamedTuple):
    id: int
    seq: int
    kind: str
    body: str  # JSON


class ChargingBatch:
    """The charging worker's reads and writes inside one transaction (see :meth:`ChargeStore.batch`)."""

    def __init__(self, db: Transaction) -> None:
        self._db = db

    def add_charge(self, charge_id: str, device: str, seq: int, admission: str, item_key: str, line: str,
                   message: str, now: float) -> bool:
        """Queue a charge; False when one is there already for its id, its event or its item (nothing written)."""
        cur = self._db.execute(
            "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (charge_id, device, seq, admission, item_key, line, message, now),
        )
        return cur.rowcount == 1

    def add_credit(self, credit_id: str, device: str, seq: int, admission: str, line: str, message: str,
                   now: float) -> None:
        """Queue a credit in the outbox (item key ``credit:<credit id>``)."""
        self._db.execute(
            "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (credit_id, device, seq, admission, f"credit:{credit_id}", line, message, now),
        )

    def has_charge(self, device: str, seq: int) -> bool:
        return self._db.execute("SELECT 1 FROM charges WHERE device = ? AND seq = ?", (device, seq)).fetchone() \
            is not None

    def reject(self, device: str, seq: int, reason: str, detail: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO charge_rejects (device, seq, reason, detail, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (device, seq, reason, detail, now),
        )

    def standing_charge(self, item_key: str, device: str, seq: int, event_id: int, ts_ms: int) -> StandingCharge | None:
        """The latest charge of this item that a return (``device``, ``seq``, store id ``event_id``, device time
        ``ts_ms``) can be about.

        Of another device: one from an event stored before the return and used no later than the return
        happened (a cabinet that comes back online late delivers a restock made before the use: not a return
        of it). Of the return's own device: one it recorded before the return, whenever it was stored.
        """
        row = self._db.execute(
            "SELECT c.charge_id, c.status, c.line FROM charges c JOIN events e ON e.device = c.device "
            "AND e.seq = c.seq WHERE c.item_key = ? AND CASE WHEN c.device = ? THEN c.seq < ? "
            "ELSE e.id < ? AND e.ts_ms <= ? END ORDER BY c.id DESC LIMIT 1",
            (item_key, device, seq, event_id, ts_ms),
        ).fetchone()
        return None if row is None else StandingCharge(*row)

    def has_return(self, device: str, seq: int) -> bool:
        return self._db.execute("SELECT 1 FROM returns WHERE device = ? AND seq = ?", (device, seq)).fetchone() \
            is not None

    def returned_by(self, charge_id: str) -> tuple[str, int] | None:
        """(device, seq) of the return that already credited or voided this charge."""
        row = self._db.execute(
            "SELECT device, seq FROM returns WHERE charge_id = ? AND outcome IN (?, ?)",
            (charge_id, ReturnOutcome.CREDITED.value, ReturnOutcome.VOIDED.value),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def add_return(self, r: ReturnRow) -> None:
        self._db.execute(
            "INSERT INTO returns (device, seq, item_key, reason, restocked, outcome, detail, charge_id, credit_id, "
            "operator, dept, returned_at_ms, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.device, r.seq, r.item_key, r.reason, 1 if r.restocked else 0, r.outcome.value, r.detail, r.charge_id,
             r.credit_id, r.operator, r.dept, r.returned_at_ms, r.recorded_at),
        )

    def settled_return(self, device: str, seq: int) -> SettledReturn | None:
        row = self._db.execute("SELECT item_key, outcome, reason, restocked, operator, dept FROM returns "
                               "WHERE device = ? AND seq = ?", (device, seq)).fetchone()
        return None if row is None else SettledReturn(row[0], row[1], row[2], bool(row[3]), row[4], row[5])

    def delete_return(self, device: str, seq: int) -> None:
        self._db.execute("DELETE FROM returns WHERE device = ? AND seq = ?", (device, seq))

    def later_events(self, device: str, *, after_seq: int, before_id: int, kinds: tuple[str, ...]) -> list[LaterEvent]:
        """Events of ``device`` with a seq after ``after_seq`` but stored before ``before_id``, by seq."""
        marks = ", ".join("?" * len(kinds))
        rows = self._db.execute(
            f"SELECT id, seq, kind, body FROM events WHERE device = ? AND seq > ? AND id < ? AND kind IN ({marks}) "
            "ORDER BY seq",
            (device, after_seq, before_id, *kinds),
        ).fetchall()
        return [LaterEvent(*r) for r in rows]

    def event_at(self, device: str, seq: int) -> Event:
        r = self._db.execute(
            "SELECT device, seq, ts_ms, kind, body, prev, hash FROM events WHERE device = ? AND seq = ?", (device, seq)
        ).fetchone()
        return Event(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6])

    def set_cursor(self, name: str, value: int) -> None:
        self._db.execute("INSERT INTO cursors (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))
