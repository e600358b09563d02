"""The catalog: items, their purchase terms, recalled lots, lot expiry dates, department stock lists."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from gateway.data.engine import Engine


class ItemRow(NamedTuple):
    """One item of the dictionary with its purchase terms (``catalog`` joined with ``catalog_terms``)."""

    gtin: str
    item_code: str
    charge_code: str
    name: str
    spec: str
    manufacturer: str
    price_fen: int
    chargeable: bool
    high_value: bool
    supplier: str
    vbp: bool
    vbp_price_fen: int | None


class TermsRow(NamedTuple):
    gtin: str
    supplier: str
    vbp: bool
    vbp_price_fen: int | None


class RecallRow(NamedTuple):
    gtin: str
    lot: str  # "*": every lot of the GTIN
    reason: str
    recalled_on: str


class LotExpiryRow(NamedTuple):
    gtin: str
    lot: str
    expiry: str  # ISO date


class CatalogStore:
    """The ``catalog`` table and the tables kept beside it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def load_catalog_rows(self) -> list[tuple[Any, ...]]:
        return self._engine.query(
            "SELECT gtin, item_code, charge_code, name, spec, manufacturer, price_fen, chargeable, high_value "
            "FROM catalog ORDER BY gtin"
        )

    def upsert_catalog(self, rows: Sequence[tuple[Any, ...]]) -> int:
        with self._engine.transaction() as db:
            db.executemany(
                "INSERT INTO catalog (gtin, item_code, charge_code, name, spec, manufacturer, price_fen, chargeable, "
                "high_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gtin) DO UPDATE SET "
                "item_code = excluded.item_code, charge_code = excluded.charge_code, name = excluded.name, "
                "spec = excluded.spec, manufacturer = excluded.manufacturer, price_fen = excluded.price_fen, "
                "chargeable = excluded.chargeable, high_value = excluded.high_value",
                rows,
            )
        return len(rows)

    def upsert_terms(self, terms: Sequence[TermsRow]) -> None:
        with self._engine.transaction() as db:
            db.executemany(
                "INSERT INTO catalog_terms (gtin, supplier, vbp, vbp_price_fen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (gtin) DO UPDATE SET supplier = excluded.supplier, vbp = excluded.vbp, "
                "vbp_price_fen = excluded.vbp_price_fen",
                [(t.gtin, t.supplier, int(t.vbp), t.vbp_price_fen) for t in terms],
            )

    def items(self) -> list[ItemRow]:
        rows = self._engine.query(
            "SELECT c.gtin, c.item_code, c.charge_code, c.name, c.spec, c.manufacturer, c.price_fen, c.chargeable, "
            "c.high_value, COALESCE(t.supplier, ''), COALESCE(t.vbp, 0), t.vbp_price_fen FROM catalog c "
            "LEFT JOIN catalog_terms t ON t.gtin = c.gtin ORDER BY c.gtin"
        )
        return [ItemRow(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), bool(r[7]), bool(r[8]), r[9], bool(r[10]),
                        None if r[11] is None else int(r[11])) for r in rows]

    # ------------------------------------------------------------ recalled lots

    def store_recalls(self, lots: Sequence[RecallRow], *, replace: bool) -> None:
        """Store recalled lots; with ``replace`` they become the whole list (lifted recalls disappear)."""
        with self._engine.transaction() as db:
            if replace:
                db.execute("DELETE FROM recalled_lots")
            db.executemany(
                "INSERT INTO recalled_lots (gtin, lot, reason, recalled_on) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (gtin, lot) DO UPDATE SET reason = excluded.reason, recalled_on = excluded.recalled_on",
                [tuple(r) for r in lots],
            )

    def recalls(self) -> list[RecallRow]:
        rows = self._engine.query("SELECT gtin, lot, reason, recalled_on FROM recalled_lots ORDER BY gtin, lot")
        return [RecallRow(*r) for r in rows]

    # ------------------------------------------------------------ lot expiry dates

    def replace_lot_expiry(self, lots: Sequence[LotExpiryRow]) -> None:
        with self._engine.transaction() as db:
            db.execute("DELETE FROM lot_expiry")
            db.executemany("INSERT INTO lot_expiry (gtin, lot, expiry) VALUES (?, ?, ?)", [tuple(e) for e in lots])

    def lot_expiry(self) -> list[LotExpiryRow]:
        rows = self._engine.query("SELECT gtin, lot, expiry FROM lot_expiry ORDER BY gtin, lot")
        return [LotExpiryRow(*r) for r in rows]

    # ------------------------------------------------------------ department stock lists

    def set_dept_stock(self, dept: str, gtins: Iterable[str]) -> None:
        """Replace the list of items a department stocks."""
        with self._engine.transaction() as db:
            db.execute("DELETE FROM dept_stock WHERE dept = ?", (dept,))
            db.executemany("INSERT INTO dept_stock (dept, gtin) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           [(dept, g) for g in gtins])

    def dept_stock(self, dept: str | None = None) -> list[tuple[str, str]]:
        """(dept, gtin) of every stock list (only ``dept``'s when given), by department then GTIN."""
        rows = self._engine.query(
            "SELECT dept, gtin FROM dept_stock WHERE (CAST(? AS TEXT) IS NULL OR dept = ?) ORDER BY dept, gtin",
            (dept, dept),
        )
        return [(str(d), str(g)) for d, g in rows]

    # ------------------------------------------------------------ the device catalog document's versions

    def document_version(self, dept: str) -> tuple[int, str] | None:
        """(version, digest) of the last device catalog document built for ``dept`` ("" for all)."""
        rows = self._engine.query("SELECT version, digest FROM device_catalog_versions WHERE dept = ?", (dept,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def bump_document_version(self, dept: str, digest: str, now: float) -> int:
        """The version of the document with this digest: the last one's if its digest is the same, else the next."""
        with self._engine.transaction() as db:
            row = db.execute("SELECT version, digest FROM device_catalog_versions WHERE dept = ?", (dept,)).fetchone()
            if row is not None and row[1] == digest:
                return int(row[0])
            version = 1 if row is None else int(row[0]) + 1
            db.execute(
                "INSERT INTO device_catalog_versions (dept, version, digest, changed_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (dept) DO UPDATE SET version = excluded.version, digest = excluded.digest, "
                "changed_at = excluded.changed_at",
                (dept, version, digest, now),
            )
            return version
