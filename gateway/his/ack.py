"""HL7 v2 acknowledgements: parse an ACK (MSA/ERR, any encoding characters, escapes) and build one.

This module checks the MSH delimiters first (stable refusal reasons). The usual answer — MSH and one MSA
with no escape character, what a HIS sends for nearly every charge — is then read with ``str.split``;
every other ACK (ERR segments, escapes, extra segments, refusals) is split into segments and fields by
python-hl7 (``hl7.parse``), the library the ADT listener uses too. Measured (``python -m hw_sim.bench
ack``, docs/benchmarks.md): python-hl7 takes about 50-90 µs per ACK, the split 5 µs; at 1,000 scans a
second the library's reading of plain ACKs was a tenth of the gateway's interpreter, which every thread
shares. A property test holds the two readings to the same result (tests/test_his_ack_plain.py).
Two of python-hl7's habits are worked around: it strips the message's ends (a closing segment keeps
the last field's trailing spaces), and its ``unescape`` reads ``\\Xhh\\`` byte by byte as Latin-1, maps
``\\.br\\`` to CR and drops escapes it does not know, so :func:`unescape` here resolves escapes (UTF-8
hex, unknown ones kept). Escaping is :func:`gateway.hl7text.escape`, shared with the charge template.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import hl7

from gateway.his.adapter import HisError
from gateway.hl7text import EncodingCharacters, escape

_SEGMENT_BREAK = re.compile(r"\r\n|\r|\n")
_HL7_TIMESTAMP = "%Y%m%d%H%M%S"
_END = "ZZE"  # a closing segment of no meaning, removed after parsing
MSA_TEXT_MAX = 80  # HL7 v2.5 length of MSA-3 (ST)
ERR_TEXT_MAX = 250  # HL7 v2.5 length of ERR-8 (TX)

# HL7 table 0357 (message error condition codes) used in ERR-3.
ERROR_CONDITIONS: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


class Hl7Error(HisError, ValueError):
    """A message is not well-formed HL7 v2 (e.g. no MSH segment, bad encoding characters)."""


class AckError(Hl7Error):
    """A received frame is not a usable acknowledgement; `reason` says why."""


class AckCode(Enum):
    """MSA-1 acknowledgement codes (HL7 table 0008)."""

    AA = "AA"  # application accept
    AE = "AE"  # application error
    AR = "AR"  # application reject
    CA = "CA"  # commit accept (enhanced mode)
    CE = "CE"  # commit error (enhanced mode)
    CR = "CR"  # commit reject (enhanced mode)

    @property
    def is_commit(self) -> bool:
        """True for the enhanced-mode commit acknowledgements (CA, CE, CR)."""
        return self.value.startswith("C")


@dataclass(frozen=True)
class HisAck:
    """A parsed acknowledgement.

    `text` is MSA-3 (unescaped), `error` a summary of the ERR segments ("" when none) and
    `his_ref` the ACK's own MSH-10, the reference under which the HIS logged its answer.
    """

    code: AckCode
    control_id_echo: str
    text: str
    error: str
    his_ref: str | None


def split_segments(message: str) -> list[str]:
    """Split a message into segments; CR is the HL7 separator, LF and CRLF are tolerated."""
    return [segment for segment in _SEGMENT_BREAK.split(message) if segment.strip()]


def parse_msh(segment: str) -> tuple[EncodingCharacters, list[str]]:
    """Return the encoding characters and the MSH fields, indexed so that ``fields[n]`` is MSH-n."""
    if not segment.startswith("MSH") or len(segment) < 8:
        raise Hl7Error("no_msh", "message does not start with an MSH segment")
    separator = segment[3]
    if separator.isalnum() or separator.isspace():
        raise Hl7Error("bad_encoding_characters", f"MSH-1 field separator {separator!r} is not a delimiter")
    parts = segment.split(separator)
    declared = parts[1]
    if len(declared) not in (4, 5) or len(set(declared + separator)) != len(declared) + 1:
        raise Hl7Error("bad_encoding_characters", f"MSH-2 {declared!r} is not 4 or 5 distinct delimiters")
    if any(char.isalnum() or char.isspace() for char in declared):
        raise Hl7Error("bad_encoding_characters", f"MSH-2 {declared!r} contains a letter, digit or space")
    chars = EncodingCharacters(
        field=separator,
        component=declared[0],
        repetition=declared[1],
        escape=declared[2],
        subcomponent=declared[3],
        truncation=declared[4] if len(declared) == 5 else None,
    )
    return chars, ["MSH", separator, *parts[1:]]


def field(fields: list[str], number: int) -> str:
    """Field `number` of an already split segment, "" when absent."""
    return fields[number] if number < len(fields) else ""


def component(value: str, chars: EncodingCharacters, number: int = 1) -> str:
    """Component `number` (1-based) of the first repetition of a field value, "" when absent."""
    parts = value.split(chars.repetition)[0].split(chars.component)
    return parts[number - 1] if number <= len(parts) else ""


def message_control_id(message: str) -> str:
    """MSH-10 of a message (as written, without unescaping: control ids are plain tokens)."""
    segments = split_segments(message)
    if not segments:
        raise Hl7Error("empty", "message is empty")
    _, msh = parse_msh(segments[0])
    return field(msh, 10)


def unescape(value: str, chars: EncodingCharacters, encoding: str = "utf-8") -> str:
    """Resolve HL7 escape sequences; formatting and charset escapes are dropped, unknown ones kept."""
    e = chars.escape
    if e not in value:
        return value
    simple = {
        "F": chars.field,
        "S": chars.component,
        "T": chars.subcomponent,
        "R": chars.repetition,
        "E": chars.escape,
        "P": chars.truncation or "",
        ".br": "\n",
        "H": "",
        "N": "",
    }
    out: list[str] = []
    position = 0
    while position < len(value):
        start = value.find(e, position)
        end = value.find(e, start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(value[position:])
            break
        out.append(value[position:start])
        out.append(_resolve_escape(value[start + 1 : end], simple, encoding, value[start : end + 1]))
        position = end + 1
    return "".join(out)


def _resolve_escape(body: str, simple: dict[str, str], encoding: str, original: str) -> str:
    if body in simple:
        return simple[body]
    if body[:1] == "X" and len(body) > 1 and len(body) % 2 == 1:
        try:
            return bytes.fromhex(body[1:]).decode(encoding, errors="replace")
        except ValueError:
            return original
    if body[:1] in ("C", "M", "Z") or body.startswith((".sp", ".in", ".ti", ".sk", ".fi", ".nf", ".ce")):
        return ""
    return original


def parse_ack(text: str, encoding: str = "utf-8") -> HisAck:
    """Parse an HL7 v2 acknowledgement; raise `AckError` with a reason when it is not one.

    `encoding` only matters for ``\\Xhh\\`` hex escapes in the text fields.
    """
    segments, chars, msh = _ack_header(text)
    return _plain_ack(segments, chars, msh) or _library_ack(segments, chars, encoding)


def _ack_header(text: str) -> tuple[list[str], EncodingCharacters, list[str]]:
    """The segments, the delimiters (checked, with a stable reason when they are bad) and the MSH fields."""
    segments = split_segments(text)
    if not segments:
        raise AckError("empty", "acknowledgement is empty")
    try:
        chars, msh = parse_msh(segments[0])
    except Hl7Error as err:
        raise AckError(err.reason, f"acknowledgement has no valid MSH: {err.message}") from err
    return segments, chars, msh


def _plain_ack(segments: list[str], chars: EncodingCharacters, msh: list[str]) -> HisAck | None:
    """The answer a HIS gives to nearly every charge — MSH and one MSA, no ERR, no escape character in the
    MSA — read with ``str.split``; None for anything else, which :func:`_library_ack` reads.

    At 1,000 scans a second python-hl7 took a tenth of the gateway's interpreter on these ACKs alone (52 µs
    an ACK where this takes 5; docs/benchmarks.md). A property test holds this reading to the library's
    reading of the same ACKs (tests/test_his_ack_plain.py)."""
    if len(segments) != 2 or chars.escape in segments[1]:
        return None
    msa = segments[1].split(chars.field)
    if msa[0] != "MSA" or component(field(msh, 9), chars, 1) != "ACK":
        return None
    try:
        code = AckCode(field(msa, 1).strip())
    except ValueError:
        return None
    echo = field(msa, 2).strip()
    if not echo:
        return None
    return HisAck(code=code, control_id_echo=echo, text=field(msa, 3), error="",
                  his_ref=field(msh, 10).strip() or None)


def _library_ack(segments: list[str], chars: EncodingCharacters, encoding: str) -> HisAck:
    """Any acknowledgement, read with python-hl7 (ERR segments, escapes, other segments, refusals)."""
    try:
        # python-hl7 strips the message's ends; the closing segment keeps the last field's spaces
        message = hl7.parse("\r".join([*segments, _END]))[:-1]
    except hl7.ParseException as err:  # pragma: no cover - parse_msh refused what python-hl7 would
        raise AckError("malformed", f"acknowledgement is not HL7 v2: {err}") from err
    by_name: dict[str, list[list[str]]] = {}
    for segment in message:
        fields = [str(value) for value in segment]  # fields[n] is field n (MSH-n for MSH)
        by_name.setdefault(fields[0], []).append(fields)
    msh = by_name["MSH"][0]
    message_type = component(field(msh, 9), chars, 1)
    if message_type != "ACK":
        raise AckError("not_an_ack", f"MSH-9 message type is {message_type or 'empty'!r}, not 'ACK'")
    if "MSA" not in by_name:
        raise AckError("missing_msa", "acknowledgement has no MSA segment")
    msa = by_name["MSA"][0]
    raw_code = field(msa, 1).strip()
    try:
        code = AckCode(raw_code)
    except ValueError:
        raise AckError("unknown_ack_code", f"MSA-1 {raw_code!r} is not an acknowledgement code") from None
    echo = field(msa, 2).strip()
    if not echo:
        raise AckError("missing_control_id", "MSA-2 (control id of the acknowledged message) is empty")
    errors = [_describe_err(err, chars, encoding) for err in by_name.get("ERR", [])]
    his_ref = field(msh, 10).strip() or None
    return HisAck(
        code=code,
        control_id_echo=unescape(echo, chars, encoding),
        text=unescape(field(msa, 3), chars, encoding),
        error="; ".join(part for part in errors if part),
        his_ref=his_ref,
    )


def _describe_err(err: list[str], chars: EncodingCharacters, encoding: str) -> str:
    """One line for an ERR segment: v2.5 ERR-3/7/8, or the v2.4 ERR-1 code when that is all there is."""
    code = component(field(err, 3), chars, 1)
    name = component(field(err, 3), chars, 2)
    if not code and not name:
        legacy = component(field(err, 1), chars, 4).split(chars.subcomponent)
        code = legacy[0]
        name = legacy[1] if len(legacy) > 1 else ""
    head = " ".join(unescape(part, chars, encoding) for part in (code, name) if part)
    message = unescape(field(err, 8) or field(err, 7), chars, encoding)
    if head and message:
        return f"{head}: {message}"
    return head or message


def build_ack(
    message: str,
    code: AckCode | str,
    text: str = "",
    *,
    control_id: str | None = None,
    error_code: str = "207",
    timestamp: datetime | None = None,
) -> str:
    """Build the acknowledgement a receiver sends for `message`, in the message's own encoding characters.

    Sending and receiving application/facility are swapped, MSH-9 is ``ACK^<trigger>^ACK``, MSH-10 is
    `control_id` (a fresh id when None), MSA-2 echoes the received MSH-10 and MSA-3 carries `text`
    (cut to its 80-character HL7 length).  For an error or reject code an ERR segment is added with
    `error_code` (HL7 table 0357) and `text` (up to 250 characters) in ERR-8.
    """
    ack_code = AckCode(code) if isinstance(code, str) else code
    segments = split_segments(message)
    if not segments:
        raise Hl7Error("empty", "message is empty")
    chars, msh = parse_msh(segments[0])
    trigger = component(field(msh, 9), chars, 2)
    when = (timestamp or datetime.now()).strftime(_HL7_TIMESTAMP)
    header = [
        "MSH",
        chars.msh2,
        field(msh, 5),
        field(msh, 6),
        field(msh, 3),
        field(msh, 4),
        when,
        "",
        chars.component.join(["ACK", trigger, "ACK"]) if trigger else "ACK",
        control_id or uuid.uuid4().hex[:20].upper(),
        field(msh, 11) or "P",
        field(msh, 12) or "2.5",
    ]
    if field(msh, 18):
        header += ["", "", "", "", "", field(msh, 18)]
    sep = chars.field
    lines = [sep.join(header), sep.join(["MSA", ack_code.value, field(msh, 10), escape(text[:MSA_TEXT_MAX], chars)])]
    if ack_code not in (AckCode.AA, AckCode.CA):
        condition = chars.component.join([error_code, ERROR_CONDITIONS.get(error_code, ""), "HL70357"])
        lines.append(sep.join(["ERR", "", "", condition, "E", "", "", "", escape(text[:ERR_TEXT_MAX], chars)]))
    return "\r".join(lines) + "\r"
