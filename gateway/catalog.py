"""The hospital's item dictionary (商品字典) and the lists kept beside it: CSV/XLSX import with row-level errors.

Catalog columns (header row, any order, case-insensitive):

* required: gtin, item_code, charge_code, name, spec, manufacturer, price_fen, chargeable, high_value;
* optional: supplier, vbp (the item won a national volume-based procurement round), vbp_price_fen.

Prices are integer fen (分), never yuan with decimals. **Zero mark-up**: a high-value consumable is
charged at its purchase price, so ``price_fen`` *is* the charge; for a VBP winning item the purchase
price is the negotiated winning price, so a row with ``vbp`` true must carry ``vbp_price_fen`` equal to
``price_fen`` (a row marking up a VBP item is refused).  Booleans are 1/0, true/false, yes/no, y/n
(or real booleans in a spreadsheet).

Recalled lots: columns gtin, lot (``*`` recalls every lot of the GTIN), optional reason and recalled_on.

A bad row is reported as a :class:`RowError` (line, column, reason) for every problem found in it;
good rows are imported.  Lines are 1-based file lines (CSV) or sheet rows (XLSX); the header is line 1.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.data.catalog import RecallRow, TermsRow
from gateway.data.census import CensusRow
from gateway.store import GatewayStore
from spd_common.gtin import is_valid_gtin

log = logging.getLogger(__name__)

COLUMNS = ("gtin", "item_code", "charge_code", "name", "spec", "manufacturer", "price_fen", "chargeable", "high_value")
OPTIONAL_COLUMNS = ("supplier", "vbp", "vbp_price_fen")
RECALL_COLUMNS = ("gtin", "lot")
RECALL_OPTIONAL_COLUMNS = ("reason", "recalled_on")
ALL_LOTS = "*"
_BOOL = {"1": True, "true": True, "yes": True, "y": True, "0": False, "false": False, "no": False, "n": False}

CatalogRow = tuple[str, str, str, str, str, str, int, int, int]
"""The row `GatewayStore.upsert_catalog` takes."""

class CatalogImportError(Exception):
    """Root of the catalog import errors; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CatalogFileError(CatalogImportError, ValueError):
    """A whole file cannot be read (unknown extension, not a workbook)."""


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    reason: str


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One item of the dictionary with its purchase terms; prices in integer fen."""

    gtin: str
    item_code: str
    charge_code: str
    name: str
    spec: str
    manufacturer: str
    price_fen: int
    chargeable: bool
    high_value: bool
    supplier: str = ""
    vbp: bool = False
    vbp_price_fen: int | None = None

    def row(self) -> CatalogRow:
        return (self.gtin, self.item_code, self.charge_code, self.name, self.spec, self.manufacturer,
                self.price_fen, int(self.chargeable), int(self.high_value))


@dataclass(frozen=True, slots=True)
class RecalledLot:
    """A recalled lot of an item (``lot == "*"``: every lot of the GTIN)."""

    gtin: str
    lot: str
    reason: str = ""
    recalled_on: str = ""


Table = tuple[list[str], Iterator[tuple[int, list[Any]]]]
"""A header and its numbered data rows, from either file format."""


# -- reading files ------------------------------------------------------------------------


def csv_table(text: str) -> Table:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, [])

    def rows() -> Iterator[tuple[int, list[Any]]]:
        for values in reader:
            if any(v.strip() for v in values):
                yield reader.line_num, list(values)

    return [str(h) for h in header], rows()


def xlsx_table(path: Path) -> Table:
    """The first worksheet of a workbook (openpyxl, cached values rather than formulas)."""
    openpyxl = importlib.import_module("openpyxl")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile, KeyError, InvalidFileException...
        raise CatalogFileError("bad_file", f"{path.name} is not a readable XLSX workbook: {err}") from err
    sheet = workbook.worksheets[0]
    all_rows = [(n, list(values)) for n, values in enumerate(sheet.iter_rows(values_only=True), start=1)]
    workbook.close()
    if not all_rows:
        return [], iter(())
    header_values = all_rows[0][1]
    while header_values and header_values[-1] in (None, ""):
        header_values.pop()
    header = ["" if h is None else str(h) for h in header_values]
    data = ((n, values) for n, values in all_rows[1:] if any(_text(v) for v in values))
    return header, data


def read_table(path: Path) -> Table:
    """A CSV (UTF-8) or XLSX file as a table, chosen by the file's extension."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return csv_table(path.read_text(encoding="utf-8"))
    if suffix == ".xlsx":
        return xlsx_table(path)
    raise CatalogFileError("unsupported_format", f"{path.name}: expected a .csv or .xlsx file")


# -- catalog ------------------------------------------------------------------------------


def parse_catalog_table(table: Table) -> tuple[list[CatalogEntry], list[RowError]]:
    seen: set[str] = set()
    return parse_table(table, COLUMNS, OPTIONAL_COLUMNS,
                       lambda line, rec, errors: _catalog_entry(line, rec, seen, errors),
                       accepted=lambda entry: seen.add(entry.gtin))


def parse_catalog_csv(text: str) -> tuple[list[CatalogEntry], list[RowError]]:
    return parse_catalog_table(csv_table(text))


def read_catalog_file(path: Path) -> tuple[list[CatalogEntry], list[RowError]]:
    """Parse a catalog file, CSV or XLSX by extension."""
    return parse_catalog_table(read_table(path))


def _catalog_entry(line: int, rec: dict[str, Any], seen: set[str], errors: list[RowError]) -> CatalogEntry | None:
    def bad(column: str, reason: str) -> None:
        errors.append(RowError(line, column, reason))

    gtin = _gtin(rec.get("gtin"))
    if gtin is None:
        bad("gtin", f"not a valid GTIN: {_shown(rec.get('gtin'))}")
    elif gtin in seen:
        bad("gtin", f"duplicate GTIN {gtin}")
    texts = {col: _text(rec.get(col)) for col in ("item_code", "charge_code", "name", "spec", "manufacturer",
                                                  "supplier")}
    for col in ("item_code", "charge_code", "name"):
        if not texts[col]:
            bad(col, "empty")
    price = _fen(rec.get("price_fen"))
    if price is None:
        bad("price_fen", f"price must be a non-negative integer number of fen, got {_shown(rec.get('price_fen'))}")
    flags: dict[str, bool] = {}
    for col, default in (("chargeable", None), ("high_value", None), ("vbp", False)):
        value = _bool(rec.get(col), default)
        if value is None:
            bad(col, f"expected 1/0/true/false, got {_shown(rec.get(col))}")
        else:
            flags[col] = value
    vbp_price: int | None = None
    if _text(rec.get("vbp_price_fen")):
        vbp_price = _fen(rec.get("vbp_price_fen"))
        if vbp_price is None:
            bad("vbp_price_fen", f"VBP price must be a non-negative integer number of fen, got "
                                 f"{_shown(rec.get('vbp_price_fen'))}")
    if flags.get("vbp") and not errors:
        if vbp_price is None:
            bad("vbp_price_fen", "a VBP winning item needs its VBP price")
        elif price is not None and vbp_price != price:
            bad("price_fen", f"zero mark-up: a VBP item is charged at its VBP price {vbp_price}, not {price}")
    elif flags.get("vbp") is False and vbp_price is not None:
        bad("vbp_price_fen", "a VBP price is given but vbp is false")
    if errors or gtin is None or price is None:
        return None
    return CatalogEntry(
        gtin=gtin, item_code=texts["item_code"], charge_code=texts["charge_code"], name=texts["name"],
        spec=texts["spec"], manufacturer=texts["manufacturer"], price_fen=price, chargeable=flags["chargeable"],
        high_value=flags["high_value"], supplier=texts["supplier"], vbp=flags["vbp"], vbp_price_fen=vbp_price,
    )


def write_catalog_csv(rows: Sequence[CatalogRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    return out.getvalue()


# -- recalled lots ------------------------------------------------------------------------


def parse_recall_table(table: Table) -> tuple[list[RecalledLot], list[RowError]]:
    return parse_table(table, RECALL_COLUMNS, RECALL_OPTIONAL_COLUMNS, _recalled_lot)


def _recalled_lot(line: int, rec: dict[str, Any], errors: list[RowError]) -> RecalledLot | None:
    gtin = _gtin(rec.get("gtin"))
    lot = _text(rec.get("lot"))
    recalled_on = rec.get("recalled_on")
    on = recalled_on.date().isoformat() if isinstance(recalled_on, dt.datetime) else _text(recalled_on)
    if gtin is None:
        errors.append(RowError(line, "gtin", f"not a valid GTIN: {_shown(rec.get('gtin'))}"))
    if not lot:
        errors.append(RowError(line, "lot", f"empty (use {ALL_LOTS} to recall every lot)"))
    if on:
        try:
            dt.date.fromisoformat(on)
        except ValueError:
            errors.append(RowError(line, "recalled_on", f"expected YYYY-MM-DD, got {on!r}"))
    return None if gtin is None else RecalledLot(gtin, lot, _text(rec.get("reason")), on)


def read_recall_file(path: Path) -> tuple[list[RecalledLot], list[RowError]]:
    """Parse a recalled-lots list, CSV or XLSX by extension."""
    return parse_recall_table(read_table(path))


# -- storing ------------------------------------------------------------------------------


def import_catalog(store: GatewayStore, entries: Sequence[CatalogEntry]) -> int:
    """Upsert items and their purchase terms; idempotent, so a failed import is simply run again."""
    n = store.upsert_catalog([e.row() for e in entries])
    store.catalog.upsert_terms([TermsRow(e.gtin, e.supplier, e.vbp, e.vbp_price_fen) for e in entries])
    log.info("catalog: %d items imported", n)
    return n


def import_recalled_lots(store: GatewayStore, lots: Sequence[RecalledLot], *, replace: bool = True) -> int:
    """Store the recall list; with `replace` it becomes the whole list (lifted recalls disappear)."""
    store.catalog.store_recalls([RecallRow(r.gtin, r.lot, r.reason, r.recalled_on) for r in lots], replace=replace)
    return len(lots)


def set_dept_stock(store: GatewayStore, dept: str, gtins: Iterable[str]) -> None:
    """Replace the list of items a department stocks (its cabinets' and store's assortment)."""
    store.catalog.set_dept_stock(dept, gtins)


def set_patient_census(store: GatewayStore, *, in_house: Iterable[str], discharged: Iterable[str]) -> None:
    """Replace the patient census the devices check wristbands against (fed from the HIS's ADT)."""
    rows = [CensusRow(a, "discharged") for a in discharged] + [CensusRow(a, "in_house") for a in in_house]
    store.census.store(rows, replace_all=True, now=time.time())
    from gateway.census import mark_census_complete  # the whole census: complete (late import: census uses this module)

    mark_census_complete(store, by="set_patient_census")


def load_catalog_entries(store: GatewayStore) -> list[CatalogEntry]:
    return [CatalogEntry(*r) for r in store.catalog.items()]


def load_recalled_lots(store: GatewayStore) -> list[RecalledLot]:
    return [RecalledLot(*r) for r in store.catalog.recalls()]


def load_dept_stock(store: GatewayStore, dept: str | None = None) -> dict[str, list[str]]:
    """Stock lists by department (only `dept`'s when given); a department without a list is absent."""
    out: dict[str, list[str]] = {}
    for d, g in store.catalog.dept_stock(dept):
        out.setdefault(d, []).append(g)
    return out


def load_patient_census(store: GatewayStore) -> tuple[list[str], list[str]] | None:
    """(in-house, discharged) admission numbers, or None when the gateway has no census."""
    rows = store.census.all()
    if not rows:
        return None
    in_house = [r.admission for r in rows if r.status == "in_house"]
    return in_house, [r.admission for r in rows if r.status == "discharged"]



# -- cells --------------------------------------------------------------------------------


def _check_header(
    header: list[str], required: Sequence[str], optional: Sequence[str]
) -> tuple[list[str], RowError | None]:
    names = [h.strip().lower() for h in header]
    if "" in names:
        return names, RowError(1, f"#{names.index('') + 1}", "empty column header")
    missing = [c for c in required if c not in names]
    if missing:
        return names, RowError(1, ",".join(missing), "missing columns")
    unknown = [c for c in names if c not in required and c not in optional]
    if unknown:
        return names, RowError(1, ",".join(unknown), "unknown columns")
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        return names, RowError(1, ",".join(twice), "duplicate columns")
    return names, None


_Row = TypeVar("_Row")


def parse_table(table: Table, required: Sequence[str], optional: Sequence[str],
                parse_row: Callable[[int, dict[str, Any], list[RowError]], _Row | None], *,
                accepted: Callable[[_Row], None] = lambda row: None) -> tuple[list[_Row], list[RowError]]:
    """The shape of every import table: check the header, then parse each row by its column names.

    ``parse_row(line, record, errors)`` appends what is wrong with the row to ``errors``; a row
    with errors, or for which it returns None (a row to leave out), is not taken. ``accepted``
    sees each row taken, in order (to refuse a later duplicate of it).
    """
    header, rows = table
    names, problem = _check_header(header, required, optional)
    if problem is not None:
        return [], [problem]
    out: list[_Row] = []
    errors: list[RowError] = []
    for line, values in rows:
        row_errors: list[RowError] = []
        row = parse_row(line, _record(names, values), row_errors)
        if row_errors or row is None:
            errors.extend(row_errors)
            continue
        accepted(row)
        out.append(row)
    return out, errors


def _record(names: list[str], values: list[Any]) -> dict[str, Any]:
    return {name: values[i] if i < len(values) else None for i, name in enumerate(names)}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _shown(value: Any) -> str:
    return repr(value if isinstance(value, str) else _text(value))


def _gtin(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    text = _text(value)
    if not text.isascii() or not text.isdigit() or len(text) > 14:
        return None
    gtin = text.zfill(14)
    return gtin if is_valid_gtin(gtin) else None


def _fen(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    text = _text(value)
    return int(text) if text.isascii() and text.isdigit() else None


def _bool(value: Any, default: bool | None) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = _text(value).lower()
    if not text:
        return default
    return _BOOL.get(text)
