"""Stock movements: every receipt, restock, take, return, use, count adjustment and opened pack, one row per
item (or per lot and quantity for items without serials), signed by direction at its location.

The books read this table: the ledger sums it per location, item and lot; reconciliation matches its
``take`` and ``use`` rows against charges and the consumption list; trace follows a serial through it.
A movement is recorded once: ``source`` names what it came from (``device:seq`` for a device event, an
import's own id otherwise), and recording the same source again changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from gateway.data.engine import Engine

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
    counterpart: str = ""  # a transfer: the same qty moves the other way at this location (migration 0006)
    expiry: str = ""  # ISO date, when the event or the import said (migration 0006)


class Balance(NamedTuple):
    """What is on hand at one location of one item: per serial for serialised items, else per lot."""

    location: str
    gtin: str
    lot: str
    serial: str
    qty: int
    last_ms: int  # the latest movement of it there
    expiry: str  # the latest expiry any of its movements recorded ("" when none did)


class UsePerPeriod(NamedTuple):
    """How much of an item left a department's stock to patients (use and opened packs) in one period."""

    dept: str
    gtin: str
    period: int  # (at_ms - start_ms) // period_ms
    qty: int


_COLUMNS = ("source, at_ms, kind, location, dept, gtin, lot, serial, qty, operator, admission, device, seq, "
            "counterpart, expiry")
INSERT_MOVEMENT: Final = (f"INSERT INTO stock_movements ({_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
                          "ON CONFLICT (source, gtin, lot, serial, kind) DO NOTHING")
# both sides of every movement: a transfer (a take: out of the cabinet, into the department's hands) counts
# again, negated, at its counterpart
_SIDES = ("SELECT location, gtin, lot, serial, qty, at_ms, expiry FROM stock_movements UNION ALL "
          "SELECT counterpart, gtin, lot, serial, -qty, at_ms, expiry FROM stock_movements WHERE counterpart != ''")


class StockStore:
    """The ``stock_movements`` table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, rows: Sequence[MovementRow]) -> int:
        """Record movements; one already recorded (same source, item and kind) is skipped. Returns rows given."""
        for row in rows:
            if row.kind not in KINDS:
                raise ValueError(f"unknown stock movement kind {row.kind!r}")
        with self._engine.transaction() as db:
            db.executemany(INSERT_MOVEMENT, [tuple(r) for r in rows])
        return len(rows)

    def movements(self, start_ms: int, end_ms: int, kinds: Sequence[str] | None = None) -> list[MovementRow]:
        """Movements with ``start_ms <= at_ms < end_ms`` (only ``kinds`` when given), in time order."""
        sql = f"SELECT {_COLUMNS} FROM stock_movements WHERE at_ms >= ? AND at_ms < ?"
        params: list[object] = [start_ms, end_ms]
        if kinds:
            sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
            params.extend(kinds)
        return _rows(self._engine.query(sql + " ORDER BY at_ms, id", params))

    # ------------------------------------------------------------ the books' reads (migration 0006)

    def balances(self, *, location: str | None = None, gtin: str | None = None, as_of_ms: int | None = None,
                 nonzero: bool = True) -> list[Balance]:
        """On hand per location and item: serialised items per serial (their lot the one recorded), others per
        lot; both sides of transfers counted. Now: from ``stock_balances`` (kept by a trigger on every movement);
        at ``as_of_ms``: summed from the movements before it."""
        if as_of_ms is None:
            sql = ("SELECT location, gtin, lot, serial, qty, last_ms, expiry FROM stock_balances "
                   "WHERE (CAST(? AS TEXT) IS NULL OR location = ?) AND (CAST(? AS TEXT) IS NULL OR gtin = ?)")
            if nonzero:
                sql += " AND qty != 0"
            rows = self._engine.query(sql + " ORDER BY location, gtin, lot, serial", (location, location, gtin, gtin))
            return [Balance(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6]) for r in rows]
        sql = (f"SELECT location, gtin, MAX(lot), serial, SUM(qty), MAX(at_ms), MAX(expiry) FROM ({_SIDES}) AS sides "
               "WHERE (CAST(? AS TEXT) IS NULL OR location = ?) AND (CAST(? AS TEXT) IS NULL OR gtin = ?) "
               "AND at_ms < ? "
               "GROUP BY location, gtin, serial, CASE WHEN serial = '' THEN lot ELSE '' END")
        if nonzero:
            sql += " HAVING SUM(qty) != 0"
        rows = self._engine.query(sql + " ORDER BY location, gtin, 3, serial",
                                  (location, location, gtin, gtin, as_of_ms))
        return [Balance(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6] or "") for r in rows]

    def first_at_ms(self) -> int | None:
        """When the earliest movement happened (None for an empty ledger)."""
        rows = self._engine.query("SELECT MIN(at_ms) FROM stock_movements")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def location_depts(self) -> dict[str, str]:
        """The department of each location (a cabinet's, from its events; ``dept:X`` is X's store)."""
        rows = self._engine.query("SELECT location, MAX(dept) FROM stock_movements WHERE dept != '' "
                                  "GROUP BY location")
        found = {str(r[0]): str(r[1]) for r in rows}
        for loc in list(found):
            if loc.startswith("dept:"):
                found[loc] = loc[5:]
        return found

    def of_item(self, gtin: str, *, serial: str | None = None, lot: str | None = None) -> list[MovementRow]:
        """Every movement of one item (a serial, or a whole lot, or every lot of the GTIN), in time order."""
        rows = self._engine.query(
            f"SELECT {_COLUMNS} FROM stock_movements WHERE gtin = ? AND (CAST(? AS TEXT) IS NULL OR serial = ?) "
            "AND (CAST(? AS TEXT) IS NULL OR lot = ?) ORDER BY at_ms, id", (gtin, serial, serial, lot, lot))
        return _rows(rows)

    def lot_of_serial(self, gtin: str, serial: str) -> str:
        """The lot recorded for a serialised item by any of its movements ("" when none says)."""
        rows = self._engine.query("SELECT MAX(lot) FROM stock_movements WHERE gtin = ? AND serial = ?",
                                  (gtin, serial))
        return str(rows[0][0] or "") if rows else ""

    def use_per_period(self, start_ms: int, end_ms: int, period_ms: int) -> list[UsePerPeriod]:
        """Use and opened packs per department, item and period of ``period_ms`` from ``start_ms``."""
        rows = self._engine.query(
            "SELECT dept, gtin, (at_ms - ?) / ?, -SUM(qty) FROM stock_movements WHERE kind IN (?, ?) "
            "AND at_ms >= ? AND at_ms < ? GROUP BY 1, 2, 3 ORDER BY dept, gtin, 3",
            (start_ms, period_ms, USE, PACK_OPEN, start_ms, end_ms))
        return [UsePerPeriod(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def outflow(self, start_ms: int, end_ms: int) -> list[tuple[str, str, int]]:
        """(location, gtin, qty) that left each location for use in the window, never below 0: takes from a
        cabinet less what came back, and at a department store use and opened packs less what its staff took
        out of cabinets for it (an item taken from a cabinet and used is the cabinet's outflow, not the store's)."""
        rows = self._engine.query(
            "SELECT location, gtin, -SUM(qty) FROM (SELECT location, gtin, qty FROM stock_movements "
            "WHERE kind IN (?, ?, ?, ?) AND at_ms >= ? AND at_ms < ? UNION ALL SELECT counterpart, gtin, -qty "
            "FROM stock_movements WHERE kind IN (?, ?) AND counterpart LIKE 'dept:%' AND at_ms >= ? AND at_ms < ?) "
            "AS used GROUP BY location, gtin HAVING -SUM(qty) > 0 ORDER BY location, gtin",
            (TAKE, RETURN, USE, PACK_OPEN, start_ms, end_ms, TAKE, RETURN, start_ms, end_ms))
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


def _rows(rows: Sequence[Sequence[Any]]) -> list[MovementRow]:
    return [MovementRow(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], int(r[8]), r[9], r[10], r[11],
                        int(r[12]), r[13], r[14]) for r in rows]
