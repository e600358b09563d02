"""Item and patient barcodes: GS1 and HIBC UDI parsing, and hospital wristband formats."""

from __future__ import annotations

import datetime as dt

from device.udi.gs1 import (
    DEFAULT_GS_ALIASES,
    GS,
    Gs1Error,
    Gs1Reason,
    Udi,
    gtin_check_digit,
    parse_gs1,
    to_element_string,
    to_human_readable,
)
from device.udi.hibc import HibcCode, HibcError, HibcReason, hibc_check_character, parse_hibc
from device.udi.wristband import (
    DEFAULT_WRISTBAND_FORMAT,
    CheckRule,
    Wristband,
    WristbandError,
    WristbandFormat,
    WristbandReason,
    parse_wristband,
)

__all__ = [
    "DEFAULT_GS_ALIASES",
    "DEFAULT_WRISTBAND_FORMAT",
    "GS",
    "CheckRule",
    "Gs1Error",
    "Gs1Reason",
    "HibcCode",
    "HibcError",
    "HibcReason",
    "Udi",
    "Wristband",
    "WristbandError",
    "WristbandFormat",
    "WristbandReason",
    "gtin_check_digit",
    "hibc_check_character",
    "parse_gs1",
    "parse_hibc",
    "parse_udi",
    "parse_wristband",
    "to_element_string",
    "to_human_readable",
]


def _is_hibc(text: str) -> bool:
    data = text.lstrip(" \t\r\n")
    if data.startswith("]"):
        data = data[3:]
    return data.startswith(("+", "*+"))


def parse_udi(text: str, *, today: dt.date | None = None) -> Udi | HibcCode:
    """Parse an item's barcode: HIBC when its data starts with the ``+`` flag, GS1 otherwise.

    Raises :class:`Gs1Error` or :class:`HibcError` (both ``ValueError``) with a ``reason``.
    """
    if _is_hibc(text):
        return parse_hibc(text, today=today)
    return parse_gs1(text, today=today)
