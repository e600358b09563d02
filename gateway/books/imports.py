"""The books' import files (CSV or XLSX, by extension), parsed by :func:`gateway.catalog.parse_table`: every bad
row reported with its line, column and reason.

* receipts and restocks (``spd-gateway stock receipt-import``): ``ref`` (the delivery or restock note),
  ``kind`` (``receipt``: into the operator's store; ``restock``: from the operator's store to a location),
  ``location`` (for a restock: a cabinet id or ``dept:<code>``), ``gtin``, ``qty``; optional ``lot``,
  ``serial``, ``expiry`` (``YYYY-MM-DD``), ``at`` (``YYYY-MM-DD[THH:MM]``, default now). A note is recorded
  once: importing it again changes nothing.
* a stock-take (``spd-gateway stock count-import``): ``location``, ``gtin``, ``counted``; optional ``lot``,
  ``serial``. Every location in the file is one count of the whole location: an item the ledger expects
  there and the file does not list was counted 0.
* par levels (``spd-gateway replenish par-import``): ``location``, ``gtin``, ``par``.
* routes (``spd-gateway replenish route-import``): ``route``, ``location``; optional ``stop`` (walking
  order, default the row order).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.catalog import RowError, _gtin, _shown, _text, parse_table, read_table

R = TypeVar("R")
LOCAL = dt.timezone(dt.timedelta(hours=8))  # the hospital's clock for dates without a zone


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    ref: str
    kind: str  # receipt | restock
    location: str
    gtin: str
    lot: str
    serial: str
    qty: int
    expiry: str
    at_ms: int | None


@dataclass(frozen=True, slots=True)
class CountedLine:
    location: str
    gtin: str
    lot: str
    serial: str
    counted: int


@dataclass(frozen=True, slots=True)
class ParLine:
    location: str
    gtin: str
    par: int


@dataclass(frozen=True, slots=True)
class RouteLine:
    route: str
    location: str
    stop: int


def _int(value: Any, *, minimum: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return value if value >= minimum else None
    text = _text(value)
    try:
        n = int(text)
    except ValueError:
        return None
    return n if n >= minimum else None


def _date_text(value: Any) -> str | None:
    if value is None or _text(value) == "":
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(_text(value)).isoformat()
    except ValueError:
        return None


def parse_time_ms(value: Any) -> int | None:
    """A date or date-time cell (hospital time unless it names a zone) as epoch ms; None when not one."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            when = dt.datetime.fromisoformat(_text(value))
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=LOCAL)
    return int(when.timestamp() * 1000)


def _parse(path: Path, required: tuple[str, ...], optional: tuple[str, ...],
           row: Callable[[int, dict[str, Any], list[RowError]], R | None],
           key: Callable[[R], tuple[Any, ...]] | None = None) -> tuple[list[R], list[RowError]]:
    seen: set[tuple[Any, ...]] = set()

    def checked(line: int, rec: dict[str, Any], errors: list[RowError]) -> R | None:
        got = row(line, rec, errors)
        if got is not None and key is not None and key(got) in seen:
            errors.append(RowError(line, required[0], f"listed twice: {', '.join(map(str, key(got)))}"))
            return None
        return got

    def accepted(r: R) -> None:
        if key is not None:
            seen.add(key(r))

    return parse_table(read_table(path), required, optional, checked, accepted=accepted)


def _gtin_of(line: int, rec: dict[str, Any], errors: list[RowError]) -> str:
    gtin = _gtin(rec.get("gtin"))
    if gtin is None:
        errors.append(RowError(line, "gtin", f"not a valid GTIN: {_shown(rec.get('gtin'))}"))
        return ""
    return gtin


def _location_of(line: int, rec: dict[str, Any], errors: list[RowError]) -> str:
    loc = _text(rec.get("location"))
    if not loc or any(c.isspace() for c in loc):
        errors.append(RowError(line, "location", f"a cabinet id or dept:<code> is needed, got {_shown(loc)}"))
    return loc


def read_receipts(path: Path) -> tuple[list[ReceiptLine], list[RowError]]:
    def row(line: int, rec: dict[str, Any], errors: list[RowError]) -> ReceiptLine | None:
        ref = _text(rec.get("ref"))
        if not ref:
            errors.append(RowError(line, "ref", "the delivery or restock note number is needed"))
        kind = _text(rec.get("kind")).lower()
        if kind not in ("receipt", "restock"):
            errors.append(RowError(line, "kind", f"receipt or restock, got {_shown(rec.get('kind'))}"))
        location = _text(rec.get("location"))
        if kind == "receipt":
            location = location or "operator"
        elif kind == "restock":
            location = _location_of(line, rec, errors)
            if location == "operator":
                errors.append(RowError(line, "location", "a restock goes to a cabinet or dept:<code>"))
        gtin = _gtin_of(line, rec, errors)
        qty = _int(rec.get("qty"), minimum=1)
        if qty is None:
            errors.append(RowError(line, "qty", f"a positive whole number, got {_shown(rec.get('qty'))}"))
        serial = _text(rec.get("serial"))
        if serial and qty not in (None, 1):
            errors.append(RowError(line, "qty", "a serialised item is one unit"))
        expiry = _date_text(rec.get("expiry"))
        if expiry is None:
            errors.append(RowError(line, "expiry", f"not a date (YYYY-MM-DD): {_shown(rec.get('expiry'))}"))
        at_ms = None
        if _text(rec.get("at")):
            at_ms = parse_time_ms(rec.get("at"))
            if at_ms is None:
                errors.append(RowError(line, "at", f"not a date or time: {_shown(rec.get('at'))}"))
        if errors or qty is None or expiry is None:
            return None
        return ReceiptLine(ref, kind, location, gtin, _text(rec.get("lot")), serial, qty, expiry, at_ms)

    return _parse(path, ("ref", "kind", "location", "gtin", "qty"), ("lot", "serial", "expiry", "at"), row,
                  key=lambda r: (r.ref, r.kind, r.location, r.gtin, r.lot, r.serial))


def read_count(path: Path) -> tuple[list[CountedLine], list[RowError]]:
    def row(line: int, rec: dict[str, Any], errors: list[RowError]) -> CountedLine | None:
        location = _location_of(line, rec, errors)
        gtin = _gtin_of(line, rec, errors)
        counted = _int(rec.get("counted"), minimum=0)
        if counted is None:
            errors.append(RowError(line, "counted", f"a whole number, 0 or more, got {_shown(rec.get('counted'))}"))
        serial = _text(rec.get("serial"))
        if serial and counted not in (None, 0, 1):
            errors.append(RowError(line, "counted", "a serialised item is there (1) or not (0)"))
        if errors or counted is None:
            return None
        return CountedLine(location, gtin, _text(rec.get("lot")), serial, counted)

    return _parse(path, ("location", "gtin", "counted"), ("lot", "serial"), row,
                  key=lambda r: (r.location, r.gtin, r.serial or r.lot, bool(r.serial)))


def read_par_levels(path: Path) -> tuple[list[ParLine], list[RowError]]:
    def row(line: int, rec: dict[str, Any], errors: list[RowError]) -> ParLine | None:
        location = _location_of(line, rec, errors)
        gtin = _gtin_of(line, rec, errors)
        par = _int(rec.get("par"), minimum=0)
        if par is None:
            errors.append(RowError(line, "par", f"a whole number, 0 or more, got {_shown(rec.get('par'))}"))
        if errors or par is None:
            return None
        return ParLine(location, gtin, par)

    return _parse(path, ("location", "gtin", "par"), (), row, key=lambda r: (r.location, r.gtin))


def read_routes(path: Path) -> tuple[list[RouteLine], list[RowError]]:
    def row(line: int, rec: dict[str, Any], errors: list[RowError]) -> RouteLine | None:
        route = _text(rec.get("route"))
        if not route:
            errors.append(RowError(line, "route", "a route name is needed"))
        location = _location_of(line, rec, errors)
        stop = line if not _text(rec.get("stop")) else _int(rec.get("stop"), minimum=0)
        if stop is None:
            errors.append(RowError(line, "stop", f"a whole number, got {_shown(rec.get('stop'))}"))
        if errors or stop is None:
            return None
        return RouteLine(route, location, stop)

    return _parse(path, ("route", "location"), ("stop",), row, key=lambda r: (r.route, r.location))
