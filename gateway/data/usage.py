"""What was used in a period, as the books read it: HIS-accepted charges by time of use, accepted credits by
time of return, aggregated in SQL; the high-value lines one by one, streamed.

A ``consumption`` row exists only for a charge the HIS accepted (it is written with the acceptance), and its
``credit_id`` is set only when the HIS accepted the credit; so nothing pending, refused (parked) or voided is
ever read here. Periods are ``[start_ms, end_ms)`` in device time (``used_at_ms``, ``returned_at_ms``); the
caller turns the hospital's local calendar into those bounds. Indexes: ``consumption_used_at`` (covering the
per-item aggregate) and ``returns_returned_at`` (migration 0006).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import NamedTuple

from gateway.data.engine import Engine

_SLICE_MS = 3_600_000  # the detail is read an hour of use at a time


class UsedItems(NamedTuple):
    """HIS-accepted charges of one item at one charged price in a period."""

    gtin: str
    price_fen: int  # the charged unit price
    units: int


class CreditedUse(NamedTuple):
    """One HIS-accepted credit whose return falls in a period, with the charge it reverses."""

    gtin: str
    price_fen: int  # the charged unit price of the original charge
    used_at_ms: int  # when the original was used (its contract price is that day's)
    returned_at_ms: int


class UsageLine(NamedTuple):
    """One line of the consumption list: a charge (positive) or its credit (negative), for the detail report."""

    entry: str  # "charge" or "credit"
    gtin: str
    name: str
    lot: str
    serial: str
    admission: str
    dept: str
    operator: str
    at_ms: int  # time of use (charge) or of the return (credit)
    used_at_ms: int  # time of use of the charge (the credit's original)
    price_fen: int  # the charged unit price, positive for both entries
    charge_id: str  # the charge's id, or the credit's
    his_ref: str  # the HIS's reference for the charge, or for the credit


class PendingCharge(NamedTuple):
    """A charge not (yet) accepted by the HIS: in the outbox or refused."""

    charge_id: str
    status: str
    gtin: str
    ts_ms: int
    price_fen: int


class UsageStore:
    """Reads over ``consumption``, ``returns`` and ``charges`` for settlement and the VBP view."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def used_items(self, start_ms: int, end_ms: int) -> list[UsedItems]:
        """Accepted charges used in ``[start_ms, end_ms)`` per item and charged price (an index-only scan)."""
        rows = self._engine.query(
            "SELECT gtin, price_fen, COUNT(*) FROM consumption WHERE used_at_ms >= ? AND used_at_ms < ? "
            "GROUP BY gtin, price_fen ORDER BY gtin, price_fen", (start_ms, end_ms))
        return [UsedItems(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def used_counts(self, start_ms: int, end_ms: int) -> dict[str, int]:
        """Accepted charges used in ``[start_ms, end_ms)`` per item."""
        rows = self._engine.query(
            "SELECT gtin, COUNT(*) FROM consumption WHERE used_at_ms >= ? AND used_at_ms < ? GROUP BY gtin",
            (start_ms, end_ms))
        return {str(r[0]): int(r[1]) for r in rows}

    def credited_uses(self, start_ms: int, end_ms: int) -> list[CreditedUse]:
        """Accepted credits whose return is in ``[start_ms, end_ms)``, with their original charge."""
        rows = self._engine.query(
            "SELECT c.gtin, c.price_fen, c.used_at_ms, r.returned_at_ms FROM returns r "
            "JOIN charges ch ON ch.charge_id = r.charge_id "
            "JOIN consumption c ON c.device = ch.device AND c.seq = ch.seq AND c.credit_id = r.credit_id "
            "WHERE r.returned_at_ms >= ? AND r.returned_at_ms < ? AND r.credit_id IS NOT NULL "
            "ORDER BY r.returned_at_ms", (start_ms, end_ms))
        return [CreditedUse(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def lines(self, start_ms: int, end_ms: int, *, high_value_only: bool,
              slice_ms: int = _SLICE_MS) -> Iterator[UsageLine]:
        """Every charge used and every accepted credit returned in the period, in time order, streamed.

        ``high_value_only``: the items the catalog marks high-value (an item missing from the catalog counts
        as high-value: what cannot be looked up is traced). Read one time slice (an hour) at a time through the time
        indexes, so a month of lines never sits in memory at once.
        """
        hv = "AND COALESCE(cat.high_value, 1) = 1 " if high_value_only else ""
        charges = (
            "SELECT 'charge', c.gtin, c.name, c.lot, c.serial, c.admission, c.dept, c.operator, c.used_at_ms, "
            "c.used_at_ms, c.price_fen, COALESCE(c.charge_id, ''), COALESCE(c.his_ref, '') "
            "FROM consumption c LEFT JOIN catalog cat ON cat.gtin = c.gtin "
            f"WHERE c.used_at_ms >= ? AND c.used_at_ms < ? {hv}ORDER BY c.used_at_ms, c.device, c.seq")
        credits = (
            "SELECT 'credit', c.gtin, c.name, c.lot, c.serial, c.admission, r.dept, r.operator, r.returned_at_ms, "
            "c.used_at_ms, c.price_fen, r.credit_id, COALESCE(c.credit_his_ref, '') "
            "FROM returns r JOIN charges ch ON ch.charge_id = r.charge_id "
            "JOIN consumption c ON c.device = ch.device AND c.seq = ch.seq AND c.credit_id = r.credit_id "
            "LEFT JOIN catalog cat ON cat.gtin = c.gtin "
            f"WHERE r.returned_at_ms >= ? AND r.returned_at_ms < ? AND r.credit_id IS NOT NULL {hv}"
            "ORDER BY r.returned_at_ms, r.device, r.seq")
        for lo in range(start_ms, end_ms, slice_ms):
            hi = min(end_ms, lo + slice_ms)
            rows = self._engine.query(charges, (lo, hi)) + self._engine.query(credits, (lo, hi))
            rows.sort(key=lambda r: r[8])  # stable: charges before credits at the same instant
            for r in rows:
                yield UsageLine(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
                                str(r[7]), int(r[8]), int(r[9]), int(r[10]), str(r[11]), str(r[12]))

    def not_accepted(self) -> list[PendingCharge]:
        """Charges the HIS has not accepted: still in the outbox (``pending``) or refused (``parked``).

        The caller picks those of its period by ``ts_ms`` (the time of use, from the charge line): the outbox
        and the refusals are small, read through the ``charges_status`` index.
        """
        rows = self._engine.query(
            "SELECT charge_id, status, line FROM charges WHERE status IN ('pending', 'parked') "
            "AND item_key NOT LIKE 'credit:%' ORDER BY id")
        out: list[PendingCharge] = []
        for charge_id, status, line_text in rows:
            line = json.loads(line_text)
            out.append(PendingCharge(str(charge_id), str(status), str(line.get("gtin", "")),
                                     int(line.get("ts_ms", 0)), int(line.get("price_fen", 0))))
        return out

