"""HIBC LIC codes (ANSI/HIBC 2.x Supplier Labeling Standard) parsed into a :class:`HibcCode`.

Handles the primary data structure (``+`` LIC, product/catalog number, unit of
measure, mod-43 check character), the secondary data structure (``$``, ``$+``,
``$$``, ``$$+`` with quantity and date formats 0-7, or the older 5-digit Julian
date), the supplemental fields ``/S`` serial, ``/14D`` expiry, ``/16D``
manufacture date and ``/Q`` quantity, the concatenated form ``primary/secondary``
with one check character, two linear symbols read back to back (the secondary's
link character must equal the primary's check character), and the caption form
``*...*`` where ``_`` stands for a space.

Dates given as month and year only (``MMYY``) are read as the last day of that
month, as GS1 reads day ``00``; hours (formats 4 and 6) are GMT.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

log = logging.getLogger(__name__)

MOD43_CHARSET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-. $/+%"
_MOD43_VALUE: Final = {ch: i for i, ch in enumerate(MOD43_CHARSET)}
_GS1_SYMBOLOGIES: Final = frozenset({"]C1", "]d2", "]Q3", "]e0", "]J1"})
_PRIMARY: Final = re.compile(r"([A-Z][A-Z0-9]{3})([A-Z0-9]{1,18})([0-9])")
_LOT: Final = re.compile(r"[A-Z0-9.\-]*")
_MAX_LOT: Final = 18
# Date format indicator -> (length of the date field, layout); "0"/"1" are the first digit of MMYY.
_DATE_FORMATS: Final = {
    "0": (4, "MMYY"), "1": (4, "MMYY"), "2": (6, "MMDDYY"), "3": (6, "YYMMDD"),
    "4": (8, "YYMMDDHH"), "5": (5, "YYJJJ"), "6": (7, "YYJJJHH"), "7": (0, ""),
}


class HibcReason(StrEnum):
    """Why a HIBC code was refused; the values are stable and safe to log or count."""

    EMPTY = "empty"
    NOT_HIBC = "not_hibc"
    ILLEGAL_CHARACTER = "illegal_character"
    BAD_CHECK_CHARACTER = "bad_check_character"
    BAD_LINK_CHARACTER = "bad_link_character"
    BAD_PRIMARY = "bad_primary"
    BAD_SECONDARY = "bad_secondary"
    BAD_DATE = "bad_date"
    BAD_QUANTITY = "bad_quantity"
    FIELD_TOO_LONG = "field_too_long"
    CONFLICTING_FIELD = "conflicting_field"


class HibcError(ValueError):
    """A HIBC code that cannot be used, with a stable ``reason``."""

    def __init__(self, reason: HibcReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HibcCode:
    """A parsed HIBC LIC code; primary fields are None for a secondary symbol read on its own."""

    lic: str | None = None
    product: str | None = None
    unit_of_measure: int | None = None
    lot: str | None = None
    serial: str | None = None
    expiry: dt.date | None = None
    expiry_time: dt.datetime | None = None
    production: dt.date | None = None
    quantity: int | None = None
    link: str | None = None
    symbology: str | None = None

    @property
    def gtin(self) -> str | None:
        """HIBC codes carry no GTIN."""
        return None

    @property
    def device_identifier(self) -> str | None:
        """The UDI-DI as registered (LIC + product + unit of measure, without flag and check character)."""
        if self.lic is None or self.product is None or self.unit_of_measure is None:
            return None
        return f"{self.lic}{self.product}{self.unit_of_measure}"

    @property
    def item_key(self) -> tuple[str | None, str | None]:
        """(device identifier, serial): the identity of one physical item."""
        return (self.device_identifier, self.serial)


def hibc_check_character(data: str) -> str:
    """The mod-43 check character over ``data`` (flag included, Code 39 asterisks excluded)."""
    try:
        total = sum(_MOD43_VALUE[ch] for ch in data)
    except KeyError as err:
        raise HibcError(HibcReason.ILLEGAL_CHARACTER, f"{err.args[0]!r} is not a HIBC character") from err
    return MOD43_CHARSET[total % 43]


def _verify_check(data: str) -> None:
    expected = hibc_check_character(data[:-1])
    if data[-1] != expected:
        raise HibcError(HibcReason.BAD_CHECK_CHARACTER,
                        f"check character should be {expected!r}, got {data[-1]!r}")


def _full_year(yy: int, today: dt.date) -> int:
    century = today.year - today.year % 100
    diff = yy - today.year % 100
    if diff > 50:
        return century - 100 + yy
    if diff < -49:
        return century + 100 + yy
    return century + yy


class _Fields:
    """Accumulates secondary fields and refuses contradictions."""

    def __init__(self) -> None:
        self.lot: str | None = None
        self.serial: str | None = None
        self.expiry: dt.date | None = None
        self.expiry_time: dt.datetime | None = None
        self.production: dt.date | None = None
        self.quantity: int | None = None

    def set(self, name: str, value: object) -> None:
        if value is None or value == "":
            return
        previous = getattr(self, name)
        if previous is None:
            setattr(self, name, value)
        elif previous != value:
            raise HibcError(HibcReason.CONFLICTING_FIELD, f"{name} given twice: {previous!r} and {value!r}")


def _digits(text: str, what: str, reason: HibcReason = HibcReason.BAD_DATE) -> int:
    if not text.isascii() or not text.isdigit():
        raise HibcError(reason, f"{what} {text!r} is not numeric")
    return int(text)


def _make_date(year: int, month: int, day: int, what: str) -> dt.date:
    try:
        return dt.date(year, month, day)
    except ValueError as err:
        raise HibcError(HibcReason.BAD_DATE, f"{what}: {err}") from err


def _decode_date(layout: str, text: str, today: dt.date) -> tuple[dt.date, dt.datetime | None]:
    _digits(text, layout)
    hour: int | None = None
    if layout == "MMYY":
        month, year = int(text[:2]), _full_year(int(text[2:]), today)
        if not 1 <= month <= 12:
            raise HibcError(HibcReason.BAD_DATE, f"MMYY {text}: month {month:02d} does not exist")
        date = dt.date(year, month, calendar.monthrange(year, month)[1])
    elif layout == "MMDDYY":
        date = _make_date(_full_year(int(text[4:]), today), int(text[:2]), int(text[2:4]), f"MMDDYY {text}")
    elif layout in ("YYMMDD", "YYMMDDHH"):
        date = _make_date(_full_year(int(text[:2]), today), int(text[2:4]), int(text[4:6]), f"{layout} {text}")
        hour = int(text[6:8]) if layout == "YYMMDDHH" else None
    else:  # YYJJJ, YYJJJHH
        year = _full_year(int(text[:2]), today)
        day_of_year = int(text[2:5])
        if not 1 <= day_of_year <= (366 if calendar.isleap(year) else 365):
            raise HibcError(HibcReason.BAD_DATE, f"{layout} {text}: day {day_of_year} does not exist in {year}")
        date = dt.date(year, 1, 1) + dt.timedelta(days=day_of_year - 1)
        hour = int(text[5:7]) if layout == "YYJJJHH" else None
    if hour is None:
        return date, None
    if hour > 23:
        raise HibcError(HibcReason.BAD_DATE, f"{layout} {text}: hour {hour} does not exist")
    return date, dt.datetime(date.year, date.month, date.day, hour, tzinfo=dt.UTC)


def _lot(text: str, what: str) -> str:
    if len(text) > _MAX_LOT:
        raise HibcError(HibcReason.FIELD_TOO_LONG, f"{what} {text!r} is longer than {_MAX_LOT} characters")
    if not _LOT.fullmatch(text):
        raise HibcError(HibcReason.ILLEGAL_CHARACTER, f"{what} {text!r} may hold only A-Z, 0-9, '-' and '.'")
    return text


def _parse_dollar_dollar(rest: str, lot_field: str, fields: _Fields, today: dt.date) -> None:
    """``$$`` / ``$$+``: optional quantity (8 + 2 digits, 9 + 5 digits), date format, then lot or serial."""
    if rest[:1] in ("8", "9"):
        width = 2 if rest[0] == "8" else 5
        qty = rest[1 : 1 + width]
        if len(qty) < width:
            raise HibcError(HibcReason.BAD_QUANTITY, f"quantity {qty!r} needs {width} digits")
        fields.set("quantity", _digits(qty, "quantity", HibcReason.BAD_QUANTITY))
        rest = rest[1 + width :]
    if not rest:
        return
    indicator = rest[0]
    if indicator not in _DATE_FORMATS:
        raise HibcError(HibcReason.BAD_SECONDARY, f"{indicator!r} is not a HIBC date format indicator")
    length, layout = _DATE_FORMATS[indicator]
    start = 0 if layout == "MMYY" else 1  # for MMYY the indicator is the month's first digit
    date_text = rest[start : start + length]
    if layout:
        if len(date_text) < length:
            raise HibcError(HibcReason.BAD_DATE, f"{layout} date {date_text!r} is truncated")
        expiry, expiry_time = _decode_date(layout, date_text, today)
        fields.set("expiry", expiry)
        fields.set("expiry_time", expiry_time)
    fields.set(lot_field, _lot(rest[start + length :], lot_field))


def _parse_segment(segment: str, fields: _Fields, today: dt.date) -> None:
    if segment.startswith("$$+"):
        _parse_dollar_dollar(segment[3:], "serial", fields, today)
    elif segment.startswith("$$"):
        _parse_dollar_dollar(segment[2:], "lot", fields, today)
    elif segment.startswith("$+"):
        fields.set("serial", _lot(segment[2:], "serial"))
    elif segment.startswith("$"):
        fields.set("lot", _lot(segment[1:], "lot"))
    elif segment.startswith(("14D", "16D")):
        text = segment[3:]
        if len(text) != 8:
            raise HibcError(HibcReason.BAD_DATE, f"{segment[:3]} date {text!r} must be YYYYMMDD")
        _digits(text, segment[:3])
        date = _make_date(int(text[:4]), int(text[4:6]), int(text[6:]), f"{segment[:3]} {text}")
        fields.set("expiry" if segment.startswith("14D") else "production", date)
    elif segment.startswith("S"):
        fields.set("serial", _lot(segment[1:], "serial"))
    elif segment.startswith("Q"):
        if not 1 <= len(segment) - 1 <= 5:
            raise HibcError(HibcReason.BAD_QUANTITY, f"quantity {segment[1:]!r} needs 1 to 5 digits")
        fields.set("quantity", _digits(segment[1:], "quantity", HibcReason.BAD_QUANTITY))
    elif segment[:1].isdigit():
        julian = segment[:5]
        if len(julian) < 5:
            raise HibcError(HibcReason.BAD_DATE, f"YYJJJ date {julian!r} is truncated")
        expiry, _ = _decode_date("YYJJJ", julian, today)
        fields.set("expiry", expiry)
        fields.set("lot", _lot(segment[5:], "lot"))
    else:
        raise HibcError(HibcReason.BAD_SECONDARY, f"secondary field {segment[:10]!r} is not a HIBC field")


def _parse_secondary(body: str, fields: _Fields, today: dt.date) -> None:
    for segment in body.split("/"):
        if not segment:
            raise HibcError(HibcReason.BAD_SECONDARY, "empty secondary field between '/' delimiters")
        _parse_segment(segment, fields, today)


def _parse_primary(body: str) -> tuple[str, str, int]:
    match = _PRIMARY.fullmatch(body)
    if match is None:
        raise HibcError(HibcReason.BAD_PRIMARY,
                        f"primary {body!r} is not LIC (letter + 3 alphanumerics), product (1-18 A-Z/0-9), unit digit")
    return match.group(1), match.group(2), int(match.group(3))


def _normalise(text: str) -> tuple[str | None, str]:
    data = text.lstrip(" \t\r\n").rstrip("\r\n\t")  # never strip spaces at the end: a check character may be one
    symbology: str | None = None
    if data.startswith("]"):
        symbology, data = data[:3], data[3:]
        if symbology in _GS1_SYMBOLOGIES:
            raise HibcError(HibcReason.NOT_HIBC, f"symbology {symbology!r} carries GS1 data, not HIBC")
    if len(data) > 2 and data.startswith("*") and data.endswith("*"):
        data = data[1:-1].replace("_", " ")  # caption form
    return symbology, data


def _secondary_start(data: str) -> int:
    """Where a second linear symbol (a secondary) starts in two symbols read back to back, or -1."""
    for i in range(2, len(data) - 1):
        if data[i] == "+" and data[i + 1] in "$0123456789":
            return i
    return -1


def parse_hibc(text: str, *, today: dt.date | None = None) -> HibcCode:
    """Parse one scan of a HIBC LIC code; ``today`` fixes the century of two-digit years."""
    today = today or dt.date.today()
    symbology, data = _normalise(text)
    if not data.strip():
        raise HibcError(HibcReason.EMPTY, "the scan holds no data")
    if not data.startswith("+"):
        raise HibcError(HibcReason.NOT_HIBC, f"{data[:10]!r} does not start with the HIBC flag '+'")
    bad = next((ch for ch in data if ch not in _MOD43_VALUE), None)
    if bad is not None:
        raise HibcError(HibcReason.ILLEGAL_CHARACTER, f"{bad!r} is not a HIBC character")
    if len(data) < 3:
        raise HibcError(HibcReason.BAD_PRIMARY, f"{data!r} is too short for a HIBC code")

    fields = _Fields()
    lic = product = None
    unit: int | None = None
    link: str | None = None
    if data[1].isalpha():
        split = _secondary_start(data)
        if split > 0 and "/" in data[: split - 1]:
            split = -1  # that '+' belongs to a concatenated secondary ($$+ or $+)
        if split < 0:  # one symbol: primary alone, or primary/secondary concatenated
            _verify_check(data)
            primary, _, secondary = data[1:-1].partition("/")
            lic, product, unit = _parse_primary(primary)
            if secondary:
                _parse_secondary(secondary, fields, today)
            else:
                link = data[-1]
        else:  # two linear symbols read back to back
            primary_data, secondary_data = data[:split], data[split:]
            _verify_check(primary_data)
            lic, product, unit = _parse_primary(primary_data[1:-1])
            link = primary_data[-1]
            _verify_check(secondary_data)
            if len(secondary_data) < 4 or secondary_data[-2] != link:
                got = secondary_data[-2] if len(secondary_data) >= 4 else ""
                raise HibcError(HibcReason.BAD_LINK_CHARACTER,
                                f"secondary link character {got!r} does not match primary check {link!r}")
            _parse_secondary(secondary_data[1:-2], fields, today)
    elif data[1] == "$" or data[1].isdigit():  # a secondary symbol on its own
        if len(data) < 4:
            raise HibcError(HibcReason.BAD_SECONDARY, f"{data!r} is too short for a HIBC secondary")
        _verify_check(data)
        link = data[-2]
        _parse_secondary(data[1:-2], fields, today)
    else:
        raise HibcError(HibcReason.NOT_HIBC, f"{data[:10]!r} is not a HIBC supplier labeling code")

    return HibcCode(
        lic=lic,
        product=product,
        unit_of_measure=unit,
        lot=fields.lot,
        serial=fields.serial,
        expiry=fields.expiry,
        expiry_time=fields.expiry_time,
        production=fields.production,
        quantity=fields.quantity,
        link=link,
        symbology=symbology,
    )
