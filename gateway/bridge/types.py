"""Value types of the charging bridge: events, catalog, configuration, outcomes and errors."""

from __future__ import annotations

import enum
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

EventTuple = tuple[str, int, int, str, str, str, str]
"""(device, seq, ts_ms, admission, udi, operator, dept) — one wristband + item scan."""

MAX_SEQ = 9_999_999_999
"""Largest event sequence number: the charge id carries it as 10 digits."""

MAX_LOCAL_MS = 253_402_300_800_000
"""Scan times (in local time) must be before 10000-01-01T00:00 so that years have 4 digits."""


MAX_CREDIT_FEN = 999_999_999_999_999
"""Largest amount a credit carries, in fen (the compiled renderer formats it in 64-bit arithmetic)."""


class CreditRequest(NamedTuple):
    """An item given back unused after it was charged: the return event and the charge it reverses.

    ``device``/``seq``/``ts_ms``/``operator``/``dept`` are the return event's; the credit id is derived
    from ``device`` and ``seq`` exactly as a charge id is from a consumption event. The rest is copied
    from the original charge line (``expiry`` as ``YYYY-MM-DD`` or ``""``), so the credit reverses
    exactly what was charged even if the catalog changed since.
    """

    device: str
    seq: int
    ts_ms: int
    operator: str
    dept: str
    original_charge_id: str
    admission: str
    gtin: str
    lot: str
    serial: str
    expiry: str
    item_code: str
    charge_code: str
    name: str
    spec: str
    manufacturer: str
    price_fen: int


class BridgeError(Exception):
    """Root of the charging bridge's errors; ``reason`` is a stable code."""

    reason = "bridge_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class CatalogError(BridgeError, ValueError):
    """A catalog item or the catalog as a whole is invalid."""

    reason = "bad_catalog"


class ConfigError(BridgeError, ValueError):
    """A bridge configuration value is invalid."""

    reason = "bad_config"


class ItemKeyError(BridgeError, ValueError):
    """A consumed-item key is not ``"<14 digits>/<serial>"`` with a GS1 AI 21 serial."""

    reason = "bad_item_key"


GS1_CSET82 = frozenset("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
"""GS1 AI encodable character set 82: the characters of a lot or serial."""

SERIAL_MAX = 20
"""AI 21 (serial) is X..20."""


def is_item_key(key: object) -> bool:
    """True for ``"<gtin>/<serial>"``: 14 ASCII digits, ``/``, 1..20 characters of GS1 set 82."""
    return (
        type(key) is str and 16 <= len(key) <= 15 + SERIAL_MAX and key[14] == "/"
        and key[:14].isascii() and key[:14].isdigit() and all(c in GS1_CSET82 for c in key[15:])
    )


class CreditRefused(BridgeError, ValueError):
    """A credit request cannot be rendered; ``reason`` is the :class:`RejectReason` value."""

    reason = "bad_event"


class UdiUnreadable(BridgeError, ValueError):
    """A UDI handed to :func:`gateway.bridge.read_item` is not one the bridge can read."""

    reason = "bad_udi"


class ItemFields(NamedTuple):
    """What identifies an item in its UDI; ``expiry`` as ``YYYY-MM-DD`` or ``""``."""

    gtin: str
    lot: str
    serial: str
    expiry: str


class ConsumedKeys(Protocol):
    """The set of charged item keys a bridge implementation keeps (its ``ConsumedSet``)."""

    def add(self, key: str) -> None: ...

    def discard(self, key: str) -> None: ...

    def copy(self) -> ConsumedKeys: ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[str]: ...


class RejectReason(enum.StrEnum):
    """Why an event produced no charge line; the status byte of the compact result is ``code``."""

    BAD_EVENT = "bad_event"
    MISSING_PATIENT = "missing_patient"
    BAD_UDI = "bad_udi"
    UNKNOWN_ITEM = "unknown_item"
    EXPIRED = "expired"
    NOT_CHARGEABLE = "not_chargeable"
    MISSING_SERIAL = "missing_serial"
    SERIAL_ALREADY_CONSUMED = "serial_already_consumed"

    @property
    def code(self) -> int:
        """The status byte used for this reason in :class:`CompactBatch` (0 means charged)."""
        return _REASON_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> RejectReason:
        """The reason for a non-zero status byte."""
        return _REASONS_BY_CODE[code]


_REASON_CODES: dict[RejectReason, int] = {reason: i + 1 for i, reason in enumerate(RejectReason)}
_REASONS_BY_CODE: dict[int, RejectReason] = {code: reason for reason, code in _REASON_CODES.items()}
STATUS_CHARGED = 0


def gtin_check_digit_ok(gtin: str) -> bool:
    """True when ``gtin`` is 14 ASCII digits whose last digit is the GS1 mod-10 check digit."""
    if len(gtin) != 14 or not gtin.isascii() or not gtin.isdigit():
        return False
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(gtin[:13]))
    return (10 - total % 10) % 10 == int(gtin[13])


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One purchasable item of the SPD catalog, keyed by its GTIN; prices in integer fen."""

    gtin: str
    item_code: str
    charge_code: str
    name: str
    spec: str
    manufacturer: str
    price_fen: int
    chargeable: bool
    high_value: bool

    def __post_init__(self) -> None:
        if not isinstance(self.gtin, str) or not gtin_check_digit_ok(self.gtin):
            raise CatalogError(f"GTIN {self.gtin!r} is not 14 digits with a valid check digit", reason="bad_gtin")
        for name in ("item_code", "charge_code", "name", "spec", "manufacturer"):
            if not isinstance(getattr(self, name), str):
                raise CatalogError(f"{name} of {self.gtin} must be a str", reason="bad_field")
        if type(self.price_fen) is not int or self.price_fen < 0:
            raise CatalogError(f"price_fen of {self.gtin} must be a non-negative int", reason="bad_price")
        if type(self.chargeable) is not bool or type(self.high_value) is not bool:
            raise CatalogError(f"chargeable/high_value of {self.gtin} must be bool", reason="bad_field")
        if self.chargeable and not self.charge_code:
            raise CatalogError(f"chargeable item {self.gtin} has no charge code", reason="missing_charge_code")


class Catalog:
    """An immutable set of catalog items, looked up by GTIN.

    Implementations may keep a prepared form of the catalog in ``native_cache``
    (one entry per implementation); the items themselves never change.
    """

    __slots__ = ("_items", "native_cache")

    def __init__(self, items: Iterable[CatalogItem]) -> None:
        by_gtin: dict[str, CatalogItem] = {}
        for item in items:
            if not isinstance(item, CatalogItem):
                raise CatalogError(f"catalog entries must be CatalogItem, not {type(item).__name__}")
            if item.gtin in by_gtin:
                raise CatalogError(f"GTIN {item.gtin} appears twice in the catalog", reason="duplicate_gtin")
            by_gtin[item.gtin] = item
        self._items = by_gtin
        self.native_cache: dict[str, Any] = {}

    def get(self, gtin: str) -> CatalogItem | None:
        """The item with this GTIN, or None."""
        return self._items.get(gtin)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[CatalogItem]:
        return iter(self._items.values())

    def __contains__(self, gtin: object) -> bool:
        return gtin in self._items


MAX_UTC_OFFSET_MINUTES = 14 * 60


def utc_offset_ms(config: BridgeConfig) -> int:
    """The configured UTC offset in ms; ConfigError unless it is an int within ±14 h.

    Checked when a configuration is made and again by each batch (a frozen dataclass can still be
    changed with ``object.__setattr__``): the compiled bridge does its time arithmetic in 64 bits and
    relies on the bound.
    """
    minutes = config.utc_offset_minutes
    if type(minutes) is not int or not -MAX_UTC_OFFSET_MINUTES <= minutes <= MAX_UTC_OFFSET_MINUTES:
        raise ConfigError("utc_offset_minutes must be an int within ±840", reason="bad_utc_offset")
    return minutes * 60_000


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """Who sends and receives the HL7 messages, and the local time zone of the hospital."""

    sending_app: str = "SPD-EDGE"
    sending_facility: str = ""
    receiving_app: str = "HIS"
    receiving_facility: str = ""
    utc_offset_minutes: int = 480
    processing_id: str = "P"

    def __post_init__(self) -> None:
        for name in ("sending_app", "sending_facility", "receiving_app", "receiving_facility"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a str")
        utc_offset_ms(self)
        if self.processing_id not in ("P", "T", "D"):
            raise ConfigError("processing_id must be P, T or D", reason="bad_processing_id")


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One accepted consumption: a charge at purchase price, with its HL7 DFT^P03 message."""

    charge_id: str
    device: str
    seq: int
    ts_ms: int
    admission: str
    gtin: str
    lot: str
    serial: str
    expiry: str
    item_code: str
    charge_code: str
    name: str
    price_fen: int
    qty: int
    operator: str
    dept: str
    message: str


@dataclass(frozen=True, slots=True)
class ChargeReject:
    """An event that produced no charge, with the reason code and a human detail."""

    device: str
    seq: int
    reason: RejectReason
    detail: str


@dataclass(slots=True)
class BatchResult:
    """The outcome of one batch: charge lines, refused events, and non-chargeable consumptions."""

    lines: list[ChargeLine] = field(default_factory=list)
    rejects: list[ChargeReject] = field(default_factory=list)
    uncharged: list[ChargeReject] = field(default_factory=list)


class CompactBatch(NamedTuple):
    """The hot path's result, a handful of objects per batch instead of per event.

    - ``status``: one byte per event, 0 = charged, else ``RejectReason.code``.
    - ``messages``: the UTF-8 HL7 messages of the charged events, concatenated in event order.
    - ``ends``: end offset in ``messages`` of each charged event's message.
    - ``udi``: per charged event, ``gtin`` (14 bytes) + expiry ``YYYYMMDD`` (``00000000`` when
      absent) + lot length (1 byte) + lot + serial length (1 byte) + serial.
    - ``details``: one human detail per non-zero status, in event order.
    """

    status: bytes
    messages: bytes
    ends: array[int]
    udi: bytes
    details: list[str]
