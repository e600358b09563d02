"""Patient wristband formats: the default ZY format, per-hospital configuration, check digits and refusals."""

from __future__ import annotations

import pytest

from device.udi import CheckRule, Wristband, WristbandError, WristbandFormat, WristbandReason, parse_wristband
from device.udi.wristband import DEFAULT_WRISTBAND_FORMAT


def test_default_format_reads_zy_admission_number() -> None:
    assert parse_wristband("ZY0123456789") == Wristband(admission="ZY0123456789", raw="ZY0123456789")


def test_default_format_strips_symbology_identifier_and_scanner_suffix() -> None:
    assert parse_wristband("]C0ZY0123456789\r\n").admission == "ZY0123456789"
    assert WristbandFormat.default() is DEFAULT_WRISTBAND_FORMAT


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", WristbandReason.EMPTY),
        ("]C0", WristbandReason.EMPTY),
        ("ZY012345678", WristbandReason.NO_MATCH),
        ("ZY01234567890", WristbandReason.NO_MATCH),
        ("zy0123456789", WristbandReason.NO_MATCH),
        ("]d20109506000134352", WristbandReason.NO_MATCH),
        ("ZY" + "0" * 100, WristbandReason.TOO_LONG),
    ],
)
def test_default_format_refuses(text: str, reason: WristbandReason) -> None:
    with pytest.raises(WristbandError) as caught:
        parse_wristband(text)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_refusal_message_does_not_repeat_the_patient_identifier() -> None:
    with pytest.raises(WristbandError) as caught:
        parse_wristband("ZY98765432101")
    assert "9876543210" not in str(caught.value)


def test_configured_format_with_prefix_group_and_luhn_check() -> None:
    fmt = WristbandFormat.from_mapping({
        "name": "east-campus",
        "pattern": r"P(?P<admission>[0-9]{8})",
        "strip_prefixes": ["WB:"],
        "check": "luhn",
        "uppercase": True,
    })
    assert fmt.check is CheckRule.LUHN
    assert parse_wristband("WB:p79927398", fmt).admission == "79927398"  # Luhn-valid
    with pytest.raises(WristbandError) as caught:
        parse_wristband("WB:P79927397", fmt)
    assert caught.value.reason is WristbandReason.BAD_CHECK_DIGIT


def test_gs1_mod10_check_over_digits_of_the_admission_number() -> None:
    fmt = WristbandFormat(pattern=r"(?P<admission>ZY[0-9]{10})", check=CheckRule.GS1_MOD10)
    assert parse_wristband("ZY9501101537", fmt).admission == "ZY9501101537"
    with pytest.raises(WristbandError) as caught:
        parse_wristband("ZY9501101533", fmt)
    assert caught.value.reason is WristbandReason.BAD_CHECK_DIGIT


def test_symbology_is_kept_when_stripping_is_off() -> None:
    fmt = WristbandFormat(pattern=r"\]C0(?P<admission>[0-9]{6})", strip_symbology=False)
    assert parse_wristband("]C0123456", fmt).admission == "123456"


@pytest.mark.parametrize(
    ("mapping", "reason", "named"),
    [
        ({"pattern": "(?P<admission>.+)", "colour": "red"}, WristbandReason.UNKNOWN_OPTION, "colour"),
        ({"name": "x"}, WristbandReason.BAD_OPTION, "pattern"),
        ({"pattern": "(?P<admission>.+)", "check": "crc"}, WristbandReason.BAD_OPTION, "check"),
        ({"pattern": "(?P<admission>.+)", "max_length": "64"}, WristbandReason.BAD_OPTION, "max_length"),
        ({"pattern": "(?P<admission>.+)", "max_length": True}, WristbandReason.BAD_OPTION, "max_length"),
        ({"pattern": "(?P<admission>.+)", "max_length": 0}, WristbandReason.BAD_OPTION, "max_length"),
        ({"pattern": "(?P<admission>.+)", "strip_prefixes": "WB:"}, WristbandReason.BAD_OPTION, "strip_prefixes"),
        ({"pattern": "(?P<admission>.+)", "strip_prefixes": [""]}, WristbandReason.BAD_OPTION, "strip_prefixes"),
        ({"pattern": "[0-9]+"}, WristbandReason.BAD_OPTION, "admission"),
        ({"pattern": "(?P<admission>[0-9+"}, WristbandReason.BAD_OPTION, "pattern"),
    ],
)
def test_bad_configuration_is_an_error_naming_the_option(mapping: dict[str, object], reason: WristbandReason,
                                                          named: str) -> None:
    with pytest.raises(WristbandError) as caught:
        WristbandFormat.from_mapping(mapping)
    assert caught.value.reason == reason
    assert named in str(caught.value)
