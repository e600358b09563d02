"""SGTIN-96 EPCs (GS1 EPC Tag Data Standard): decode a tag's EPC to the GTIN + serial a UDI scan gives, and encode one.

Bit layout of the 96-bit binary encoding (TDS §14.5.1)::

    header 8 (0x30) | filter 3 | partition 3 | company prefix M | item reference N | serial 38

The partition value fixes how the 44 bits after it are split between the GS1
Company Prefix and the item reference (whose first digit is the GTIN's
indicator digit):

    partition  prefix bits/digits  item-ref bits/digits
        0           40 / 12              4 / 1
        1           37 / 11              7 / 2
        2           34 / 10             10 / 3
        3           30 / 9              14 / 4
        4           27 / 8              17 / 5
        5           24 / 7              20 / 6
        6           20 / 6              24 / 7

GTIN-14 = indicator digit + company prefix + rest of the item reference + check
digit. The serial is an integer below 2^38; as an AI (21) value it is written in
decimal without leading zeros, so a UDI serial of ``"000123"`` can never equal an
SGTIN-96 serial (such items need SGTIN-198, which this module refuses by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from device.udi.gs1 import gtin_check_digit
from spd_common.gtin import is_valid_gtin

SGTIN96_HEADER: Final = 0x30
SGTIN198_HEADER: Final = 0x36
MAX_SERIAL: Final = (1 << 38) - 1
_PARTITIONS: Final = {  # partition -> (prefix bits, prefix digits, item-ref bits, item-ref digits)
    0: (40, 12, 4, 1),
    1: (37, 11, 7, 2),
    2: (34, 10, 10, 3),
    3: (30, 9, 14, 4),
    4: (27, 8, 17, 5),
    5: (24, 7, 20, 6),
    6: (20, 6, 24, 7),
}


class EpcReason(StrEnum):
    BAD_HEX = "bad_hex"
    BAD_LENGTH = "bad_length"
    NOT_SGTIN96 = "not_sgtin96"
    BAD_PARTITION = "bad_partition"
    FIELD_OVERFLOW = "field_overflow"
    BAD_GTIN = "bad_gtin"
    BAD_SERIAL = "bad_serial"


class EpcError(ValueError):
    """An EPC that is not a valid SGTIN-96, or a GTIN/serial that cannot be one; ``reason`` says which."""

    def __init__(self, reason: EpcReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Sgtin:
    """A decoded SGTIN: the item identity shared with the UDI's (01) GTIN and (21) serial."""

    gtin: str
    serial: str
    filter: int
    company_prefix: str
    item_reference: str

    @property
    def item_key(self) -> tuple[str, str]:
        """(GTIN, serial), the same key as :attr:`device.udi.Udi.item_key`."""
        return (self.gtin, self.serial)

    @property
    def pure_identity_uri(self) -> str:
        return f"urn:epc:id:sgtin:{self.company_prefix}.{self.item_reference}.{self.serial}"


def decode_sgtin96(epc_hex: str) -> Sgtin:
    """Decode 24 hex digits (any case) of an SGTIN-96 EPC."""
    text = epc_hex.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise EpcError(EpcReason.BAD_HEX, f"{text[:40]!r} is not hexadecimal") from None
    if raw and raw[0] == SGTIN198_HEADER:
        raise EpcError(EpcReason.NOT_SGTIN96, "SGTIN-198 (alphanumeric serial) is not supported")
    if len(raw) != 12:
        raise EpcError(EpcReason.BAD_LENGTH, f"an SGTIN-96 has 12 bytes, got {len(raw)}")
    if raw[0] != SGTIN96_HEADER:
        raise EpcError(EpcReason.NOT_SGTIN96, f"header 0x{raw[0]:02X} is not SGTIN-96 (0x30)")
    value = int.from_bytes(raw, "big")
    filter_value = (value >> 85) & 0x7
    partition = (value >> 82) & 0x7
    if partition not in _PARTITIONS:
        raise EpcError(EpcReason.BAD_PARTITION, f"partition value {partition} is reserved")
    cp_bits, cp_digits, ir_bits, ir_digits = _PARTITIONS[partition]
    company = (value >> (38 + ir_bits)) & ((1 << cp_bits) - 1)
    item_ref = (value >> 38) & ((1 << ir_bits) - 1)
    serial = value & MAX_SERIAL
    if company >= 10**cp_digits or item_ref >= 10**ir_digits:
        raise EpcError(EpcReason.FIELD_OVERFLOW, f"company prefix or item reference exceeds its {cp_digits}/"
                       f"{ir_digits} digits")
    cp_text = f"{company:0{cp_digits}d}"
    ir_text = f"{item_ref:0{ir_digits}d}"
    body = ir_text[0] + cp_text + ir_text[1:]
    gtin = body + str(gtin_check_digit(body))
    return Sgtin(gtin, str(serial), filter_value, cp_text, ir_text)


def encode_sgtin96(gtin: str, serial: str | int, *, company_prefix_digits: int, filter_value: int = 1) -> str:
    """The EPC (24 upper-case hex digits) of one item; filter 1 is "point of sale trade item"."""
    if not is_valid_gtin(gtin) or len(gtin) != 14:
        raise EpcError(EpcReason.BAD_GTIN, f"{gtin!r} is not a valid GTIN-14")
    part = next((p for p, spec in _PARTITIONS.items() if spec[1] == company_prefix_digits), None)
    if part is None:
        raise EpcError(EpcReason.BAD_PARTITION, f"company prefix length must be 6-12, got {company_prefix_digits}")
    if not 0 <= filter_value <= 7:
        raise EpcError(EpcReason.FIELD_OVERFLOW, f"filter must be 0-7, got {filter_value}")
    serial_text = str(serial)
    if not serial_text.isdigit() or (len(serial_text) > 1 and serial_text[0] == "0") or int(serial_text) > MAX_SERIAL:
        raise EpcError(EpcReason.BAD_SERIAL, f"SGTIN-96 serial must be a decimal integer 0..{MAX_SERIAL} "
                       f"without leading zeros, got {serial_text!r}")
    cp_bits, cp_digits, ir_bits, _ = _PARTITIONS[part]
    company = int(gtin[1 : 1 + cp_digits])
    item_ref = int(gtin[0] + gtin[1 + cp_digits : 13])
    value = SGTIN96_HEADER
    value = (value << 3) | filter_value
    value = (value << 3) | part
    value = (value << cp_bits) | company
    value = (value << ir_bits) | item_ref
    value = (value << 38) | int(serial_text)
    return f"{value:024X}"
