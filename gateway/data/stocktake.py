"""Stock counts: one row per count of a location (a cabinet's RFID inventory, an operator's stock-take), and
per item the quantity expected by the ledger and the quantity counted (migration 0006).

A count is recorded once per ``count_id``; recording it again changes nothing. The ``count_adjust`` movements
that bring the ledger to what was counted are recorded beside it (in :mod:`gateway.data.stock`), in the same
transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

from gateway.data.engine import Engine
from gateway.data.stock import INSERT_MOVEMENT, KINDS, MovementRow


class CountRow(NamedTuple):
    count_id: str
    location: str
    at_ms: int
    counted_by: str
    origin: str  # "import:<file>" or "device:<id>"


class CountLineRow(NamedTuple):
    count_id: str
    gtin: str
    lot: str
    serial: str
    expected: int
    counted: int


class StocktakeStore:
    """The ``stock_counts`` and ``stock_count_lines`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, count: CountRow, lines: Sequence[CountLineRow], adjustments: Sequence[MovementRow]) -> bool:
        """Record a count, its lines and its adjustments in one transaction; False if the count was recorded."""
        for m in adjustments:
            if m.kind not in KINDS:
                raise ValueError(f"unknown stock movement kind {m.kind!r}")
        with self._engine.transaction() as db:
            cur = db.execute(
                "INSERT INTO stock_counts (count_id, location, at_ms, counted_by, origin, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (count_id) DO NOTHING", (*count, time.time()))
            if cur.rowcount != 1:
                return False
            db.executemany(
                "INSERT INTO stock_count_lines (count_id, gtin, lot, serial, expected, counted) "
                "VALUES (?, ?, ?, ?, ?, ?)", [tuple(line) for line in lines])
            db.executemany(INSERT_MOVEMENT, [tuple(m) for m in adjustments])
        return True

    def counts(self, *, location: str | None = None) -> list[CountRow]:
        rows = self._engine.query(
            "SELECT count_id, location, at_ms, counted_by, origin FROM stock_counts "
            "WHERE (CAST(? AS TEXT) IS NULL OR location = ?) ORDER BY at_ms, count_id", (location, location))
        return [CountRow(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows]

    def discrepancies(self, *, location: str | None = None, count_id: str | None = None) -> list[
            tuple[CountRow, CountLineRow]]:
        """Count lines where the count differs from the ledger, with their count, oldest count first."""
        rows = self._engine.query(
            "SELECT c.count_id, c.location, c.at_ms, c.counted_by, c.origin, l.gtin, l.lot, l.serial, l.expected, "
            "l.counted FROM stock_count_lines l JOIN stock_counts c ON c.count_id = l.count_id "
            "WHERE l.expected != l.counted AND (CAST(? AS TEXT) IS NULL OR c.location = ?) "
            "AND (CAST(? AS TEXT) IS NULL OR c.count_id = ?) "
            "ORDER BY c.at_ms, c.count_id, l.gtin, l.lot, l.serial", (location, location, count_id, count_id))
        return [(CountRow(r[0], r[1], int(r[2]), r[3], r[4]),
                 CountLineRow(r[0], r[5], r[6], r[7], int(r[8]), int(r[9]))) for r in rows]
