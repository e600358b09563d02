"""Supply terms beside the catalog: suppliers and their licences, purchase contracts, product registration
certificates, and the volume-based procurement (VBP) categories with their agreed yearly volumes.

These are what the books read: settlement prices a line at the contract's purchase price in force on the day
of use, the mark-up check compares a charge with it, and alerts watch licence and certificate expiry.
Dates are ISO ``YYYY-MM-DD`` text (they compare as text); money is integer fen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from gateway.data.engine import Engine, Transaction

OPEN_ENDED = "9999-12-31"


class SupplierRow(NamedTuple):
    supplier: str  # the supplier's code, as in the catalog's ``supplier`` column
    name: str
    licence_no: str
    licence_expiry: str  # ISO date, "" when not known


class ContractRow(NamedTuple):
    supplier: str
    gtin: str
    purchase_price_fen: int
    valid_from: str  # ISO date, inclusive
    valid_to: str  # ISO date, inclusive; OPEN_ENDED when the contract has no end
    contract_no: str


class RegistrationRow(NamedTuple):
    gtin: str
    cert_no: str  # the product registration certificate (注册证) number
    expiry: str  # ISO date


class VbpCategoryRow(NamedTuple):
    category: str
    year: int
    name: str
    agreed_volume: int  # units the hospital agreed to use in the year


class VbpItemRow(NamedTuple):
    gtin: str
    category: str
    winner: bool  # a winning product of the category's round


class TermsStore:
    """``suppliers``, ``contracts``, ``registrations``, ``vbp_categories`` and ``vbp_items``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def import_all(self, suppliers: Sequence[SupplierRow], contracts: Sequence[ContractRow],
                   registrations: Sequence[RegistrationRow], vbp_categories: Sequence[VbpCategoryRow],
                   vbp_items: Sequence[VbpItemRow]) -> None:
        """Upsert terms of every kind in one transaction (an import is stored whole or not at all)."""
        with self._engine.transaction() as db:
            _suppliers(db, suppliers)
            _contracts(db, contracts)
            _registrations(db, registrations)
            _vbp_categories(db, vbp_categories)
            _vbp_items(db, vbp_items)

    # ------------------------------------------------------------ suppliers

    def upsert_suppliers(self, rows: Sequence[SupplierRow]) -> None:
        with self._engine.transaction() as db:
            _suppliers(db, rows)

    def suppliers(self) -> list[SupplierRow]:
        rows = self._engine.query(
            "SELECT supplier, name, licence_no, licence_expiry FROM suppliers ORDER BY supplier")
        return [SupplierRow(*r) for r in rows]

    # ------------------------------------------------------------ purchase contracts

    def upsert_contracts(self, rows: Sequence[ContractRow]) -> None:
        with self._engine.transaction() as db:
            _contracts(db, rows)

    def contracts(self, gtin: str | None = None) -> list[ContractRow]:
        rows = self._engine.query(
            "SELECT supplier, gtin, purchase_price_fen, valid_from, valid_to, contract_no FROM contracts "
            "WHERE (CAST(? AS TEXT) IS NULL OR gtin = ?) ORDER BY gtin, valid_from, supplier", (gtin, gtin))
        return [ContractRow(r[0], r[1], int(r[2]), r[3], r[4], r[5]) for r in rows]

    def contract_on(self, gtin: str, day: str) -> ContractRow | None:
        """The contract for ``gtin`` in force on ``day`` (the latest-starting one if several overlap)."""
        rows = self._engine.query(
            "SELECT supplier, gtin, purchase_price_fen, valid_from, valid_to, contract_no FROM contracts "
            "WHERE gtin = ? AND valid_from <= ? AND valid_to >= ? ORDER BY valid_from DESC, supplier LIMIT 1",
            (gtin, day, day))
        return ContractRow(rows[0][0], rows[0][1], int(rows[0][2]), rows[0][3], rows[0][4], rows[0][5]) \
            if rows else None

    # ------------------------------------------------------------ registration certificates

    def upsert_registrations(self, rows: Sequence[RegistrationRow]) -> None:
        with self._engine.transaction() as db:
            _registrations(db, rows)

    def registrations(self) -> list[RegistrationRow]:
        rows = self._engine.query("SELECT gtin, cert_no, expiry FROM registrations ORDER BY gtin, cert_no")
        return [RegistrationRow(*r) for r in rows]

    # ------------------------------------------------------------ volume-based procurement

    def upsert_vbp_categories(self, rows: Sequence[VbpCategoryRow]) -> None:
        with self._engine.transaction() as db:
            _vbp_categories(db, rows)

    def vbp_categories(self, year: int | None = None) -> list[VbpCategoryRow]:
        rows = self._engine.query(
            "SELECT category, year, name, agreed_volume FROM vbp_categories "
            "WHERE (CAST(? AS BIGINT) IS NULL OR year = ?) "
            "ORDER BY year, category", (year, year))
        return [VbpCategoryRow(r[0], int(r[1]), r[2], int(r[3])) for r in rows]

    def upsert_vbp_items(self, rows: Sequence[VbpItemRow]) -> None:
        with self._engine.transaction() as db:
            _vbp_items(db, rows)

    def vbp_items(self) -> list[VbpItemRow]:
        rows = self._engine.query("SELECT gtin, category, winner FROM vbp_items ORDER BY category, gtin")
        return [VbpItemRow(r[0], r[1], bool(r[2])) for r in rows]

def _suppliers(db: Transaction, rows: Sequence[SupplierRow]) -> None:
    db.executemany(
        "INSERT INTO suppliers (supplier, name, licence_no, licence_expiry) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (supplier) DO UPDATE SET name = excluded.name, licence_no = excluded.licence_no, "
        "licence_expiry = excluded.licence_expiry",
        [tuple(r) for r in rows],
    )


def _contracts(db: Transaction, rows: Sequence[ContractRow]) -> None:
    db.executemany(
        "INSERT INTO contracts (supplier, gtin, purchase_price_fen, valid_from, valid_to, contract_no) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (supplier, gtin, valid_from) DO UPDATE SET "
        "purchase_price_fen = excluded.purchase_price_fen, valid_to = excluded.valid_to, "
        "contract_no = excluded.contract_no",
        [tuple(r) for r in rows],
    )


def _registrations(db: Transaction, rows: Sequence[RegistrationRow]) -> None:
    db.executemany(
        "INSERT INTO registrations (gtin, cert_no, expiry) VALUES (?, ?, ?) "
        "ON CONFLICT (gtin, cert_no) DO UPDATE SET expiry = excluded.expiry",
        [tuple(r) for r in rows],
    )


def _vbp_categories(db: Transaction, rows: Sequence[VbpCategoryRow]) -> None:
    db.executemany(
        "INSERT INTO vbp_categories (category, year, name, agreed_volume) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (category, year) DO UPDATE SET name = excluded.name, "
        "agreed_volume = excluded.agreed_volume",
        [tuple(r) for r in rows],
    )


def _vbp_items(db: Transaction, rows: Sequence[VbpItemRow]) -> None:
    db.executemany(
        "INSERT INTO vbp_items (gtin, category, winner) VALUES (?, ?, ?) "
        "ON CONFLICT (gtin) DO UPDATE SET category = excluded.category, winner = excluded.winner",
        [(r.gtin, r.category, int(r.winner)) for r in rows],
    )
