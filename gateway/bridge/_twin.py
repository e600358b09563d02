"""Pure-Python twin of the compiled charging bridge: the readable reference, identical output on every input."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from gateway.bridge.hl7template import (
    Slot,
    credit_template,
    item_ft1_fragment,
    item_zud_fragment,
    message_template,
    yuan,
)
from gateway.bridge.types import (
    GS1_CSET82,
    MAX_CREDIT_FEN,
    MAX_LOCAL_MS,
    MAX_SEQ,
    SERIAL_MAX,
    BridgeConfig,
    Catalog,
    CatalogItem,
    CompactBatch,
    CreditRequest,
    ItemKeyError,
    RejectReason,
    gtin_check_digit_ok,
    is_item_key,
    utc_offset_ms,
)
from gateway.hl7text import escape_utf8 as escape

GS = 0x1D
SYMBOLOGY_IDENTIFIERS = (b"]d2", b"]C1", b"]Q3", b"]e0")
CSET82 = frozenset(b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
DIGITS = frozenset(b"0123456789")
BLANK = frozenset(b" \t\r\n")
_EPOCH = dt.datetime(1970, 1, 1)
_FIELDS = ("device", "seq", "ts_ms", "admission", "udi", "operator", "dept")
_DEVICE_ID_CACHE_LIMIT = 65_536


class ConsumedSet:
    """Item keys ``"<gtin>/<serial>"`` already charged: the twin of the compiled C hash set, a set wrapper."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys: set[str] = set()
        for key in keys:
            self.add(key)

    def add(self, key: str) -> None:
        """Add an item key; ItemKeyError when it is not ``"<14 digits>/<serial>"``."""
        if not is_item_key(key):
            raise ItemKeyError(f"not an item key: {key!r}")
        self._keys.add(key)

    def discard(self, key: str) -> None:
        """Remove an item key if present (an item given back unused and restocked)."""
        if is_item_key(key):  # anything else is in no set (an unhashable value included), as in the C set
            self._keys.discard(key)

    def copy(self) -> ConsumedSet:
        """An independent copy."""
        other = ConsumedSet()
        other._keys = set(self._keys)
        return other

    def __contains__(self, key: object) -> bool:
        return is_item_key(key) and key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._keys))

    def __repr__(self) -> str:
        return f"ConsumedSet({len(self)} keys)"


class AiSpec(NamedTuple):
    """How one recognised GS1 Application Identifier is laid out."""

    ai: str
    fixed: bool
    length: int  # exact length when fixed, maximum otherwise
    numeric: bool


_AI_SPECS = {
    spec.ai.encode("ascii"): spec
    for spec in (
        AiSpec("01", True, 14, True),
        AiSpec("10", False, 20, False),
        AiSpec("11", True, 6, True),
        AiSpec("17", True, 6, True),
        AiSpec("21", False, 20, False),
        AiSpec("240", False, 30, False),
        AiSpec("241", False, 30, False),
        AiSpec("30", False, 8, True),
        AiSpec("37", False, 8, True),
        AiSpec("7003", True, 10, True),
    )
}


class ParsedUdi(NamedTuple):
    """The fields of a UDI the bridge uses; ``expiry`` is a date or None."""

    gtin: bytes
    lot: bytes
    serial: bytes
    expiry: dt.date | None


class UdiRefused(Exception):
    """Internal signal: the UDI is malformed; the message is the reject detail."""


_device_ids: dict[str, str] = {}


def device_charge_prefix(device: str) -> str:
    """First 10 hex digits, upper-case, of sha256(device): the device part of a charge id."""
    prefix = _device_ids.get(device)
    if prefix is None:
        if len(_device_ids) >= _DEVICE_ID_CACHE_LIMIT:
            _device_ids.clear()
        prefix = hashlib.sha256(device.encode("utf-8")).hexdigest()[:10].upper()
        _device_ids[device] = prefix
    return prefix


def _full_year(yy: int, reference_year: int) -> int:
    """GS1 General Specifications 7.12: the century of a two-digit year relative to the reference year."""
    base = reference_year - reference_year % 100
    diff = yy - reference_year % 100
    if diff >= 51:
        return base - 100 + yy
    if diff <= -50:
        return base + 100 + yy
    return base + yy


def _gs1_date(value: bytes, reference_year: int) -> dt.date | None:
    """YYMMDD (day 00 = last day of the month) to a date, or None when it is no date."""
    year = _full_year(int(value[0:2]), reference_year)
    month, day = int(value[2:4]), int(value[4:6])
    if not 1 <= month <= 12 or year > 9999:
        return None
    last = calendar.monthrange(year, month)[1]
    if day > last:
        return None
    return dt.date(year, month, day or last)


def _check_digit_ok(gtin: bytes) -> bool:
    total = sum((d - 48) * (3 if i % 2 == 0 else 1) for i, d in enumerate(gtin[:13]))
    return (10 - total % 10) % 10 == gtin[13] - 48


def _check_value(spec: AiSpec, value: bytes, start: int) -> None:
    allowed = DIGITS if spec.numeric else CSET82
    if not spec.fixed and not value:
        raise UdiRefused(f"AI {spec.ai} empty at {start}")
    for i, byte in enumerate(value):
        if byte not in allowed:
            what = "non-numeric" if spec.numeric else "invalid character"
            raise UdiRefused(f"AI {spec.ai} {what} at {start + i}")
    if not spec.fixed and len(value) > spec.length:
        raise UdiRefused(f"AI {spec.ai} longer than {spec.length} at {start} (missing separator?)")


def _element_ai(udi: bytes, pos: int) -> AiSpec:
    head = udi[pos:pos + 2]
    if len(head) < 2 or head[0] not in DIGITS or head[1] not in DIGITS:
        raise UdiRefused(f"bad AI at {pos}")
    for candidate in (head, udi[pos:pos + 3], udi[pos:pos + 4]):
        spec = _AI_SPECS.get(candidate)
        if spec is not None:
            return spec
    raise UdiRefused(f"unsupported AI at {pos}")


def parse_udi(udi: bytes, reference_year: int) -> ParsedUdi:
    """Parse a GS1 element string (optionally with a symbology identifier) or its (AI)value form."""
    n = len(udi)
    pos = 0
    if udi[:1] == b"]":
        if udi[:3] not in SYMBOLOGY_IDENTIFIERS:
            raise UdiRefused("unsupported symbology identifier")
        pos = 3
    bracketed = pos == 0 and udi[:1] == b"("
    if not bracketed and pos < n and udi[pos] == GS:
        pos += 1
    if pos >= n:
        raise UdiRefused("empty UDI")
    values: dict[str, bytes] = {}
    reference = reference_year
    expiry: dt.date | None = None
    while pos < n:
        if bracketed:
            if udi[pos] != ord("("):
                raise UdiRefused(f"expected ( at {pos}")
            close = udi.find(b")", pos + 1, pos + 6)
            if close < 0:
                raise UdiRefused(f"unterminated AI at {pos}")
            found = _AI_SPECS.get(udi[pos + 1:close])
            if found is None:
                raise UdiRefused(f"unsupported AI at {pos}")
            spec = found
            if spec.ai in values:
                raise UdiRefused(f"duplicate AI {spec.ai} at {pos}")
            start = close + 1
            end = udi.find(b"(", start)
            end = n if end < 0 else end
            value = udi[start:end]
            if spec.fixed and len(value) != spec.length:
                raise UdiRefused(f"AI {spec.ai} wrong length at {start}")
            pos = end
        else:
            spec = _element_ai(udi, pos)
            if spec.ai in values:
                raise UdiRefused(f"duplicate AI {spec.ai} at {pos}")
            start = pos + len(spec.ai)
            if spec.fixed:
                end = start + spec.length
                if end > n:
                    raise UdiRefused(f"AI {spec.ai} truncated at {start}")
                value = udi[start:end]
                pos = end + 1 if end < n and udi[end] == GS else end
            else:
                end = udi.find(b"\x1d", start)
                end = n if end < 0 else end
                value = udi[start:end]
                pos = end + 1 if end < n else n
        _check_value(spec, value, start)
        if spec.ai == "01" and not _check_digit_ok(value):
            raise UdiRefused(f"GTIN check digit wrong at {start}")
        if spec.ai in ("11", "17"):
            date = _gs1_date(value, reference)
            if date is None:
                raise UdiRefused(f"AI {spec.ai} invalid date at {start}")
            if spec.ai == "17":
                expiry = date
        values[spec.ai] = value
    if "01" not in values:
        raise UdiRefused("no GTIN (AI 01)")
    return ParsedUdi(values["01"], values.get("10", b""), values.get("21", b""), expiry)


class _Event(NamedTuple):
    device: str
    seq: int
    ts_ms: int
    admission: bytes
    udi: bytes
    operator: bytes
    dept: bytes
    device_bytes: bytes


class EventRefused(Exception):
    """Internal signal: the event is refused; carries the reason and the detail."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _tuple_items(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """The items a tuple (or tuple subclass) stores, whatever its ``__iter__``/``__getitem__`` say, as the
    compiled bridge reads them."""
    return tuple(tuple.__iter__(value))


def _check_event(event: Any, offset_ms: int) -> _Event:
    """Validate the shape of one event tuple; raise EventRefused(BAD_EVENT) naming the first bad field."""
    if not issubclass(type(event), tuple) or tuple.__len__(event) != 7:
        raise EventRefused(RejectReason.BAD_EVENT, "event is not a 7-tuple")
    event = _tuple_items(event)
    encoded: dict[str, bytes] = {}
    for name, value in zip(_FIELDS, event, strict=True):
        if name in ("seq", "ts_ms"):
            if type(value) is not int:
                raise EventRefused(RejectReason.BAD_EVENT, f"{name} must be int")
            if name == "seq" and not 0 <= value <= MAX_SEQ:
                raise EventRefused(RejectReason.BAD_EVENT, f"seq out of range 0..{MAX_SEQ}")
            if name == "ts_ms" and not 0 <= value + offset_ms < MAX_LOCAL_MS:
                raise EventRefused(RejectReason.BAD_EVENT, "ts_ms out of range")
            continue
        if type(value) is not str:
            raise EventRefused(RejectReason.BAD_EVENT, f"{name} must be str")
        try:
            encoded[name] = value.encode("utf-8")
        except UnicodeEncodeError:
            raise EventRefused(RejectReason.BAD_EVENT, f"{name} is not encodable as UTF-8") from None
        if name == "device" and not value:
            raise EventRefused(RejectReason.BAD_EVENT, "empty device id")
    return _Event(event[0], event[1], event[2], encoded["admission"], encoded["udi"], encoded["operator"],
                  encoded["dept"], encoded["device"])


class _Entry(NamedTuple):
    item: CatalogItem
    ft1: bytes
    zud: bytes


def _catalog_entries(catalog: Catalog) -> dict[bytes, _Entry]:
    entries: dict[bytes, _Entry] | None = catalog.native_cache.get("pure")
    if entries is None:
        entries = {item.gtin.encode("ascii"): _Entry(item, item_ft1_fragment(item), item_zud_fragment(item))
                   for item in catalog}
        catalog.native_cache["pure"] = entries
    return entries


def _render(fragments: tuple[bytes, ...], slots: tuple[Slot, ...], values: dict[Slot, bytes]) -> bytes:
    out = [fragments[0]]
    for slot, fragment in zip(slots, fragments[1:], strict=True):
        out.append(values[slot])
        out.append(fragment)
    return b"".join(out)


def charge_compact(
    events: Sequence[Any], catalog: Catalog, consumed: ConsumedSet, config: BridgeConfig
) -> CompactBatch:
    """Charge a batch of events; see :class:`gateway.bridge.types.CompactBatch` for the result layout."""
    if type(consumed) is not ConsumedSet:
        raise TypeError(f"consumed must be gateway.bridge._twin.ConsumedSet, not {type(consumed).__name__}")
    fragments, slots = message_template(config)
    offset_ms = utc_offset_ms(config)
    entries = _catalog_entries(catalog)
    status = bytearray()
    messages = bytearray()
    ends: array[int] = array("q")
    udi_out = bytearray()
    details: list[str] = []
    for raw in tuple(events):  # the events as they are now, whatever another thread does to the list
        try:
            event = _check_event(raw, offset_ms)
            local = _EPOCH + dt.timedelta(milliseconds=event.ts_ms + offset_ms)
            if not event.admission or all(b in BLANK for b in event.admission):
                raise EventRefused(RejectReason.MISSING_PATIENT, "empty admission number")
            try:
                parsed = parse_udi(event.udi, local.year)
            except UdiRefused as refused:
                raise EventRefused(RejectReason.BAD_UDI, str(refused)) from None
            gtin = parsed.gtin.decode("ascii")
            entry = entries.get(parsed.gtin)
            if entry is None:
                raise EventRefused(RejectReason.UNKNOWN_ITEM, f"GTIN {gtin} not in catalog")
            if parsed.expiry is not None and parsed.expiry < local.date():
                raise EventRefused(RejectReason.EXPIRED,
                                   f"expired {parsed.expiry.isoformat()}, scanned {local.date().isoformat()}")
            if not entry.item.chargeable:
                raise EventRefused(RejectReason.NOT_CHARGEABLE, f"GTIN {gtin} is not chargeable")
            key = None
            if parsed.serial:
                key = f"{gtin}/{parsed.serial.decode('ascii')}"
                if key in consumed:
                    raise EventRefused(RejectReason.SERIAL_ALREADY_CONSUMED,
                                       f"serial {parsed.serial.decode('ascii')} of GTIN {gtin} already consumed")
            elif entry.item.high_value:
                raise EventRefused(RejectReason.MISSING_SERIAL,
                                   f"high-value GTIN {gtin} scanned without serial (AI 21)")
        except EventRefused as refused:
            status.append(refused.reason.code)
            details.append(refused.detail)
            continue
        charge_id = f"{device_charge_prefix(event.device)}{event.seq:010d}".encode("ascii")
        expiry = parsed.expiry.strftime("%Y%m%d").encode("ascii") if parsed.expiry else b""
        values = {
            Slot.TIME: local.strftime("%Y%m%d%H%M%S").encode("ascii"),
            Slot.CHARGE_ID: charge_id,
            Slot.ADMISSION: escape(event.admission),
            Slot.DEPT: escape(event.dept),
            Slot.ITEM_FT1: entry.ft1,
            Slot.OPERATOR: escape(event.operator),
            Slot.GTIN: parsed.gtin,
            Slot.LOT: escape(parsed.lot),
            Slot.SERIAL: escape(parsed.serial),
            Slot.EXPIRY: expiry,
            Slot.ITEM_ZUD: entry.zud,
            Slot.DEVICE: escape(event.device_bytes),
        }
        messages += _render(fragments, slots, values)
        ends.append(len(messages))
        udi_out += parsed.gtin + (expiry or b"00000000")
        udi_out += bytes([len(parsed.lot)]) + parsed.lot + bytes([len(parsed.serial)]) + parsed.serial
        status.append(0)
        if key is not None:
            consumed.add(key)
    return CompactBatch(bytes(status), bytes(messages), ends, bytes(udi_out), details)


_CREDIT_INTS = {"seq", "ts_ms", "price_fen"}
_CHARGE_ID = re.compile(r"[0-9A-F]{10}[0-9]{10}")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _iso_date_ok(text: str) -> bool:
    match = _ISO_DATE.fullmatch(text)
    if match is None:
        return False
    year, month, day = (int(g) for g in match.groups())
    return 1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)


def _gs1_text_ok(text: str) -> bool:
    return len(text) <= SERIAL_MAX and all(c in GS1_CSET82 for c in text)


def _credit_field_problem(name: str, value: str) -> str | None:
    """What is wrong with the content of one text field of a credit, or None."""
    if name == "device" and not value:
        return "empty device id"
    if name == "original_charge_id" and _CHARGE_ID.fullmatch(value) is None:
        return "original_charge_id is not a charge id"
    if name == "gtin" and not gtin_check_digit_ok(value):
        return "gtin is not a valid GTIN"
    if name == "lot" and not _gs1_text_ok(value):
        return "lot is not a GS1 lot (X..20)"
    if name == "serial" and not _gs1_text_ok(value):
        return "serial is not a GS1 serial (X..20)"
    if name == "expiry" and value and not _iso_date_ok(value):
        return "expiry is not YYYY-MM-DD"
    if name == "charge_code" and not value:
        return "empty charge code"
    return None


def _check_credit(credit: Any, offset_ms: int) -> dict[str, Any]:
    """The credit's fields, text as UTF-8 bytes; raise EventRefused naming the first bad field."""
    if not issubclass(type(credit), tuple) or tuple.__len__(credit) != len(CreditRequest._fields):
        raise EventRefused(RejectReason.BAD_EVENT, f"credit is not a {len(CreditRequest._fields)}-tuple")
    credit = _tuple_items(credit)
    fields: dict[str, Any] = {}
    for name, value in zip(CreditRequest._fields, credit, strict=True):
        if name in _CREDIT_INTS:
            if type(value) is not int:
                raise EventRefused(RejectReason.BAD_EVENT, f"{name} must be int")
            if name == "seq" and not 0 <= value <= MAX_SEQ:
                raise EventRefused(RejectReason.BAD_EVENT, f"seq out of range 0..{MAX_SEQ}")
            if name == "ts_ms" and not 0 <= value + offset_ms < MAX_LOCAL_MS:
                raise EventRefused(RejectReason.BAD_EVENT, "ts_ms out of range")
            if name == "price_fen" and not 0 <= value <= MAX_CREDIT_FEN:
                raise EventRefused(RejectReason.BAD_EVENT, f"price_fen out of range 0..{MAX_CREDIT_FEN}")
            fields[name] = value
            continue
        if type(value) is not str:
            raise EventRefused(RejectReason.BAD_EVENT, f"{name} must be str")
        try:
            fields[name] = value.encode("utf-8")
        except UnicodeEncodeError:
            raise EventRefused(RejectReason.BAD_EVENT, f"{name} is not encodable as UTF-8") from None
        problem = _credit_field_problem(name, value)
        if problem is not None:
            raise EventRefused(RejectReason.BAD_EVENT, problem)
    if all(b in BLANK for b in fields["admission"]):
        raise EventRefused(RejectReason.MISSING_PATIENT, "empty admission number")
    return fields


def credit_compact(credits: Sequence[Any], config: BridgeConfig) -> CompactBatch:
    """Render credits (FT1-6 ``CD``) for items given back unused; the result has the charge batch's layout.

    Status 0 is a rendered credit; a refused request has ``bad_event`` or ``missing_patient``.
    """
    fragments, slots = credit_template(config)
    offset_ms = utc_offset_ms(config)
    status = bytearray()
    messages = bytearray()
    ends: array[int] = array("q")
    udi_out = bytearray()
    details: list[str] = []
    for raw in tuple(credits):
        try:
            c = _check_credit(raw, offset_ms)
        except EventRefused as refused:
            status.append(refused.reason.code)
            details.append(refused.detail)
            continue
        local = _EPOCH + dt.timedelta(milliseconds=c["ts_ms"] + offset_ms)
        device = c["device"].decode("utf-8")
        expiry = c["expiry"].replace(b"-", b"")
        amount = f"{yuan(c['price_fen'])}&CNY".encode("ascii")
        values = {
            Slot.TIME: local.strftime("%Y%m%d%H%M%S").encode("ascii"),
            Slot.CHARGE_ID: f"{device_charge_prefix(device)}{c['seq']:010d}".encode("ascii"),
            Slot.ORIGINAL_ID: c["original_charge_id"],
            Slot.ADMISSION: escape(c["admission"]),
            Slot.DEPT: escape(c["dept"]),
            Slot.ITEM_FT1: b"".join([escape(c["charge_code"]), b"^", escape(c["name"]), b"|||1|", amount, b"|",
                                     amount]),
            Slot.OPERATOR: escape(c["operator"]),
            Slot.GTIN: c["gtin"],
            Slot.LOT: escape(c["lot"]),
            Slot.SERIAL: escape(c["serial"]),
            Slot.EXPIRY: expiry,
            Slot.ITEM_ZUD: b"|".join([escape(c["item_code"]), escape(c["spec"]), escape(c["manufacturer"])]),
            Slot.DEVICE: escape(c["device"]),
        }
        messages += _render(fragments, slots, values)
        ends.append(len(messages))
        udi_out += c["gtin"] + (expiry or b"00000000")
        udi_out += bytes([len(c["lot"])]) + c["lot"] + bytes([len(c["serial"])]) + c["serial"]
        status.append(0)
    return CompactBatch(bytes(status), bytes(messages), ends, bytes(udi_out), details)
