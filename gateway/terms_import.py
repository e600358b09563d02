"""Supply terms from CSV or XLSX: suppliers, purchase contracts, registration certificates, VBP categories and
items (``spd-gateway terms-import``). All files given are read first; one bad row anywhere and nothing is stored.

Columns (header row, any order, case-insensitive; optional ones in brackets):

* suppliers: supplier, name, [licence_no], [licence_expiry]
* contracts: supplier, gtin, purchase_price_fen, valid_from, [valid_to], [contract_no]
  (``valid_to`` empty: open-ended; both dates inclusive)
* registrations: gtin, cert_no, expiry
* VBP categories: category, year, agreed_volume, [name]
* VBP items: gtin, category, winner

Dates are ``YYYY-MM-DD`` (or date cells), money integer fen, ``winner`` 1/0/true/false/yes/no.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.catalog import RowError, _bool, _fen, _gtin, _shown, _text, parse_table, read_table
from gateway.data.terms import OPEN_ENDED, ContractRow, RegistrationRow, SupplierRow, VbpCategoryRow, VbpItemRow
from gateway.store import GatewayStore

SUPPLIER_COLUMNS = (("supplier", "name"), ("licence_no", "licence_expiry"))
CONTRACT_COLUMNS = (("supplier", "gtin", "purchase_price_fen", "valid_from"), ("valid_to", "contract_no"))
REGISTRATION_COLUMNS = (("gtin", "cert_no", "expiry"), ())
VBP_CATEGORY_COLUMNS = (("category", "year", "agreed_volume"), ("name",))
VBP_ITEM_COLUMNS = (("gtin", "category", "winner"), ())


@dataclass(slots=True)
class SupplyTerms:
    suppliers: list[SupplierRow] = field(default_factory=list)
    contracts: list[ContractRow] = field(default_factory=list)
    registrations: list[RegistrationRow] = field(default_factory=list)
    vbp_categories: list[VbpCategoryRow] = field(default_factory=list)
    vbp_items: list[VbpItemRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"suppliers": len(self.suppliers), "contracts": len(self.contracts),
                "registrations": len(self.registrations), "vbp_categories": len(self.vbp_categories),
                "vbp_items": len(self.vbp_items)}


Errors = list[RowError]


def _date(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(_text(value)).isoformat()
    except ValueError:
        return None


def _required_text(rec: dict[str, Any], col: str, line: int, errors: Errors) -> str:
    text = _text(rec.get(col))
    if not text:
        errors.append(RowError(line, col, "empty"))
    return text


def _required_gtin(rec: dict[str, Any], line: int, errors: Errors) -> str:
    gtin = _gtin(rec.get("gtin"))
    if gtin is None:
        errors.append(RowError(line, "gtin", f"not a valid GTIN: {_shown(rec.get('gtin'))}"))
    return gtin or ""


def _required_date(rec: dict[str, Any], col: str, line: int, errors: Errors) -> str:
    day = _date(rec.get(col))
    if day is None:
        errors.append(RowError(line, col, f"not a date (YYYY-MM-DD): {_shown(rec.get(col))}"))
    return day or ""


def _once(seen: set[Any], key: Any, line: int, col: str, what: str, errors: Errors) -> None:
    if key in seen:
        errors.append(RowError(line, col, f"{what} listed twice"))
    seen.add(key)


def parse_suppliers(path: Path) -> tuple[list[SupplierRow], Errors]:
    seen: set[str] = set()

    def row(line: int, rec: dict[str, Any], errors: Errors) -> SupplierRow:
        code = _required_text(rec, "supplier", line, errors)
        name = _required_text(rec, "name", line, errors)
        expiry = ""
        if _text(rec.get("licence_expiry")):
            expiry = _required_date(rec, "licence_expiry", line, errors)
        _once(seen, code, line, "supplier", f"supplier {code}", errors)
        return SupplierRow(code, name, _text(rec.get("licence_no")), expiry)

    return parse_table(read_table(path), *SUPPLIER_COLUMNS, row)


def parse_contracts(path: Path) -> tuple[list[ContractRow], Errors]:
    seen: set[tuple[str, str, str]] = set()

    def row(line: int, rec: dict[str, Any], errors: Errors) -> ContractRow:
        supplier = _required_text(rec, "supplier", line, errors)
        gtin = _required_gtin(rec, line, errors)
        price = _fen(rec.get("purchase_price_fen"))
        if price is None:
            errors.append(RowError(line, "purchase_price_fen", "price must be a non-negative integer number of fen, "
                                   f"got {_shown(rec.get('purchase_price_fen'))}"))
        valid_from = _required_date(rec, "valid_from", line, errors)
        valid_to = _required_date(rec, "valid_to", line, errors) if _text(rec.get("valid_to")) else OPEN_ENDED
        if valid_from and valid_to and valid_to < valid_from:
            errors.append(RowError(line, "valid_to", f"ends ({valid_to}) before it starts ({valid_from})"))
        _once(seen, (supplier, gtin, valid_from), line, "valid_from",
              f"contract of {supplier} for {gtin} from {valid_from}", errors)
        return ContractRow(supplier, gtin, price or 0, valid_from, valid_to, _text(rec.get("contract_no")))

    return parse_table(read_table(path), *CONTRACT_COLUMNS, row)


def parse_registrations(path: Path) -> tuple[list[RegistrationRow], Errors]:
    seen: set[tuple[str, str]] = set()

    def row(line: int, rec: dict[str, Any], errors: Errors) -> RegistrationRow:
        gtin = _required_gtin(rec, line, errors)
        cert = _required_text(rec, "cert_no", line, errors)
        expiry = _required_date(rec, "expiry", line, errors)
        _once(seen, (gtin, cert), line, "cert_no", f"certificate {cert} of {gtin}", errors)
        return RegistrationRow(gtin, cert, expiry)

    return parse_table(read_table(path), *REGISTRATION_COLUMNS, row)


def parse_vbp_categories(path: Path) -> tuple[list[VbpCategoryRow], Errors]:
    seen: set[tuple[str, int]] = set()

    def row(line: int, rec: dict[str, Any], errors: Errors) -> VbpCategoryRow:
        category = _required_text(rec, "category", line, errors)
        year = _fen(rec.get("year"))
        if year is None or not 2000 <= year <= 2100:
            errors.append(RowError(line, "year", f"expected a year such as 2026, got {_shown(rec.get('year'))}"))
        volume = _fen(rec.get("agreed_volume"))
        if volume is None:
            errors.append(RowError(line, "agreed_volume", "expected a non-negative whole number of units, got "
                                   f"{_shown(rec.get('agreed_volume'))}"))
        _once(seen, (category, year), line, "category", f"category {category} of {year}", errors)
        return VbpCategoryRow(category, year or 0, _text(rec.get("name")), volume or 0)

    return parse_table(read_table(path), *VBP_CATEGORY_COLUMNS, row)


def parse_vbp_items(path: Path) -> tuple[list[VbpItemRow], Errors]:
    seen: set[str] = set()

    def row(line: int, rec: dict[str, Any], errors: Errors) -> VbpItemRow:
        gtin = _required_gtin(rec, line, errors)
        category = _required_text(rec, "category", line, errors)
        winner = _bool(rec.get("winner"), None)
        if winner is None:
            errors.append(RowError(line, "winner", f"expected 1/0/true/false, got {_shown(rec.get('winner'))}"))
        _once(seen, gtin, line, "gtin", f"item {gtin}", errors)
        return VbpItemRow(gtin, category, bool(winner))

    return parse_table(read_table(path), *VBP_ITEM_COLUMNS, row)


PARSERS: dict[str, Callable[[Path], tuple[list[Any], Errors]]] = {
    "suppliers": parse_suppliers,
    "contracts": parse_contracts,
    "registrations": parse_registrations,
    "vbp_categories": parse_vbp_categories,
    "vbp_items": parse_vbp_items,
}
"""The kinds of terms file, in the order they are read and stored."""


def read_terms(files: dict[str, Path]) -> tuple[SupplyTerms, dict[str, Errors]]:
    """Parse every file given (kind → path); the terms read and, per kind, the row errors found."""
    terms = SupplyTerms()
    errors: dict[str, Errors] = {}
    for kind, parse in PARSERS.items():
        if kind in files:
            rows, errs = parse(files[kind])
            setattr(terms, kind, rows)
            if errs:
                errors[kind] = errs
    return terms, errors


def store_terms(store: GatewayStore, terms: SupplyTerms) -> None:
    """Upsert everything read in one transaction (each kind keyed as its table is: a repeated import changes
    nothing)."""
    store.terms.import_all(terms.suppliers, terms.contracts, terms.registrations, terms.vbp_categories,
                           terms.vbp_items)
