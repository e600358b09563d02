"""GS1 element strings (GS1-128, GS1 DataMatrix, GS1 QR, DataBar) parsed into a :class:`Udi`, and written back.

Reads what a scanner transmits: an optional symbology identifier (``]C1``,
``]d2``, ``]Q3``, ``]e0``, ``]J1``), then element strings where FNC1 arrives as
the GS character (``\\x1d``) or as a textual alias such as ``<GS>``. The human
readable form ``(01)09506000134352(17)...`` is accepted too.

Rules follow the GS1 General Specifications: predefined-length AIs need no
separator (§7.8.5), a single separator after any element string is tolerated
(§7.8.6), GTIN/SSCC/GLN carry a mod-10 check digit (§7.9.1), dates are YYMMDD
with the century chosen within -49..+50 years of today and day ``00`` meaning
the last day of the month (§7.12). Every refusal is a :class:`Gs1Error` whose
``reason`` is a :class:`Gs1Reason`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from spd_common.gtin import check_digit

log = logging.getLogger(__name__)

GS: Final = "\x1d"
DEFAULT_GS_ALIASES: Final[tuple[str, ...]] = ("<GS>",)
GS1_SYMBOLOGIES: Final = frozenset({"]C1", "]d2", "]Q3", "]e0", "]J1"})


class Gs1Reason(StrEnum):
    """Why a GS1 code was refused; the values are stable and safe to log or count."""

    EMPTY = "empty"
    NOT_GS1 = "not_gs1"
    UNSUPPORTED_SYMBOLOGY = "unsupported_symbology"
    UNKNOWN_AI = "unknown_ai"
    BAD_CHECK_DIGIT = "bad_check_digit"
    BAD_DATE = "bad_date"
    BAD_VALUE = "bad_value"
    FIELD_TOO_LONG = "field_too_long"
    FIELD_TOO_SHORT = "field_too_short"
    ILLEGAL_CHARACTER = "illegal_character"
    MISSING_SEPARATOR = "missing_separator"
    MISPLACED_SEPARATOR = "misplaced_separator"
    DUPLICATE_AI = "duplicate_ai"
    TRAILING_GARBAGE = "trailing_garbage"
    MALFORMED_HRI = "malformed_hri"


class Gs1Error(ValueError):
    """A GS1 code that cannot be used, with a stable ``reason``, the AI concerned and the input position."""

    def __init__(self, reason: Gs1Reason, message: str, *, ai: str | None = None, position: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.ai = ai
        self.position = position


@dataclass(frozen=True, slots=True)
class _Part:
    """One component of an AI's data field: character set, length bounds and an optional linter."""

    charset: str  # "N" digits, "X" GS1 AI encodable character set 82
    min_len: int
    max_len: int
    lint: str | None = None  # "csum", "yymmd0", "yymmdd", "hhmm", "pieceoftotal"


@dataclass(frozen=True, slots=True)
class AiSpec:
    """What an Application Identifier's data field must look like."""

    ai: str
    title: str
    predefined: bool  # in the predefined-length table: never followed by FNC1
    parts: tuple[_Part, ...]
    min_len: int = field(init=False)
    max_len: int = field(init=False)
    fixed: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_len", sum(p.min_len for p in self.parts))
        object.__setattr__(self, "max_len", sum(p.max_len for p in self.parts))
        object.__setattr__(self, "fixed", self.min_len == self.max_len)


def _n(n: int, lint: str | None = None) -> _Part:
    return _Part("N", n, n, lint)


def _nv(n: int) -> _Part:
    return _Part("N", 1, n)


def _xv(n: int, min_len: int = 1) -> _Part:
    return _Part("X", min_len, n)


def _build_table() -> dict[str, AiSpec]:
    rows: list[tuple[str, str, bool, tuple[_Part, ...]]] = [
        ("00", "SSCC", True, (_n(18, "csum"),)),
        ("01", "GTIN", True, (_n(14, "csum"),)),
        ("02", "CONTENT", True, (_n(14, "csum"),)),
        ("10", "BATCH/LOT", False, (_xv(20),)),
        ("11", "PROD DATE", True, (_n(6, "yymmd0"),)),
        ("12", "DUE DATE", True, (_n(6, "yymmd0"),)),
        ("13", "PACK DATE", True, (_n(6, "yymmd0"),)),
        ("15", "BEST BEFORE", True, (_n(6, "yymmd0"),)),
        ("16", "SELL BY", True, (_n(6, "yymmd0"),)),
        ("17", "USE BY OR EXPIRY", True, (_n(6, "yymmd0"),)),
        ("20", "VARIANT", True, (_n(2),)),
        ("21", "SERIAL", False, (_xv(20),)),
        ("22", "CPV", False, (_xv(20),)),
        ("235", "TPX", False, (_xv(28),)),
        ("240", "ADDITIONAL ID", False, (_xv(30),)),
        ("241", "CUST. PART No.", False, (_xv(30),)),
        ("242", "MTO VARIANT", False, (_nv(6),)),
        ("243", "PCN", False, (_xv(20),)),
        ("250", "SECONDARY SERIAL", False, (_xv(30),)),
        ("251", "REF. TO SOURCE", False, (_xv(30),)),
        ("253", "GDTI", False, (_n(13, "csum"), _xv(17, 0))),
        ("254", "GLN EXTENSION COMPONENT", False, (_xv(20),)),
        ("30", "VAR. COUNT", False, (_nv(8),)),
        ("37", "COUNT", False, (_nv(8),)),
        ("400", "ORDER NUMBER", False, (_xv(30),)),
        ("401", "GINC", False, (_xv(30),)),
        ("410", "SHIP TO LOC", True, (_n(13, "csum"),)),
        ("414", "LOC No.", True, (_n(13, "csum"),)),
        ("422", "ORIGIN", False, (_n(3),)),
        ("7003", "EXPIRY TIME", False, (_n(6, "yymmdd"), _n(4, "hhmm"))),
        ("7020", "REFURB LOT", False, (_xv(20),)),
        ("7021", "FUNC STAT", False, (_xv(20),)),
        ("7022", "REV STAT", False, (_xv(20),)),
        ("7023", "GIAI - ASSEMBLY", False, (_xv(30),)),
        ("7240", "PROTOCOL", False, (_xv(20),)),
        ("8004", "GIAI", False, (_xv(30),)),
        ("8006", "ITIP", False, (_n(14, "csum"), _n(4, "pieceoftotal"))),
        ("8012", "VERSION", False, (_xv(20),)),
        ("8020", "REF No.", False, (_xv(25),)),
        ("8200", "PRODUCT URL", False, (_xv(70),)),
        ("90", "INTERNAL", False, (_xv(30),)),
    ]
    rows += [(f"71{i}", "NHRN", False, (_xv(20),)) for i in range(6)]
    rows += [(str(i), "INTERNAL", False, (_xv(90),)) for i in range(91, 100)]
    table: dict[str, AiSpec] = {}
    for ai, title, predefined, parts in rows:
        # Only the last part of a field may vary in length: parsing relies on it.
        assert all(p.min_len == p.max_len for p in parts[:-1]), ai
        table[ai] = AiSpec(ai, title, predefined, parts)
    return table


AI_TABLE: Final[dict[str, AiSpec]] = _build_table()
_AI_LENGTHS: Final = tuple(sorted({len(ai) for ai in AI_TABLE}))

_CSET82: Final = re.compile(r"[!\"%-?A-Z_a-z]*")
_NUMERIC: Final = re.compile(r"[0-9]*")
_CHARSETS: Final = {"N": _NUMERIC, "X": _CSET82}
_HRI_MARKER: Final = re.compile(r"\((\d{2,4})\)")
_WHITESPACE: Final = " \t\r\n"


@dataclass(frozen=True, slots=True)
class Udi:
    """A parsed GS1 code: the fields a charge needs, plus every AI and its raw value in scan order."""

    gtin: str | None = None
    lot: str | None = None
    serial: str | None = None
    expiry: dt.date | None = None
    production: dt.date | None = None
    sscc: str | None = None
    expiry_time: dt.datetime | None = None
    elements: tuple[tuple[str, str], ...] = ()
    symbology: str | None = None

    @property
    def item_key(self) -> tuple[str | None, str | None]:
        """(GTIN, serial): the identity of one physical item."""
        return (self.gtin, self.serial)

    @property
    def device_identifier(self) -> str | None:
        """The UDI-DI: the GTIN."""
        return self.gtin

    def get(self, ai: str) -> str | None:
        """The raw value of the first element with this AI, or None."""
        for key, value in self.elements:
            if key == ai:
                return value
        return None


def gtin_check_digit(body: str) -> int:
    """The GS1 mod-10 check digit of ``body`` (:func:`spd_common.gtin.check_digit`); Gs1Error if not digits."""
    try:
        return check_digit(body)
    except ValueError as err:
        raise Gs1Error(Gs1Reason.ILLEGAL_CHARACTER, str(err)) from None


def _full_year(yy: int, today: dt.date) -> int:
    """GS1 General Specifications §7.12: the year lies within -49..+50 years of the current year."""
    century = today.year - today.year % 100
    diff = yy - today.year % 100
    if 51 <= diff <= 99:
        return century - 100 + yy
    if -99 <= diff <= -50:
        return century + 100 + yy
    return century + yy


def _decode_date(value: str, today: dt.date, *, day_zero_ok: bool) -> dt.date:
    year = _full_year(int(value[0:2]), today)
    month = int(value[2:4])
    day = int(value[4:6])
    if not 1 <= month <= 12:
        raise ValueError(f"month {month:02d} does not exist")
    last = calendar.monthrange(year, month)[1]
    if day == 0 and day_zero_ok:
        day = last
    if not 1 <= day <= last:
        raise ValueError(f"day {day:02d} does not exist in {year}-{month:02d}")
    return dt.date(year, month, day)


def _check_part(spec: AiSpec, part: _Part, value: str, position: int) -> None:
    if not _CHARSETS[part.charset].fullmatch(value):
        bad = next(i for i, ch in enumerate(value) if not _CHARSETS[part.charset].fullmatch(ch))
        kind = "a digit" if part.charset == "N" else "a GS1 character-set-82 character"
        raise Gs1Error(
            Gs1Reason.ILLEGAL_CHARACTER,
            f"AI ({spec.ai}) {spec.title}: {value[bad]!r} at offset {bad} is not {kind}",
            ai=spec.ai,
            position=position + bad,
        )
    if part.lint == "csum" and gtin_check_digit(value[:-1]) != ord(value[-1]) - 48:
        raise Gs1Error(
            Gs1Reason.BAD_CHECK_DIGIT,
            f"AI ({spec.ai}) {spec.title} {value}: check digit should be {gtin_check_digit(value[:-1])}",
            ai=spec.ai,
            position=position,
        )
    if part.lint == "hhmm" and (int(value[:2]) > 23 or int(value[2:]) > 59):
        raise Gs1Error(Gs1Reason.BAD_DATE, f"AI ({spec.ai}): time {value} does not exist", ai=spec.ai,
                       position=position)
    if part.lint == "pieceoftotal" and not 0 < int(value[:2]) <= int(value[2:]):
        raise Gs1Error(Gs1Reason.BAD_VALUE, f"AI ({spec.ai}): piece {value[:2]} of total {value[2:]} is impossible",
                       ai=spec.ai, position=position)


def _check_value(spec: AiSpec, value: str, position: int, today: dt.date) -> dt.date | dt.datetime | None:
    """Validate a complete field value against its AI; return the date it encodes, if any."""
    if len(value) < spec.min_len:
        raise Gs1Error(
            Gs1Reason.FIELD_TOO_SHORT,
            f"AI ({spec.ai}) {spec.title} needs at least {spec.min_len} characters, got {len(value)}",
            ai=spec.ai,
            position=position,
        )
    offset = 0
    decoded: dt.date | dt.datetime | None = None
    for part in spec.parts:
        chunk = value[offset : offset + part.max_len]
        _check_part(spec, part, chunk, position + offset)
        if part.lint in ("yymmd0", "yymmdd"):
            try:
                decoded = _decode_date(chunk, today, day_zero_ok=part.lint == "yymmd0")
            except ValueError as err:
                raise Gs1Error(Gs1Reason.BAD_DATE, f"AI ({spec.ai}) {spec.title} {chunk}: {err}", ai=spec.ai,
                               position=position + offset) from err
        elif part.lint == "hhmm" and isinstance(decoded, dt.date):
            decoded = dt.datetime(decoded.year, decoded.month, decoded.day, int(chunk[:2]), int(chunk[2:]))
        offset += len(chunk)
    return decoded


def _lookup_ai(data: str, pos: int, parsed_any: bool) -> AiSpec:
    for length in _AI_LENGTHS:
        spec = AI_TABLE.get(data[pos : pos + length])
        if spec is not None:
            return spec
    head = data[pos : pos + 4]
    if len(head) >= 2 and head[:2].isascii() and head[:2].isdigit():
        raise Gs1Error(Gs1Reason.UNKNOWN_AI, f"no known Application Identifier starts {head!r}", position=pos)
    if parsed_any:
        raise Gs1Error(Gs1Reason.TRAILING_GARBAGE, f"{data[pos:pos + 20]!r} after the last element string",
                       position=pos)
    raise Gs1Error(Gs1Reason.NOT_GS1, f"{data[:20]!r} does not start with a GS1 Application Identifier",
                   position=pos)


def _split_element_string(data: str) -> Iterator[tuple[AiSpec, str, int]]:
    """Cut raw scanner data (FNC1 as GS) into (spec, value, position), lazily, without validating values."""
    parsed_any = False
    n = len(data)
    pos = 1 if data.startswith(GS) else 0  # a leading FNC1 sent as GS by scanners without symbology identifiers
    while pos < n:
        if data[pos] == GS:
            raise Gs1Error(Gs1Reason.MISPLACED_SEPARATOR, f"separator at offset {pos} where an AI should start",
                           position=pos)
        spec = _lookup_ai(data, pos, parsed_any)
        start = pos + len(spec.ai)
        if spec.fixed:
            end = start + spec.max_len
            value = data[start:end]
            cut = value.find(GS)
            if cut >= 0 or len(value) < spec.max_len:
                got = cut if cut >= 0 else len(value)
                raise Gs1Error(Gs1Reason.FIELD_TOO_SHORT,
                               f"AI ({spec.ai}) {spec.title} needs {spec.max_len} characters, got {got}",
                               ai=spec.ai, position=start)
            pos = end + 1 if data.startswith(GS, end) else end  # §7.8.6: tolerate one separator
        else:
            end = data.find(GS, start)
            if end < 0:
                end = n
            value = data[start:end]
            if len(value) > spec.max_len:
                raise Gs1Error(
                    Gs1Reason.MISSING_SEPARATOR,
                    f"AI ({spec.ai}) {spec.title} runs {len(value)} characters, at most {spec.max_len} allowed: "
                    f"a separator is missing after {value[:spec.max_len]!r}",
                    ai=spec.ai,
                    position=start + spec.max_len,
                )
            pos = end + 1
        parsed_any = True
        yield spec, value, start


def _split_hri(data: str) -> Iterator[tuple[AiSpec, str, int]]:
    """Cut the human readable form ``(01)...(17)...`` into (spec, value, position)."""
    markers = list(_HRI_MARKER.finditer(data))
    if not markers or markers[0].start() != 0:
        raise Gs1Error(Gs1Reason.MALFORMED_HRI, f"{data[:20]!r} is not '(AI)value(AI)value...'", position=0)
    for i, marker in enumerate(markers):
        ai = marker.group(1)
        spec = AI_TABLE.get(ai)
        if spec is None:
            raise Gs1Error(Gs1Reason.UNKNOWN_AI, f"unknown Application Identifier ({ai})", ai=ai,
                           position=marker.start())
        end = markers[i + 1].start() if i + 1 < len(markers) else len(data)
        value = data[marker.end() : end]
        if len(value) > spec.max_len:
            raise Gs1Error(Gs1Reason.FIELD_TOO_LONG,
                           f"AI ({ai}) {spec.title} allows {spec.max_len} characters, got {len(value)}",
                           ai=ai, position=marker.end())
        yield spec, value, marker.end()


def _strip_symbology(text: str) -> tuple[str | None, str]:
    if not text.startswith("]"):
        return None, text
    symbology = text[:3]
    if symbology not in GS1_SYMBOLOGIES:
        raise Gs1Error(Gs1Reason.UNSUPPORTED_SYMBOLOGY,
                       f"symbology {symbology!r} does not carry GS1 element strings", position=0)
    return symbology, text[3:]


def parse_gs1(text: str, *, today: dt.date | None = None,
              gs_aliases: Sequence[str] = DEFAULT_GS_ALIASES) -> Udi:
    """Parse one scan of a GS1 code; ``today`` fixes the century window (default: the local date).

    ``gs_aliases`` are texts some scanners send instead of the GS character for FNC1.
    """
    today = today or dt.date.today()
    data = text.strip(_WHITESPACE)
    symbology, data = _strip_symbology(data)
    if not data:
        raise Gs1Error(Gs1Reason.EMPTY, "the scan holds no data")
    if data.startswith("("):
        pieces = _split_hri("".join(data.split()))
    else:
        for alias in gs_aliases:
            if alias in data:
                data = data.replace(alias, GS)
        pieces = _split_element_string(data)

    seen: dict[str, str] = {}
    decoded: dict[str, dt.date | dt.datetime | None] = {}
    elements: list[tuple[str, str]] = []
    for spec, value, position in pieces:  # validated in scan order: the first fault is the one reported
        elements.append((spec.ai, value))
        previous = seen.get(spec.ai)
        if previous is not None:
            if previous != value:
                raise Gs1Error(Gs1Reason.DUPLICATE_AI,
                               f"AI ({spec.ai}) appears twice with different values {previous!r} and {value!r}",
                               ai=spec.ai, position=position)
            continue
        decoded[spec.ai] = _check_value(spec, value, position, today)
        seen[spec.ai] = value
    if not elements:
        raise Gs1Error(Gs1Reason.EMPTY, "the scan holds only a separator")

    expiry_time = decoded.get("7003")
    expiry = decoded.get("17")
    if expiry is None and isinstance(expiry_time, dt.datetime):
        expiry = expiry_time.date()
    production = decoded.get("11")
    return Udi(
        gtin=seen.get("01"),
        lot=seen.get("10"),
        serial=seen.get("21"),
        expiry=expiry if isinstance(expiry, dt.date) else None,
        production=production if isinstance(production, dt.date) else None,
        sscc=seen.get("00"),
        expiry_time=expiry_time if isinstance(expiry_time, dt.datetime) else None,
        elements=tuple(elements),
        symbology=symbology,
    )


def to_human_readable(udi: Udi) -> str:
    """The human readable interpretation: ``(01)09506000134352(17)...`` (FNC1 is never shown)."""
    return "".join(f"({ai}){value}" for ai, value in udi.elements)


def to_element_string(elements: Iterable[tuple[str, str]], *, gs: str = GS,
                      today: dt.date | None = None) -> str:
    """Encode AI/value pairs as barcode data, validated, with a separator after each element not of
    predefined length (§7.8.5), except the last. No symbology identifier is added."""
    today = today or dt.date.today()
    items = list(elements)
    out: list[str] = []
    for index, (ai, value) in enumerate(items):
        spec = AI_TABLE.get(ai)
        if spec is None:
            raise Gs1Error(Gs1Reason.UNKNOWN_AI, f"unknown Application Identifier ({ai})", ai=ai)
        if len(value) > spec.max_len:
            raise Gs1Error(Gs1Reason.FIELD_TOO_LONG,
                           f"AI ({ai}) {spec.title} allows {spec.max_len} characters, got {len(value)}", ai=ai)
        _check_value(spec, value, 0, today)
        out.append(ai + value)
        if not spec.predefined and index < len(items) - 1:
            out.append(gs)
    return "".join(out)
