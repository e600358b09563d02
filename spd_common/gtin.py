"""The GTIN check digit (GS1 mod 10): the device's code parsers and the gateway's catalog import use this one."""

from __future__ import annotations


def check_digit(body: str) -> int:
    """The GS1 mod-10 check digit for ``body`` (every digit of a GTIN/SSCC/GLN except the last)."""
    if not body or not body.isascii() or not body.isdigit():
        raise ValueError(f"check digit needs digits only, got {body!r}")
    total = 0
    weight = 3
    for ch in reversed(body):
        total += (ord(ch) - 48) * weight
        weight = 4 - weight
    return (10 - total % 10) % 10


def is_valid_gtin(gtin: str) -> bool:
    """True for an 8, 12, 13 or 14 digit GTIN whose check digit is right."""
    if len(gtin) not in (8, 12, 13, 14) or not gtin.isascii() or not gtin.isdigit():
        return False
    return check_digit(gtin[:-1]) == ord(gtin[-1]) - 48
