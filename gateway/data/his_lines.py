"""The HIS's own list of what it billed (``his_lines``, migration 0007): every charge and credit line of a
period as the HIS exported it, those that came through this gateway's interface and those entered by hand.

Reconciliation reads it as the source of truth for high-value items. A line is keyed by the HIS's own
charge id; importing the same export again (or an export of an overlapping period) updates the lines in
place. Money is integer fen; ``qty`` is signed (a credit's is negative), ``amount_fen = qty * unit_price_fen``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from gateway.data.engine import Engine

CHARGE: Final = "charge"
CREDIT: Final = "credit"
INTERFACE: Final = "interface"  # sent by this gateway (the HIS charge id is the gateway's charge id)
MANUAL: Final = "manual"  # entered at the HIS by hand


class HisLineRow(NamedTuple):
    his_id: str  # the HIS's charge (or credit) id
    entry: str  # CHARGE or CREDIT
    admission: str
    charge_code: str
    gtin: str  # "" when the HIS does not know the item
    lot: str
    serial: str
    qty: int
    unit_price_fen: int
    amount_fen: int
    at_ms: int  # the service time the HIS recorded (UTC epoch ms)
    source: str  # INTERFACE or MANUAL
    reverses: str  # a credit: the his_id of the charge it reverses
    dept: str
    operator: str  # who entered it (the HIS user) or, from the interface, the operator the gateway sent
    his_ref: str


_COLUMNS = ("his_id, entry, admission, charge_code, gtin, lot, serial, qty, unit_price_fen, amount_fen, at_ms, "
            "source, reverses, dept, operator, his_ref")


class HisLineStore:
    """The ``his_lines`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def upsert(self, rows: Sequence[HisLineRow], *, imported_from: str, now: float) -> int:
        with self._engine.transaction() as db:
            db.executemany(
                f"INSERT INTO his_lines ({_COLUMNS}, imported_from, imported_at) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (his_id) DO UPDATE SET "
                "entry = excluded.entry, admission = excluded.admission, charge_code = excluded.charge_code, "
                "gtin = excluded.gtin, lot = excluded.lot, serial = excluded.serial, qty = excluded.qty, "
                "unit_price_fen = excluded.unit_price_fen, amount_fen = excluded.amount_fen, at_ms = excluded.at_ms, "
                "source = excluded.source, reverses = excluded.reverses, dept = excluded.dept, "
                "operator = excluded.operator, his_ref = excluded.his_ref, imported_from = excluded.imported_from, "
                "imported_at = excluded.imported_at",
                [(*r, imported_from, now) for r in rows],
            )
        return len(rows)

    def lines(self, start_ms: int, end_ms: int) -> list[HisLineRow]:
        """Lines with ``start_ms <= at_ms < end_ms``, in time order."""
        rows = self._engine.query(
            f"SELECT {_COLUMNS} FROM his_lines WHERE at_ms >= ? AND at_ms < ? ORDER BY at_ms, his_id",
            (start_ms, end_ms))
        return [_row(r) for r in rows]

    def credits(self, start_ms: int, end_ms: int) -> list[HisLineRow]:
        rows = self._engine.query(
            f"SELECT {_COLUMNS} FROM his_lines WHERE entry = 'credit' AND at_ms >= ? AND at_ms < ? ORDER BY at_ms",
            (start_ms, end_ms))
        return [_row(r) for r in rows]

    def charges_of_item(self, gtin: str, codes: Sequence[str], start_ms: int, end_ms: int) -> list[HisLineRow]:
        """The charge lines of one product, by time: those the gateway sent for a scan of ``gtin`` (whatever
        code they carry now), and the others that name ``gtin`` or, naming no item, bill one of ``codes``."""
        cols = ", ".join(f"h.{c.strip()}" for c in _COLUMNS.split(","))
        sent = self._engine.query(
            f"SELECT {cols} FROM his_lines h JOIN consumption c ON c.charge_id = h.his_id WHERE c.gtin = ? "
            "AND h.entry = 'charge' AND h.source = 'interface' AND h.at_ms >= ? AND h.at_ms < ?",
            (gtin, start_ms, end_ms))
        marks = ", ".join("?" for _ in codes) or "NULL"
        other = self._engine.query(
            f"SELECT {cols} FROM his_lines h WHERE h.entry = 'charge' AND h.at_ms >= ? AND h.at_ms < ? "
            f"AND (h.gtin = ? OR (h.gtin = '' AND h.charge_code IN ({marks}))) "
            "AND NOT (h.source = 'interface' AND EXISTS (SELECT 1 FROM consumption c WHERE c.charge_id = h.his_id))",
            (start_ms, end_ms, gtin, *codes))
        return sorted((_row(r) for r in (*sent, *other)), key=lambda ln: (ln.at_ms, ln.his_id))

    def charges_named(self, his_ids: Sequence[str]) -> set[str]:
        """Of ``his_ids``, those that are charge lines in the table (whatever their time)."""
        found: set[str] = set()
        ids = list(his_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" for _ in chunk)
            found.update(str(r[0]) for r in self._engine.query(
                f"SELECT his_id FROM his_lines WHERE entry = 'charge' AND his_id IN ({marks})", chunk))
        return found

    def count(self) -> int:
        return int(self._engine.query("SELECT COUNT(*) FROM his_lines")[0][0])


def _row(r: Sequence[Any]) -> HisLineRow:
    return HisLineRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), int(r[7]),
                      int(r[8]), int(r[9]), int(r[10]), str(r[11]), str(r[12]), str(r[13]), str(r[14]), str(r[15]))
