"""The hospital's item dictionary (商品字典): import from CSV with row-level errors.

Columns: gtin, item_code, charge_code, name, spec, manufacturer, price_fen,
chargeable, high_value. Prices are integer fen; zero mark-up means the charge
equals this purchase price. A bad row is reported with its line number and
reason; good rows are imported.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from device.udi.gs1 import is_valid_gtin

COLUMNS = ("gtin", "item_code", "charge_code", "name", "spec", "manufacturer", "price_fen", "chargeable", "high_value")
_BOOL = {"1": True, "true": True, "yes": True, "y": True, "0": False, "false": False, "no": False, "n": False}


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    reason: str


CatalogRow = tuple[str, str, str, str, str, str, int, int, int]


def parse_catalog_csv(text: str) -> tuple[list[CatalogRow], list[RowError]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        return [], [RowError(1, ",".join(missing), "missing columns")]
    unknown = [c for c in reader.fieldnames or [] if c not in COLUMNS]
    if unknown:
        return [], [RowError(1, ",".join(unknown), "unknown columns")]
    rows: list[CatalogRow] = []
    errors: list[RowError] = []
    seen: set[str] = set()
    for line_no, rec in enumerate(reader, start=2):
        err = _row_error(rec, seen)
        if err:
            errors.append(RowError(line_no, *err))
            continue
        gtin = rec["gtin"].strip().zfill(14)
        seen.add(gtin)
        rows.append((
            gtin, rec["item_code"].strip(), rec["charge_code"].strip(), rec["name"].strip(), rec["spec"].strip(),
            rec["manufacturer"].strip(), int(rec["price_fen"]), int(_BOOL[rec["chargeable"].strip().lower()]),
            int(_BOOL[rec["high_value"].strip().lower()]),
        ))
    return rows, errors


def _row_error(rec: dict[str, str], seen: set[str]) -> tuple[str, str] | None:
    gtin = (rec.get("gtin") or "").strip().zfill(14)
    if not gtin.isdigit() or len(gtin) != 14 or not is_valid_gtin(gtin):
        return ("gtin", f"not a valid GTIN: {rec.get('gtin')!r}")
    if gtin in seen:
        return ("gtin", f"duplicate GTIN {gtin}")
    for col in ("item_code", "charge_code", "name"):
        if not (rec.get(col) or "").strip():
            return (col, "empty")
    price = (rec.get("price_fen") or "").strip()
    if not price.isdigit():
        return ("price_fen", f"price must be a non-negative integer number of fen, got {price!r}")
    for col in ("chargeable", "high_value"):
        if (rec.get(col) or "").strip().lower() not in _BOOL:
            return (col, f"expected 1/0/true/false, got {rec.get(col)!r}")
    return None


def read_catalog_file(path: Path) -> tuple[list[CatalogRow], list[RowError]]:
    return parse_catalog_csv(path.read_text(encoding="utf-8"))


def write_catalog_csv(rows: list[CatalogRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(rows)
    return out.getvalue()
