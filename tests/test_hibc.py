"""HIBC LIC parsing: spec vectors with their check characters, every date format, every refusal, and fuzzing."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.udi import HibcCode, HibcError, HibcReason, Udi, hibc_check_character, parse_hibc, parse_udi
from device.udi.hibc import MOD43_CHARSET

TODAY = dt.date(2024, 6, 1)


def _signed(data: str) -> str:
    return data + hibc_check_character(data)


# --- vectors from ANSI/HIBC 2.x examples ----------------------------------------------------------------------


def test_check_character_of_spec_worked_example() -> None:
    # Appendix B: +A123BJC5D6E71 sums to 145, 145 mod 43 = 16 -> "G".
    assert hibc_check_character("+A123BJC5D6E71") == "G"


def test_primary_alone() -> None:
    code = parse_hibc("+A123BJC5D6E71G", today=TODAY)
    assert code == HibcCode(lic="A123", product="BJC5D6E7", unit_of_measure=1, link="G")
    assert code.device_identifier == "A123BJC5D6E71"
    assert code.item_key == ("A123BJC5D6E71", None)
    assert code.gtin is None


def test_primary_caption_form_with_asterisks() -> None:
    assert parse_hibc("*+A123BJC5D6E71G*", today=TODAY).device_identifier == "A123BJC5D6E71"


def test_secondary_alone_carries_link_character() -> None:
    code = parse_hibc("+$$52001510X3GD", today=TODAY)
    assert code == HibcCode(lot="10X3", expiry=dt.date(2020, 1, 15), link="G")
    assert code.device_identifier is None


def test_two_linear_symbols_read_back_to_back() -> None:
    code = parse_hibc("+A123BJC5D6E71G+$$52001510X3GD", today=TODAY)
    assert (code.lic, code.product, code.unit_of_measure, code.lot, code.expiry) == (
        "A123", "BJC5D6E7", 1, "10X3", dt.date(2020, 1, 15))


def test_two_symbols_with_serial_and_plus_as_primary_check() -> None:
    assert parse_hibc("+A123BJC5D6E71G+$$+52001510X3GB", today=TODAY).serial == "10X3"
    code = parse_hibc("+A123BJCMD6E79++$$52001510X3+ ", today=TODAY)
    assert (code.unit_of_measure, code.link, code.lot) == (9, "+", "10X3")


def test_old_format_julian_secondary() -> None:
    code = parse_hibc("+J123AQ3451/25330BC34567/S4012X", today=TODAY)
    assert (code.lot, code.serial, code.expiry) == ("BC34567", "4012", dt.date(2025, 11, 26))


def test_concatenated_spec_example() -> None:
    code = parse_hibc("+A99912345/$$52001510X33", today=TODAY)
    assert (code.lic, code.product, code.unit_of_measure, code.lot, code.expiry) == (
        "A999", "1234", 5, "10X3", dt.date(2020, 1, 15))
    assert code.link is None


def test_hibc_2_6_supplemental_fields() -> None:
    code = parse_hibc("+A99912349/$10X3/16D20111231/14D20200131/Q500Z", today=TODAY)
    assert code == HibcCode(lic="A999", product="1234", unit_of_measure=9, lot="10X3",
                            expiry=dt.date(2020, 1, 31), production=dt.date(2011, 12, 31), quantity=500)


def test_quantity_formats_8_and_9() -> None:
    code = parse_hibc("+A99912345/$$812710X3/16D20111212/14D20200906/S77DEFG453", today=TODAY)
    assert (code.quantity, code.lot, code.serial, code.expiry) == (12, "10X3", "77DEFG45", dt.date(2020, 9, 6))
    assert parse_hibc("+A99912345/$$902345710X3/16D20111212/14D20200906/S77DEFG45F", today=TODAY).quantity == 2345
    code = parse_hibc("+E203PB414109/$$8243280112R00089525J", today=TODAY)
    assert (code.quantity, code.expiry, code.lot) == (24, dt.date(2028, 1, 12), "R00089525")


def test_hour_format_is_gmt_and_datamatrix_symbology_is_kept() -> None:
    code = parse_hibc("]d1+A123ABCDEFGHI1234567891/$$420020216LOT123456789012345/SXYZ456789012345678/16D20130202$",
                      today=TODAY)
    assert code.expiry_time == dt.datetime(2020, 2, 2, 16, tzinfo=dt.UTC)
    assert (code.product, code.lot, code.serial) == ("ABCDEFGHI123456789", "LOT123456789012345", "XYZ456789012345678")
    assert code.symbology == "]d1"


@pytest.mark.parametrize(
    ("secondary", "expiry", "lot"),
    [
        ("$$0925LOT7", dt.date(2025, 9, 30), "LOT7"),  # MMYY: the indicator is the month's first digit
        ("$$1124LOT7", dt.date(2024, 11, 30), "LOT7"),
        ("$$0224LOT7", dt.date(2024, 2, 29), "LOT7"),
        ("$$2123125LOT7", dt.date(2025, 12, 31), "LOT7"),
        ("$$3251231LOT7", dt.date(2025, 12, 31), "LOT7"),
        ("$$425123123LOT7", dt.date(2025, 12, 31), "LOT7"),
        ("$$524366LOT7", dt.date(2024, 12, 31), "LOT7"),
        ("$$62436623LOT7", dt.date(2024, 12, 31), "LOT7"),
        ("$$7LOT7", None, "LOT7"),
        ("25001LOT7", dt.date(2025, 1, 1), "LOT7"),
    ],
)
def test_every_secondary_date_format(secondary: str, expiry: dt.date | None, lot: str) -> None:
    code = parse_hibc(_signed(f"+A999PROD1/{secondary}"), today=TODAY)
    assert (code.expiry, code.lot) == (expiry, lot)


def test_serial_variants() -> None:
    assert parse_hibc(_signed("+A999PROD1/$+SN42"), today=TODAY).serial == "SN42"
    code = parse_hibc(_signed("+A999PROD1/$$+3251231SN42"), today=TODAY)
    assert (code.serial, code.lot, code.expiry) == ("SN42", None, dt.date(2025, 12, 31))


def test_parse_udi_dispatches_on_the_flag() -> None:
    assert isinstance(parse_udi("]d1+A123BJC5D6E71G", today=TODAY), HibcCode)
    assert isinstance(parse_udi("]d20109506000134352", today=TODAY), Udi)
    assert isinstance(parse_udi("*+A123BJC5D6E71G*", today=TODAY), HibcCode)


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", HibcReason.EMPTY),
        ("]d1", HibcReason.EMPTY),
        ("A123BJC5D6E71G", HibcReason.NOT_HIBC),
        ("]d2+A123BJC5D6E71G", HibcReason.NOT_HIBC),
        ("+/A123", HibcReason.NOT_HIBC),
        ("+a123BJC5D6E71G", HibcReason.ILLEGAL_CHARACTER),
        ("+A123BJC5D6E71H", HibcReason.BAD_CHECK_CHARACTER),
        ("+A99912345/$$52001510X3/16D20111212/S77DEFG45/", HibcReason.BAD_CHECK_CHARACTER),
        ("+A123BJC5D6E71++$$52001510X3+D", HibcReason.BAD_CHECK_CHARACTER),
        ("+A123BJC5D6E71G+$$52001510X3+ ", HibcReason.BAD_LINK_CHARACTER),
        (_signed("+A1231"), HibcReason.BAD_PRIMARY),
        (_signed("+A12X"), HibcReason.BAD_PRIMARY),
        (_signed("+A123BJC5D6E7X"), HibcReason.BAD_PRIMARY),
        (_signed("+A123" + "P" * 19 + "1"), HibcReason.BAD_PRIMARY),
        (_signed("+A999PROD1/$$X"), HibcReason.BAD_SECONDARY),
        (_signed("+A999PROD1/ZZZ"), HibcReason.BAD_SECONDARY),
        (_signed("+A999PROD1/$LOT//S1"), HibcReason.BAD_SECONDARY),
        (_signed("+A999PROD1/$$1325LOT"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$$3250230LOT"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$$5253661"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$$42512312"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$$425123124"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$$32512"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$LOT/14D2025123"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$LOT/16D2025A231"), HibcReason.BAD_DATE),
        (_signed("+A999PROD1/$$81"), HibcReason.BAD_QUANTITY),
        (_signed("+A999PROD1/$/Q"), HibcReason.BAD_QUANTITY),
        (_signed("+A999PROD1/$/Q12A"), HibcReason.BAD_QUANTITY),
        (_signed("+A999PROD1/$" + "L" * 19), HibcReason.FIELD_TOO_LONG),
        (_signed("+A999PROD1/$LOT%1"), HibcReason.ILLEGAL_CHARACTER),
        (_signed("+A999PROD1/$LOT1/$LOT2"), HibcReason.CONFLICTING_FIELD),
        (_signed("+A999PROD1/$$3251231/14D20251130"), HibcReason.CONFLICTING_FIELD),
    ],
)
def test_malformed_code_is_refused_with_reason(text: str, reason: HibcReason) -> None:
    with pytest.raises(HibcError) as caught:
        parse_hibc(text, today=TODAY)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)
    assert str(caught.value)


def test_repeated_identical_field_is_accepted() -> None:
    assert parse_hibc(_signed("+A999PROD1/$$3251231/14D20251231"), today=TODAY).expiry == dt.date(2025, 12, 31)


# --- properties -------------------------------------------------------------------------------------------------

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@settings(max_examples=300, deadline=None)
@given(
    lic=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=1).flatmap(
        lambda first: st.text(_ALNUM, min_size=3, max_size=3).map(lambda rest: first + rest)),
    product=st.text(_ALNUM, min_size=1, max_size=18),
    unit=st.integers(0, 9),
    lot=st.text(_ALNUM + "-.", max_size=18),
    serial=st.text(_ALNUM, min_size=1, max_size=18),
    expiry=st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2049, 12, 31)),
)
def test_built_codes_round_trip(lic: str, product: str, unit: int, lot: str, serial: str, expiry: dt.date) -> None:
    text = _signed(f"+{lic}{product}{unit}/$$3{expiry:%y%m%d}{lot}/S{serial}")
    code = parse_hibc(text)
    assert (code.lic, code.product, code.unit_of_measure) == (lic, product, unit)
    assert (code.lot, code.serial, code.expiry) == (lot or None, serial, expiry)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(MOD43_CHARSET + "*_]dab\u00e9\n")), max_size=50))
def test_noise_raises_only_hibc_error(text: str) -> None:
    try:
        parse_hibc("+" + text, today=TODAY)
    except HibcError as err:
        assert err.reason in HibcReason
