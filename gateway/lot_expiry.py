"""Expiry dates of the lots in stock, from the SPD's receiving records: the device's expiry list.

A GS1 UDI carries its expiry date (AI 17) and the device checks it; many codes do not (a bare GTIN,
an HIBC label without expiry, a hospital's own label). For those the device looks the lot up in the
expiry list of its catalog document. ``spd-gateway expiry-import`` replaces the list from CSV or XLSX:
columns ``gtin``, ``lot``, ``expiry`` (``YYYY-MM-DD``, or a date cell), one row per lot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.catalog import RowError, Table, _gtin, _shown, _text, parse_table, read_table
from gateway.data.catalog import LotExpiryRow
from gateway.store import GatewayStore

EXPIRY_COLUMNS = ("gtin", "lot", "expiry")


@dataclass(frozen=True, slots=True)
class LotExpiry:
    gtin: str
    lot: str
    expiry: dt.date


def parse_expiry_table(table: Table) -> tuple[list[LotExpiry], list[RowError]]:
    seen: set[tuple[str, str]] = set()

    def lot_expiry(line: int, rec: dict[str, Any], errors: list[RowError]) -> LotExpiry | None:
        gtin = _gtin(rec.get("gtin"))
        if gtin is None:
            errors.append(RowError(line, "gtin", f"not a valid GTIN: {_shown(rec.get('gtin'))}"))
        lot = _text(rec.get("lot"))
        if not lot or lot == "*":
            errors.append(RowError(line, "lot", "a lot number is needed"))
        expiry = _date(rec.get("expiry"))
        if expiry is None:
            errors.append(RowError(line, "expiry", f"not a date (YYYY-MM-DD): {_shown(rec.get('expiry'))}"))
        if gtin is not None and (gtin, lot) in seen:
            errors.append(RowError(line, "lot", f"lot {lot} of {gtin} listed twice"))
        return None if gtin is None or expiry is None else LotExpiry(gtin, lot, expiry)

    return parse_table(table, EXPIRY_COLUMNS, (), lot_expiry, accepted=lambda e: seen.add((e.gtin, e.lot)))


def read_expiry_file(path: Path) -> tuple[list[LotExpiry], list[RowError]]:
    return parse_expiry_table(read_table(path))


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(_text(value))
    except ValueError:
        return None


def import_lot_expiry(store: GatewayStore, lots: Sequence[LotExpiry]) -> int:
    """Replace the expiry list."""
    store.catalog.replace_lot_expiry([LotExpiryRow(e.gtin, e.lot, e.expiry.isoformat()) for e in lots])
    return len(lots)


def load_lot_expiry(store: GatewayStore) -> list[LotExpiry]:
    return [LotExpiry(r.gtin, r.lot, dt.date.fromisoformat(r.expiry)) for r in store.catalog.lot_expiry()]
