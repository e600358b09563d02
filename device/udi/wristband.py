"""Patient wristband barcodes: per-hospital formats that yield the admission number.

A hospital configures a :class:`WristbandFormat` (usually from its config file
through :meth:`WristbandFormat.from_mapping`): a regular expression with a named
group ``admission``, optional symbology-identifier and prefix stripping, and an
optional check-digit rule over the digits of the admission number. Error
messages never repeat the scanned text: it identifies a patient.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

log = logging.getLogger(__name__)


class CheckRule(StrEnum):
    """Check-digit rule over the digits of the admission number (the last digit is the check digit)."""

    NONE = "none"
    LUHN = "luhn"
    GS1_MOD10 = "gs1_mod10"


class WristbandReason(StrEnum):
    """Why a wristband scan or a wristband format was refused; stable values."""

    EMPTY = "empty"
    TOO_LONG = "too_long"
    NO_MATCH = "no_match"
    BAD_CHECK_DIGIT = "bad_check_digit"
    UNKNOWN_OPTION = "unknown_option"
    BAD_OPTION = "bad_option"


class WristbandError(ValueError):
    """A wristband scan or format that cannot be used, with a stable ``reason``."""

    def __init__(self, reason: WristbandReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _gs1_mod10_ok(digits: str) -> bool:
    total = 0
    weight = 3
    for ch in reversed(digits[:-1]):
        total += (ord(ch) - 48) * weight
        weight = 4 - weight
    return (10 - total % 10) % 10 == ord(digits[-1]) - 48


_CHECKERS: Final = {CheckRule.LUHN: _luhn_ok, CheckRule.GS1_MOD10: _gs1_mod10_ok}


@dataclass(frozen=True)
class WristbandFormat:
    """How one hospital's wristbands encode the admission number."""

    pattern: str
    name: str = "custom"
    strip_symbology: bool = True
    strip_prefixes: tuple[str, ...] = ()
    check: CheckRule = CheckRule.NONE
    uppercase: bool = False
    max_length: int = 64
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern)
        except re.error as err:
            raise WristbandError(WristbandReason.BAD_OPTION, f"wristband format {self.name!r}: pattern: {err}") from err
        if "admission" not in regex.groupindex:
            raise WristbandError(WristbandReason.BAD_OPTION,
                                 f"wristband format {self.name!r}: pattern needs a named group 'admission'")
        if self.max_length < 1:
            raise WristbandError(WristbandReason.BAD_OPTION, f"wristband format {self.name!r}: max_length must be >= 1")
        object.__setattr__(self, "_regex", regex)

    @property
    def regex(self) -> re.Pattern[str]:
        return self._regex

    @classmethod
    def default(cls) -> WristbandFormat:
        """Admission numbers ``ZY`` + 10 digits, no check digit."""
        return DEFAULT_WRISTBAND_FORMAT

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> WristbandFormat:
        """Build a format from configuration; an unknown key or a wrongly typed value is an error naming it."""
        for key in mapping:
            if key not in _OPTION_TYPES:
                known = ", ".join(sorted(_OPTION_TYPES))
                raise WristbandError(WristbandReason.UNKNOWN_OPTION,
                                     f"unknown wristband option {key!r} (known: {known})")
        if "pattern" not in mapping:
            raise WristbandError(WristbandReason.BAD_OPTION, "wristband option 'pattern' is required")
        for key, value in mapping.items():
            expected = _OPTION_TYPES[key]
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                got = type(value).__name__
                raise WristbandError(WristbandReason.BAD_OPTION,
                                     f"wristband option {key!r} must be {expected.__name__}, got {got}")
        prefixes = mapping.get("strip_prefixes", [])
        assert isinstance(prefixes, list)
        if not all(isinstance(p, str) and p for p in prefixes):
            raise WristbandError(WristbandReason.BAD_OPTION,
                                 "wristband option 'strip_prefixes' must list non-empty texts")
        check = mapping.get("check", CheckRule.NONE.value)
        if check not in {rule.value for rule in CheckRule}:
            choices = ", ".join(rule.value for rule in CheckRule)
            raise WristbandError(WristbandReason.BAD_OPTION, f"wristband option 'check' must be one of {choices}")
        max_length = mapping.get("max_length", 64)
        assert isinstance(max_length, int)
        return cls(
            pattern=str(mapping["pattern"]),
            name=str(mapping.get("name", "custom")),
            strip_symbology=bool(mapping.get("strip_symbology", True)),
            strip_prefixes=tuple(str(p) for p in prefixes),
            check=CheckRule(str(check)),
            uppercase=bool(mapping.get("uppercase", False)),
            max_length=max_length,
        )


_OPTION_TYPES: Final[dict[str, type]] = {
    "pattern": str,
    "name": str,
    "strip_symbology": bool,
    "strip_prefixes": list,
    "check": str,
    "uppercase": bool,
    "max_length": int,
}

DEFAULT_WRISTBAND_FORMAT: Final = WristbandFormat(pattern=r"(?P<admission>ZY[0-9]{10})", name="default")


@dataclass(frozen=True, slots=True)
class Wristband:
    """A patient wristband scan: the admission number and the text as scanned.

    ``initials`` and ``ward`` are filled when the format's pattern has named
    groups of those names (a band printed ``ZY0000012345|ZS|ICU2``, say); the
    handheld shows them so the nurse can check the band belongs to the patient.
    """

    admission: str
    raw: str
    initials: str = ""
    ward: str = ""


def parse_wristband(text: str, fmt: WristbandFormat = DEFAULT_WRISTBAND_FORMAT) -> Wristband:
    """Read the admission number from a wristband scan, or raise :class:`WristbandError`."""
    data = text.strip(" \t\r\n")
    if fmt.strip_symbology and data.startswith("]"):
        data = data[3:]
    for prefix in fmt.strip_prefixes:
        if data.startswith(prefix):
            data = data[len(prefix) :]
            break
    if not data:
        raise WristbandError(WristbandReason.EMPTY, "the wristband scan holds no data")
    if len(data) > fmt.max_length:
        raise WristbandError(WristbandReason.TOO_LONG,
                             f"wristband scan of {len(data)} characters exceeds {fmt.max_length} ({fmt.name})")
    if fmt.uppercase:
        data = data.upper()
    match = fmt.regex.fullmatch(data)
    if match is None:
        raise WristbandError(WristbandReason.NO_MATCH,
                             f"wristband scan of {len(data)} characters does not match format {fmt.name!r}")
    admission = match.group("admission")
    checker = _CHECKERS.get(fmt.check)
    if checker is not None:
        digits = "".join(ch for ch in admission if "0" <= ch <= "9")
        if len(digits) < 2 or not checker(digits):
            raise WristbandError(WristbandReason.BAD_CHECK_DIGIT,
                                 f"admission number fails the {fmt.check.value} check ({fmt.name})")
    groups = match.groupdict()
    return Wristband(admission=admission, raw=text, initials=groups.get("initials") or "",
                     ward=groups.get("ward") or "")
