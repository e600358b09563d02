"""HL7 v2 text escaping (section 2.7): the one routine of the Python side.

The acknowledgements (``gateway.his.ack``) and the charge message template
(``gateway.bridge.hl7template``, the pure-Python twin) escape field values with :func:`escape`.
The compiled bridge keeps a C-level copy (``put_escaped`` in ``gateway/bridge/_cbridge.pyx``) for
speed; it must give the same bytes as :func:`escape_utf8` (tests/test_hl7_escape.py checks it).

The delimiters are written as ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (and ``\\P\\`` for a v2.7 truncation
character), every ASCII control character (CR and LF included) as ``\\Xhh\\``; everything else,
non-ASCII text included, is kept as it is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class EncodingCharacters:
    """The delimiters a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None  # v2.7+ fifth character; kept so it round-trips

    @property
    def msh2(self) -> str:
        """The MSH-2 field value declaring these characters."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")


DEFAULT_CHARACTERS = EncodingCharacters()
_CONTROLS = [*range(0x20), 0x7F]


@functools.lru_cache(maxsize=16)
def _escaper(chars: EncodingCharacters) -> Callable[[str], str]:
    e = chars.escape
    table = {chr(c): f"{e}X{c:02X}{e}" for c in _CONTROLS}
    table.update({chars.escape: f"{e}E{e}", chars.field: f"{e}F{e}", chars.component: f"{e}S{e}",
                  chars.subcomponent: f"{e}T{e}", chars.repetition: f"{e}R{e}"})
    if chars.truncation:
        table[chars.truncation] = f"{e}P{e}"
    pattern = re.compile("[" + "".join(re.escape(c) for c in table) + "]")

    def escape(value: str) -> str:
        if pattern.search(value) is None:
            return value
        return pattern.sub(lambda m: table[m.group()], value)

    return escape


def escape(value: str, chars: EncodingCharacters = DEFAULT_CHARACTERS) -> str:
    """Escape the delimiters and control characters of a text value."""
    return _escaper(chars)(value)


def escape_utf8(value: bytes) -> bytes:
    """:func:`escape` with the default delimiters for UTF-8 bytes (undecodable bytes pass through unchanged)."""
    return escape(value.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
