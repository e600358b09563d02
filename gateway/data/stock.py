"""Stock movements: every receipt, restock, take, return, use, count adjustment and opened pack, one row per
item (or per lot and quantity for items without serials), signed by direction at its location.

The books read this table: the ledger sums it per location, item and lot; reconciliation matches its
``take`` and ``use`` rows against charges and the consumption list; trace follows a serial through it.
A movement is recorded once: ``source`` names what it came from (``device:seq`` for a device event, an
import's own id otherwise), and recording the same source again changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from gateway.data.engine import SqliteEngine

# the kinds of movement; ``qty`` is positive into ``location``, negative out of it
RECEIPT: Final = "receipt"  # the operator's store received the item from its supplier
RESTOCK: Final = "restock"  # put into a cabinet or department store
TAKE: Final = "take"  # left a cabinet (not yet used)
RETURN: Final = "return"  # came back into a cabinet
USE: Final = "use"  # consumed on a patient (the hospital's books: in and out at once)
COUNT_ADJUST: Final = "count_adjust"  # counted minus expected, after a stock count
PACK_OPEN: Final = "pack_open"  # a fixed-quantity pack opened: the department's consumption
KINDS: Final = frozenset({RECEIPT, RESTOCK, TAKE, RETURN, USE, COUNT_ADJUST, PACK_OPEN})


class MovementRow(NamedTuple):
    source: str
    at_ms: int
    kind: str
    location: str  # a cabinet's device id, "dept:<code>" for a department store, "operator" for the SPD store
    dept: str
    gtin: str
    lot: str
    serial: str
    qty: int
    operator: str  # staff id of who moved it
    admission: str  # the patient, for ``use``
    device: str  # the device whose event this came from ("" for imports)
    seq: int


_COLUMNS = "source, at_ms, kind, location, dept, gtin, lot, serial, qty, operator, admission, device, seq"


class StockStore:
    """The ``stock_movements`` table."""

    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    def record(self, rows: Sequence[MovementRow]) -> int:
        """Record movements; one already recorded (same source, item and kind) is skipped. Returns rows given."""
        for row in rows:
            if row.kind not in KINDS:
                raise ValueError(f"unknown stock movement kind {row.kind!r}")
        with self._engine.transaction() as db:
            db.executemany(
                f"INSERT INTO stock_movements ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (source, gtin, lot, serial, kind) DO NOTHING",
                [tuple(r) for r in rows],
            )
        return len(rows)

    def movements(self, start_ms: int, end_ms: int, kinds: Sequence[str] | None = None) -> list[MovementRow]:
        """Movements with ``start_ms <= at_ms < end_ms`` (only ``kinds`` when given), in time order."""
        sql = f"SELECT {_COLUMNS} FROM stock_movements WHERE at_ms >= ? AND at_ms < ?"
        params: list[object] = [start_ms, end_ms]
        if kinds:
            sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
            params.extend(kinds)
        rows = self._engine.query(sql + " ORDER BY at_ms, id", params)
        return [MovementRow(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], int(r[8]), r[9], r[10], r[11],
                            int(r[12])) for r in rows]
