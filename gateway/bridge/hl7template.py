"""The DFT^P03 message template: the literal fragments both bridge implementations fill (escaping: gateway.hl7text)."""

from __future__ import annotations

import enum
import functools

from gateway.bridge.types import BridgeConfig, CatalogItem
from gateway.hl7text import escape


class Slot(enum.IntEnum):
    """A per-event value the renderer writes between two literal fragments of the template."""

    TIME = 1  # scan time, local, YYYYMMDDHHMMSS+ZZZZ
    CHARGE_ID = 2
    ADMISSION = 3  # escaped
    DEPT = 4  # escaped
    ITEM_FT1 = 5  # FT1-7..FT1-12, depends on the catalog item only
    OPERATOR = 6  # escaped
    GTIN = 7
    LOT = 8  # escaped
    SERIAL = 9  # escaped
    EXPIRY = 10  # YYYYMMDD or empty
    ITEM_ZUD = 11  # ZUD-6..ZUD-8, depends on the catalog item only
    DEVICE = 12  # escaped
    ORIGINAL_ID = 13  # credits: the charge id of the charge being credited (FT1-23)


_MARK = "\x00{}\x00"

def yuan(fen: int) -> str:
    """Integer fen as yuan with exactly two decimals, without floating point."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def utc_offset_suffix(minutes: int) -> str:
    """``+0800`` for 480 minutes, ``-0330`` for -210."""
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def _mark(slot: Slot) -> str:
    return _MARK.format(int(slot))


class TransactionType(enum.StrEnum):
    """FT1-6, HL7 table 0017: what the financial transaction does to the patient account."""

    CHARGE = "CG"
    CREDIT = "CD"


def _template_text(config: BridgeConfig, kind: TransactionType) -> str:
    def esc(value: str) -> str:
        return escape(value)

    time, cid = _mark(Slot.TIME), _mark(Slot.CHARGE_ID)
    adm, dept = _mark(Slot.ADMISSION), _mark(Slot.DEPT)
    pv1 = ["PV1", "1", "I", dept] + [""] * 15 + [adm]  # PV1-19 visit number
    ft1 = ["FT1", "1", cid, "", time, "", kind.value, _mark(Slot.ITEM_FT1), dept] + [""] * 6 + [_mark(Slot.OPERATOR)]
    if kind is TransactionType.CREDIT:
        ft1 += ["", "", _mark(Slot.ORIGINAL_ID)]  # FT1-23 filler order number: the charge credited
    zud = ["ZUD", "1", _mark(Slot.GTIN) + "^GS1", _mark(Slot.LOT), _mark(Slot.SERIAL), _mark(Slot.EXPIRY),
           _mark(Slot.ITEM_ZUD), _mark(Slot.DEVICE)]
    segments = [
        ["MSH", "^~\\&", esc(config.sending_app), esc(config.sending_facility), esc(config.receiving_app),
         esc(config.receiving_facility), time + utc_offset_suffix(config.utc_offset_minutes), "",
         "DFT^P03^DFT_P03", cid, config.processing_id, "2.5", "", "", "", "", "", "", "UNICODE UTF-8"],
        ["EVN", "P03", time + utc_offset_suffix(config.utc_offset_minutes)],
        ["PID", "1", "", f"{adm}^^^{esc(config.receiving_facility)}^MR", "", "^^^^^^U"],
        pv1,
        ft1,
        zud,
    ]
    # MSH-1 is the field separator itself: MSH + "|" + MSH-2 ...
    return "\r".join("|".join(seg) for seg in segments)


@functools.lru_cache(maxsize=64)
def message_template(config: BridgeConfig) -> tuple[tuple[bytes, ...], tuple[Slot, ...]]:
    """Literal fragments and the slots between them: ``frag[0] slot[0] frag[1] ... slot[-1] frag[-1]``.

    The scan time in FT1-4 carries no zone (a DR range start); MSH-7 and EVN-2 carry it.
    """
    return _split(_template_text(config, TransactionType.CHARGE))


@functools.lru_cache(maxsize=64)
def credit_template(config: BridgeConfig) -> tuple[tuple[bytes, ...], tuple[Slot, ...]]:
    """The DFT^P03 of a credit (FT1-6 ``CD``): the charge template plus FT1-23, the original charge id."""
    return _split(_template_text(config, TransactionType.CREDIT))


def _split(text: str) -> tuple[tuple[bytes, ...], tuple[Slot, ...]]:
    parts = text.split("\x00")
    fragments = tuple(p.encode("utf-8") for p in parts[0::2])
    slots = tuple(Slot(int(p)) for p in parts[1::2])
    return fragments, slots


def ft1_fragment(charge_code: str, name: str, price_fen: int) -> bytes:
    """FT1-7 charge code^name, FT1-8/9 empty, FT1-10 quantity 1, FT1-11/12 amounts at purchase price."""
    amount = f"{yuan(price_fen)}&CNY".encode("ascii")
    return b"".join([escape(charge_code).encode(), b"^", escape(name).encode(), b"|||1|", amount, b"|", amount])


def zud_fragment(item_code: str, spec: str, manufacturer: str) -> bytes:
    """ZUD-6 SPD item code, ZUD-7 spec, ZUD-8 manufacturer."""
    return b"|".join([escape(item_code).encode(), escape(spec).encode(), escape(manufacturer).encode()])


def item_ft1_fragment(item: CatalogItem) -> bytes:
    """:func:`ft1_fragment` of a catalog item."""
    return ft1_fragment(item.charge_code, item.name, item.price_fen)


def item_zud_fragment(item: CatalogItem) -> bytes:
    """:func:`zud_fragment` of a catalog item."""
    return zud_fragment(item.item_code, item.spec, item.manufacturer)
