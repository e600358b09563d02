"""Trace reads: every use of an item (by serial, lot or patient) with what became of its charge.

A use is a ``use`` or ``pack_open`` stock movement (from a device event); its charge is the outbox row of the
same event (``charges``), its HIS answer that row's status and ``his_ref``, a refusal ``charge_rejects``, a
credit the ``consumption`` row's ``credit_id``.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.data.engine import Engine


class UseRow(NamedTuple):
    at_ms: int
    kind: str
    location: str
    dept: str
    gtin: str
    lot: str
    serial: str
    qty: int
    operator: str
    admission: str
    device: str
    seq: int
    charge_id: str  # "" when no charge was queued for it
    charge_status: str  # pending, accepted, parked; "refused" (charge_rejects) or "" (none)
    his_ref: str
    refusal: str  # why the charge was refused, when it was
    credit_id: str


_SELECT = (
    "SELECT m.at_ms, m.kind, m.location, m.dept, m.gtin, m.lot, m.serial, m.qty, m.operator, m.admission, "
    "m.device, m.seq, COALESCE(c.charge_id, ''), COALESCE(c.status, CASE WHEN r.reason IS NULL THEN '' "
    "ELSE 'refused' END), COALESCE(c.his_ref, k.his_ref, ''), COALESCE(r.reason, ''), COALESCE(k.credit_id, '') "
    "FROM stock_movements m "
    "LEFT JOIN charges c ON m.device != '' AND c.device = m.device AND c.seq = m.seq "
    "LEFT JOIN charge_rejects r ON m.device != '' AND r.device = m.device AND r.seq = m.seq "
    "LEFT JOIN consumption k ON m.device != '' AND k.device = m.device AND k.seq = m.seq "
    "WHERE m.kind IN ('use', 'pack_open') "
)


class TraceStore:
    """Reads across ``stock_movements``, ``charges``, ``charge_rejects`` and ``consumption``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def uses(self, *, gtin: str | None = None, serial: str | None = None, lot: str | None = None,
             admission: str | None = None) -> list[UseRow]:
        """Uses matching every filter given, in time order."""
        rows = self._engine.query(
            _SELECT + "AND (CAST(? AS TEXT) IS NULL OR m.gtin = ?) AND (CAST(? AS TEXT) IS NULL OR m.serial = ?) "
            "AND (CAST(? AS TEXT) IS NULL OR m.lot = ?) "
            "AND (CAST(? AS TEXT) IS NULL OR m.admission = ?) ORDER BY m.at_ms, m.id",
            (gtin, gtin, serial, serial, lot, lot, admission, admission))
        return [UseRow(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]), r[8], r[9], r[10], int(r[11]),
                       r[12], r[13], r[14] or "", r[15], r[16]) for r in rows]

    def serials_of_lot(self, gtin: str, lot: str) -> list[str]:
        """Serials any movement recorded with this lot (a serialised item's use may carry no lot)."""
        rows = self._engine.query("SELECT DISTINCT serial FROM stock_movements WHERE gtin = ? AND lot = ? "
                                  "AND serial != '' ORDER BY serial", (gtin, lot))
        return [str(r[0]) for r in rows]
