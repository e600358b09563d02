"""The simulated HIS's books as its finance office sees them: lines entered by hand, clerks' edits of lines
the interface booked, and the month's export of every charge and credit line (CSV, the columns
``spd-gateway his-import`` reads; docs/books.md).

It works on the database of :class:`hw_sim.his.SimulatedHis` (its ``charges``, ``credits`` and ``received``
tables) and adds two of its own: ``manual_lines`` and ``line_edits``. A line booked through the interface is
exported from what the HIS received: the service time (FT1-4), department (FT1-13), operator (FT1-20) and
item (ZUD-2..4) of the message, with the charge code and price as the HIS holds them now (after any edit).
"""

from __future__ import annotations

import csv
import datetime as dt
import sqlite3
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

from hw_sim.month_world import ManualLine

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manual_lines (
    his_id TEXT PRIMARY KEY, entry TEXT NOT NULL, admission TEXT NOT NULL, charge_code TEXT NOT NULL,
    gtin TEXT NOT NULL, lot TEXT NOT NULL, serial TEXT NOT NULL, qty INTEGER NOT NULL, unit_price_fen INTEGER NOT NULL,
    at_ms INTEGER NOT NULL, dept TEXT NOT NULL, operator TEXT NOT NULL, reverses TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS line_edits (
    txn_id TEXT PRIMARY KEY, charge_code TEXT, unit_price_fen INTEGER, edited_by TEXT NOT NULL
);
"""

COLUMNS = ("his_id", "entry", "admission", "charge_code", "gtin", "lot", "serial", "qty", "unit_price", "amount",
           "time", "source", "reverses", "dept", "operator", "his_ref")


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


class HisBooks:
    """The finance side of the simulated HIS's database."""

    def __init__(self, his_db: Path, *, utc_offset_minutes: int = 480) -> None:
        self.db = sqlite3.connect(his_db, timeout=30)
        self.db.executescript(_SCHEMA)
        self.tz = dt.timezone(dt.timedelta(minutes=utc_offset_minutes))

    def close(self) -> None:
        self.db.close()

    def enter(self, lines: Iterable[ManualLine]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO manual_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(m.his_id, m.entry, m.admission, m.charge_code, m.gtin, m.lot, m.serial, m.qty, m.unit_price_fen,
                  m.at_ms, m.dept, m.operator, m.reverses) for m in lines])

    def edit(self, txn_id: str, *, charge_code: str | None = None, unit_price_fen: int | None = None,
             by: str = "HIS-clerk") -> None:
        """A clerk changes a booked charge's code or price."""
        with self.db:
            if self.db.execute("SELECT 1 FROM charges WHERE txn_id = ?", (txn_id,)).fetchone() is None:
                raise KeyError(f"the HIS holds no charge {txn_id}")
            self.db.execute("INSERT INTO line_edits VALUES (?, ?, ?, ?) ON CONFLICT (txn_id) DO UPDATE SET "
                            "charge_code = COALESCE(excluded.charge_code, line_edits.charge_code), "
                            "unit_price_fen = COALESCE(excluded.unit_price_fen, line_edits.unit_price_fen)",
                            (txn_id, charge_code, unit_price_fen, by))

    def export(self, path: Path, *, start_ms: int, end_ms: int) -> int:
        """Write every line with its service time in ``[start_ms, end_ms)``; returns how many."""
        rows = [r for r in self._interface_lines() if start_ms <= r[0] < end_ms]
        rows += [r for r in self._manual_lines() if start_ms <= r[0] < end_ms]
        rows.sort(key=lambda r: (r[0], r[1][0]))
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(COLUMNS)
            w.writerows(r[1] for r in rows)
        return len(rows)

    def _time(self, at_ms: int) -> str:
        return dt.datetime.fromtimestamp(at_ms / 1000, self.tz).isoformat(timespec="seconds")

    def _interface_lines(self) -> list[tuple[int, list[str]]]:
        raw_of = {str(r[0]): str(r[1]) for r in self.db.execute(
            "SELECT txn_id, raw FROM received WHERE answer = 'AA' AND txn_id IS NOT NULL ORDER BY id DESC")}
        edits = {str(r[0]): (r[1], r[2]) for r in self.db.execute(
            "SELECT txn_id, charge_code, unit_price_fen FROM line_edits")}
        out: list[tuple[int, list[str]]] = []
        for txn, admission, code, qty, price, his_ref in self.db.execute(
                "SELECT txn_id, admission, charge_code, qty, unit_price, his_ref FROM charges"):
            f = _fields(raw_of.get(txn, ""))
            new_code, new_price = edits.get(txn, (None, None))
            fen = int(new_price) if new_price is not None else int(Decimal(price) * 100)
            n = int(Decimal(qty))
            at = self._parse_time(f.get("time", ""))
            out.append((at, [txn, "charge", admission, new_code or code, f.get("gtin", ""), f.get("lot", ""),
                             f.get("serial", ""), str(n), _yuan(fen), _yuan(n * fen), self._time(at), "interface", "",
                             f.get("dept", ""), f.get("operator", ""), his_ref]))
        for txn, original, admission, code, amount_fen, his_ref in self.db.execute(
                "SELECT txn_id, original_txn_id, admission, charge_code, amount_fen, his_ref FROM credits"):
            f = _fields(raw_of.get(txn, ""))
            at = self._parse_time(f.get("time", ""))
            out.append((at, [txn, "credit", admission, code, f.get("gtin", ""), f.get("lot", ""), f.get("serial", ""),
                             "-1", _yuan(-int(amount_fen)), _yuan(int(amount_fen)), self._time(at), "interface",
                             original, f.get("dept", ""), f.get("operator", ""), his_ref]))
        return out

    def _manual_lines(self) -> list[tuple[int, list[str]]]:
        out: list[tuple[int, list[str]]] = []
        for r in self.db.execute("SELECT his_id, entry, admission, charge_code, gtin, lot, serial, qty, "
                                 "unit_price_fen, at_ms, dept, operator, reverses FROM manual_lines"):
            his_id, entry, admission, code, gtin, lot, serial, qty, price, at, dept, operator, reverses = r
            out.append((int(at), [his_id, entry, admission, code, gtin, lot, serial, str(qty), _yuan(int(price)),
                                  _yuan(int(qty) * int(price)), self._time(int(at)), "manual", reverses, dept,
                                  operator, ""]))
        return out

    def _parse_time(self, text: str) -> int:
        """FT1-4, ``YYYYMMDDHHMMSS`` in hospital local time."""
        t = dt.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=self.tz)
        return int(t.timestamp() * 1000)


def _fields(raw: str) -> dict[str, str]:
    """What the export needs of one received DFT^P03 (segments split on CR, fields on |, components on ^)."""
    out: dict[str, str] = {}
    for seg in raw.replace("\n", "\r").split("\r"):
        f = seg.split("|")
        if f[0] == "FT1":
            out["time"] = f[4] if len(f) > 4 else ""
            out["dept"] = f[13].split("^")[0] if len(f) > 13 else ""
            out["operator"] = f[20].split("^")[0] if len(f) > 20 else ""
        elif f[0] == "ZUD":
            out["gtin"] = f[2].split("^")[0] if len(f) > 2 else ""
            out["lot"] = f[3] if len(f) > 3 else ""
            out["serial"] = f[4] if len(f) > 4 else ""
    return out


def main(argv: list[str] | None = None) -> int:
    """``spd-sim his-export``: the simulated HIS's charge and credit lines of a month, as its finance office
    exports them for the gateway's reconciliation."""
    import argparse

    from gateway.books.legs import month_period

    p = argparse.ArgumentParser(prog="spd-sim his-export", description="the simulated HIS's lines of a month (CSV)")
    p.add_argument("--db", type=Path, required=True, help="the simulated HIS's database")
    p.add_argument("--month", required=True, help="YYYY-MM, hospital local time")
    p.add_argument("--grace-days", type=int, default=7, help="days before and after the month also exported")
    p.add_argument("--utc-offset-minutes", type=int, default=480, help="hospital local time's offset (480)")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write")
    a = p.parse_args(argv)
    try:
        period = month_period(a.month, grace_days=a.grace_days, utc_offset_minutes=a.utc_offset_minutes)
    except ValueError as err:
        p.error(str(err))
    books = HisBooks(a.db, utc_offset_minutes=a.utc_offset_minutes)
    try:
        n = books.export(a.out, start_ms=period.read_from_ms, end_ms=period.read_to_ms)
    finally:
        books.close()
    print(f"{n} lines written to {a.out}")
    return 0
