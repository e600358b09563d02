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

from gateway.data.engine import Engine, Row, Transaction
from gateway.data.multirow import GROUP_ROWS, chunks, marks, rows_of
from spd_common.wire import Event

log = logging.getLogger(__name__)

RELEASES_WRITERS = "item_releases"
"""The key the transactions that insert ``item_releases`` share (see ``Engine.read_settled``)."""

_INSERT_CONSUMPTION = (
    "INSERT INTO consumption (device, seq, charge_id, admission, gtin, item_code, name, lot, serial, expiry, "
    "price_fen, operator, dept, used_at_ms, his_ref, recorded_at)"
)


def _consumption_values(device: str, seq: int, charge_id: str | None, line: dict[str, Any], his_ref: str | None,
                        now: float) -> tuple[Any, ...]:
    """One consumption record's values in :data:`_INSERT_CONSUMPTION`'s column order, from its charge line."""
    return (device, seq, charge_id, line["admission"], line["gtin"], line["item_code"], line["name"], line["lot"],
            line["serial"], line["expiry"], line["price_fen"], line["operator"], line["dept"], line["ts_ms"],
            his_ref, now)


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
            return self._accept_group(db, [(charge_id, code, his_ref)], now) == 1

    def mark_accepted_many(self, accepted: Sequence[tuple[str, str | None, str | None]]) -> int:
        """Record many acceptances (charge id, code, HIS reference) in ONE transaction; how many were new.

        A HIS lane sends its charges one after another and records what the HIS accepted a few dozen at a
        time, so the commit (an fsync) is shared. The outcome is what :meth:`mark_accepted` one by one, in
        order, would write (a charge id given twice keeps its first answer), in a few statements for the
        whole group rather than four per charge: one read of the charges, one of the credits among them,
        one update, one insert of the consumption records.
        """
        now = time.time()
        with self._engine.transaction() as db:
            return self._accept_group(db, accepted, now)

    def _accept_group(self, db: Transaction, accepted: Sequence[tuple[str, str | None, str | None]],
                      now: float) -> int:
        answers: dict[str, tuple[str | None, str | None]] = {}
        for charge_id, code, his_ref in accepted:
            answers.setdefault(charge_id, (code, his_ref))
        rows: dict[str, Row] = {}
        for part in chunks(list(answers), GROUP_ROWS):
            for row in db.execute(f"SELECT charge_id, device, seq, line, status FROM charges WHERE charge_id IN "
                                  f"({marks(len(part))})", part).fetchall():
                rows[row[0]] = row
        missing = [charge_id for charge_id in answers if charge_id not in rows]
        if missing:
            raise StoreError(f"no charge {missing[0]}")
        new = [charge_id for charge_id in answers if rows[charge_id][4] != "accepted"]
        credits: dict[str, Row] = {}
        for part in chunks(new, GROUP_ROWS):
            for row in db.execute(f"SELECT credit_id, charge_id, item_key, restocked FROM returns WHERE credit_id IN "
                                  f"({marks(len(part))})", part).fetchall():
                credits[row[0]] = row
        for part in chunks(new, GROUP_ROWS):
            db.execute(
                "UPDATE charges SET attempts = attempts + 1, status = 'accepted', ack_code = v.column2, "
                "his_ref = v.column3, finished_at = ?, last_error = '' "
                f"FROM (VALUES {rows_of(3, len(part))}) AS v WHERE charges.charge_id = v.column1",
                (now, *(x for charge_id in part for x in (charge_id, *answers[charge_id]))),
            )
        consumed = [charge_id for charge_id in new if charge_id not in credits]
        for part in chunks(consumed, GROUP_ROWS):
            values: list[Any] = []
            for charge_id in part:
                _, device, seq, line_text, _ = rows[charge_id]
                values.extend(_consumption_values(device, seq, charge_id, json.loads(line_text),
                                                  answers[charge_id][1], now))
            db.execute(f"{_INSERT_CONSUMPTION} VALUES {rows_of(16, len(part))} ON CONFLICT DO NOTHING", values)
        for charge_id in new:  # rare: a credit's acceptance marks its charge and gives the item back
            if charge_id in credits:
                _, original, item_key, restocked = credits[charge_id]
                self._apply_credit(db, charge_id, original, item_key, bool(restocked), answers[charge_id][1], now)
        return len(new)

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
            yield ChargingBatch(db, lateral=self._engine.name == "postgresql")


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

    def __init__(self, db: Transaction, *, lateral: bool = False) -> None:
        """``lateral``: the engine takes ``LATERAL`` subqueries (PostgreSQL; see :meth:`later_events`)."""
        self._db = db
        self._lateral = lateral

    def add_charge(self, charge_id: str, device: str, seq: int, admission: str, item_key: str, line: str,
                   message: str, now: float) -> bool:
        """Queue a charge; False when one is there already for its id, its event or its item (nothing written)."""
        cur = self._db.execute(
            "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (charge_id, device, seq, admission, item_key, line, message, now),
        )
        return cur.rowcount == 1

    def add_charges(self, rows: Sequence[tuple[str, str, int, str, str, str, str, float]]) -> bool:
        """Queue all these charges (:meth:`add_charge`'s arguments each) in a few multi-row inserts, or none of them:
        False, with nothing written, when one of them is there already for its id, its event or its item (the
        caller then queues them one by one and learns which)."""
        self._db.execute("SAVEPOINT add_charges")
        added = 0
        for part in chunks(rows, GROUP_ROWS):
            added += self._db.execute(
                "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, created_at) "
                f"VALUES {rows_of(8, len(part))} ON CONFLICT DO NOTHING",
                [x for row in part for x in row],
            ).rowcount
        if added == len(rows):
            self._db.execute("RELEASE SAVEPOINT add_charges")
            return True
        self._db.execute("ROLLBACK TO SAVEPOINT add_charges")
        self._db.execute("RELEASE SAVEPOINT add_charges")
        return False

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

    def later_events(self, ranges: Sequence[tuple[str, int, int]], *,
                     kinds: tuple[str, ...]) -> dict[str, list[LaterEvent]]:
        """For each (device, after seq, before id): the events of the device with a seq after ``after seq`` but
        stored before ``before id``, of ``kinds``, by seq; one read for many devices.

        Each range must be read through ``events (device, seq)`` (a few rows: the device's events in this batch),
        never through ``events (kind, id)``, which would read every return ever stored. SQLite keeps the join
        order of a ``CROSS JOIN``; PostgreSQL is given the range read as a ``LATERAL`` subquery it cannot flatten
        (``OFFSET 0``), with the kinds filtered outside it.
        """
        found: dict[str, list[LaterEvent]] = {}
        for part in chunks(ranges, GROUP_ROWS):
            values = f"(VALUES {rows_of(3, len(part))}) AS r"
            if self._lateral:
                sql = (f"SELECT r.column1, e.id, e.seq, e.kind, e.body FROM {values} CROSS JOIN LATERAL "
                       "(SELECT id, seq, kind, body FROM events WHERE device = r.column1 AND seq > r.column2 "
                       f"AND id < r.column3 OFFSET 0) AS e WHERE e.kind IN ({marks(len(kinds))}) "
                       "ORDER BY r.column1, e.seq")
            else:
                sql = (f"SELECT e.device, e.id, e.seq, e.kind, e.body FROM {values} CROSS JOIN events e "
                       "WHERE e.device = r.column1 AND e.seq > r.column2 AND e.id < r.column3 "
                       f"AND e.kind IN ({marks(len(kinds))}) ORDER BY e.device, e.seq")
            for device, *event in self._db.execute(sql, [*(x for r in part for x in r), *kinds]).fetchall():
                found.setdefault(device, []).append(LaterEvent(*event))
        return found

    def event_at(self, device: str, seq: int) -> Event:
        r = self._db.execute(
            "SELECT device, seq, ts_ms, kind, body, prev, hash FROM events WHERE device = ? AND seq = ?", (device, seq)
        ).fetchone()
        return Event(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6])

    def set_cursor(self, name: str, value: int) -> None:
        self._db.execute("INSERT INTO cursors (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))
