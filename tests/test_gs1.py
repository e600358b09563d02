"""GS1 element string parsing and writing: spec vectors, every refusal reason, dates, and agreement with biip."""

from __future__ import annotations

import datetime as dt
import time

import biip
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.udi import GS, Gs1Error, Gs1Reason, Udi, gtin_check_digit, parse_gs1, to_element_string, to_human_readable
from device.udi.gs1 import AI_TABLE
from spd_common.gtin import is_valid_gtin

TODAY = dt.date(2024, 6, 1)


# --- vectors from the GS1 General Specifications and GS1 sample symbols ---------------------------------------


def test_genspecs_gs1_128_example_with_symbology_identifier() -> None:
    udi = parse_gs1("]C101095011015300031714070410AB-123", today=TODAY)
    assert udi == Udi(
        gtin="09501101530003",
        lot="AB-123",
        expiry=dt.date(2014, 7, 4),
        elements=(("01", "09501101530003"), ("17", "140704"), ("10", "AB-123")),
        symbology="]C1",
    )


def test_genspecs_datamatrix_figure_with_separators_and_lower_case() -> None:
    text = "]d201095040000591012112345678p901" + GS + "101234567p" + GS + "171411208200http://www.gs1.org/demo/"
    udi = parse_gs1(text, today=TODAY)
    assert (udi.gtin, udi.serial, udi.lot, udi.expiry) == ("09504000059101", "12345678p901", "1234567p",
                                                           dt.date(2014, 11, 20))
    assert udi.elements == (("01", "09504000059101"), ("21", "12345678p901"), ("10", "1234567p"),
                            ("17", "141120"), ("8200", "http://www.gs1.org/demo/"))
    assert udi.symbology == "]d2"
    assert udi.item_key == ("09504000059101", "12345678p901")


def test_human_readable_form_is_parsed() -> None:
    udi = parse_gs1("(01)09524000059109(21)12345678p901(10)1234567p(17)231120", today=TODAY)
    assert (udi.gtin, udi.serial, udi.lot, udi.expiry, udi.symbology) == (
        "09524000059109", "12345678p901", "1234567p", dt.date(2023, 11, 20), None)


def test_human_readable_form_tolerates_spaces() -> None:
    udi = parse_gs1("(01) 09506000134352 (17) 261231 (10) LOT42", today=TODAY)
    assert udi.elements == (("01", "09506000134352"), ("17", "261231"), ("10", "LOT42"))


def test_sscc_in_gs1_qr() -> None:
    udi = parse_gs1("]Q300106141411234567897", today=TODAY)
    assert udi.sscc == "106141411234567897"
    assert udi.gtin is None
    assert udi.item_key == (None, None)


def test_textual_gs_alias_is_accepted() -> None:
    udi = parse_gs1("]d2010950600013435210LOT1<GS>1724020021SN-9", today=TODAY)
    assert (udi.lot, udi.expiry, udi.serial) == ("LOT1", dt.date(2024, 2, 29), "SN-9")


def test_custom_gs_alias_is_accepted() -> None:
    udi = parse_gs1("010950600013435210LOT1^21SN-9", today=TODAY, gs_aliases=("^",))
    assert (udi.lot, udi.serial) == ("LOT1", "SN-9")


def test_leading_gs_and_scanner_suffix_are_ignored() -> None:
    udi = parse_gs1(GS + "0109506000134352" + GS + "21ABC\r\n", today=TODAY)
    assert udi.elements == (("01", "09506000134352"), ("21", "ABC"))


def test_separator_after_fixed_length_field_is_tolerated() -> None:
    udi = parse_gs1("0109506000134352" + GS + "17261231" + GS + "10A" + GS, today=TODAY)
    assert udi.elements == (("01", "09506000134352"), ("17", "261231"), ("10", "A"))


def test_expiry_time_7003() -> None:
    udi = parse_gs1("010950600013435270032512312359" + GS + "21X", today=TODAY)
    assert udi.expiry_time == dt.datetime(2025, 12, 31, 23, 59)
    assert udi.expiry == dt.date(2025, 12, 31)
    assert udi.serial == "X"


def test_production_date_and_identical_duplicate_ai() -> None:
    udi = parse_gs1("0109506000134352112401150109506000134352", today=TODAY)
    assert udi.production == dt.date(2024, 1, 15)
    assert udi.elements == (("01", "09506000134352"), ("11", "240115"), ("01", "09506000134352"))


def test_get_returns_raw_value() -> None:
    udi = parse_gs1("(01)09506000134352(240)REF-1", today=TODAY)
    assert udi.get("240") == "REF-1"
    assert udi.get("10") is None


# --- dates ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yymmdd", "today", "expected"),
    [
        ("240200", TODAY, dt.date(2024, 2, 29)),
        ("230200", TODAY, dt.date(2023, 2, 28)),
        ("000200", TODAY, dt.date(2000, 2, 29)),
        ("000200", dt.date(2080, 1, 1), dt.date(2100, 2, 28)),
        ("251200", TODAY, dt.date(2025, 12, 31)),
        ("250400", TODAY, dt.date(2025, 4, 30)),
    ],
)
def test_day_00_means_last_day_of_month(yymmdd: str, today: dt.date, expected: dt.date) -> None:
    assert parse_gs1(f"0109506000134352 17{yymmdd}".replace(" ", ""), today=today).expiry == expected


@pytest.mark.parametrize(
    ("yy", "expected_year"),
    [("74", 2074), ("75", 1975), ("99", 1999), ("00", 2000), ("24", 2024)],
)
def test_century_lies_within_minus_49_plus_50_years(yy: str, expected_year: int) -> None:
    assert parse_gs1(f"17{yy}0101", today=TODAY).expiry == dt.date(expected_year, 1, 1)


# --- every refusal ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason", "ai"),
    [
        ("", Gs1Reason.EMPTY, None),
        ("]d2", Gs1Reason.EMPTY, None),
        (GS, Gs1Reason.EMPTY, None),
        ("ZY0123456789", Gs1Reason.NOT_GS1, None),
        ("]d1010950600013435210A", Gs1Reason.UNSUPPORTED_SYMBOLOGY, None),
        ("01095060001343522399", Gs1Reason.UNKNOWN_AI, None),
        ("(01)09506000134352(23)9", Gs1Reason.UNKNOWN_AI, "23"),
        ("0109506000134353", Gs1Reason.BAD_CHECK_DIGIT, "01"),
        ("00106141411234567890", Gs1Reason.BAD_CHECK_DIGIT, "00"),
        ("0109506000134352171302", Gs1Reason.FIELD_TOO_SHORT, "17"),
        ("0109506000134352171313", Gs1Reason.FIELD_TOO_SHORT, "17"),
        ("0109506000134352172612311", Gs1Reason.TRAILING_GARBAGE, None),
        ("0109506000134352-", Gs1Reason.TRAILING_GARBAGE, None),
        ("0109506000134352X", Gs1Reason.TRAILING_GARBAGE, None),
        ("0109506000134353" + "10" + "A" * 25, Gs1Reason.BAD_CHECK_DIGIT, "01"),
        ("010950600013435217130230", Gs1Reason.BAD_DATE, "17"),
        ("010950600013435217131301", Gs1Reason.BAD_DATE, "17"),
        ("010950600013435217230229", Gs1Reason.BAD_DATE, "17"),
        ("70032501002359", Gs1Reason.BAD_DATE, "7003"),
        ("70032501312400", Gs1Reason.BAD_DATE, "7003"),
        ("(10)" + "A" * 21, Gs1Reason.FIELD_TOO_LONG, "10"),
        ("(01)095060001343521", Gs1Reason.FIELD_TOO_LONG, "01"),
        ("(01)0950600013435", Gs1Reason.FIELD_TOO_SHORT, "01"),
        ("01095060" + GS + "21A", Gs1Reason.FIELD_TOO_SHORT, "01"),
        ("0109506000134352" + "10" + GS + "21A", Gs1Reason.FIELD_TOO_SHORT, "10"),
        ("0109506000134352" + "10", Gs1Reason.FIELD_TOO_SHORT, "10"),
        ("01095060001343X2", Gs1Reason.ILLEGAL_CHARACTER, "01"),
        ("10AB 123", Gs1Reason.ILLEGAL_CHARACTER, "10"),
        ("21ABC\u00e9", Gs1Reason.ILLEGAL_CHARACTER, "21"),
        ("0109506000134352" + "10LOT123456789ABCDEFGH172612312112345", Gs1Reason.MISSING_SEPARATOR, "10"),
        ("0109506000134352" + GS + GS + "21A", Gs1Reason.MISPLACED_SEPARATOR, None),
        ("0109506000134352" + "10A" + GS + "10B", Gs1Reason.DUPLICATE_AI, "10"),
        ("01095060001343520109501101530003", Gs1Reason.DUPLICATE_AI, "01"),
        ("8006095060001343520302", Gs1Reason.BAD_VALUE, "8006"),
        ("09506000134352(17)261231", Gs1Reason.UNKNOWN_AI, None),
        ("(01", Gs1Reason.MALFORMED_HRI, None),
    ],
)
def test_malformed_code_is_refused_with_reason(text: str, reason: Gs1Reason, ai: str | None) -> None:
    with pytest.raises(Gs1Error) as caught:
        parse_gs1(text, today=TODAY)
    assert caught.value.reason == reason
    assert caught.value.ai == ai
    assert isinstance(caught.value, ValueError)
    assert str(caught.value)


def test_missing_separator_after_lot_is_refused_at_the_max_length() -> None:
    text = "0109506000134352" + "10ABCDEFGHIJKLMNOPQRST" + "21XYZ"
    with pytest.raises(Gs1Error) as caught:
        parse_gs1(text, today=TODAY)
    assert caught.value.reason is Gs1Reason.MISSING_SEPARATOR
    assert caught.value.position == 38
    assert "ABCDEFGHIJKLMNOPQRST" in str(caught.value)


def test_reason_values_are_stable() -> None:
    assert {r.value for r in Gs1Reason} == {
        "empty", "not_gs1", "unsupported_symbology", "unknown_ai", "bad_check_digit", "bad_date", "bad_value",
        "field_too_long", "field_too_short", "illegal_character", "missing_separator", "misplaced_separator",
        "duplicate_ai", "trailing_garbage", "malformed_hri",
    }


# --- check digits and writing ---------------------------------------------------------------------------------


def test_gtin_check_digit_matches_spec_examples() -> None:
    assert gtin_check_digit("0950110153000") == 3
    assert gtin_check_digit("0950600013435") == 2
    assert gtin_check_digit("10614141123456789") == 7
    assert is_valid_gtin("09501101530003")
    assert is_valid_gtin("9501101530003")
    assert not is_valid_gtin("09501101530004")
    assert not is_valid_gtin("0950110153000X")
    assert not is_valid_gtin("123")
    with pytest.raises(Gs1Error):
        gtin_check_digit("12a")


def test_element_string_has_separators_only_where_needed() -> None:
    elements = [("01", "09506000134352"), ("10", "LOT1"), ("17", "261231"), ("7003", "2612312359"),
                ("11", "240101"), ("21", "S1")]
    assert to_element_string(elements, today=TODAY) == (
        "0109506000134352" "10LOT1" + GS + "17261231" "70032612312359" + GS + "11240101" "21S1")
    assert to_element_string(elements, gs="<GS>", today=TODAY).count("<GS>") == 2


def test_element_string_writer_refuses_invalid_fields() -> None:
    with pytest.raises(Gs1Error) as caught:
        to_element_string([("01", "09506000134353")])
    assert caught.value.reason is Gs1Reason.BAD_CHECK_DIGIT
    with pytest.raises(Gs1Error) as caught:
        to_element_string([("23", "x")])
    assert caught.value.reason is Gs1Reason.UNKNOWN_AI
    with pytest.raises(Gs1Error) as caught:
        to_element_string([("21", "x" * 21)])
    assert caught.value.reason is Gs1Reason.FIELD_TOO_LONG


def test_human_readable_round_trip() -> None:
    udi = parse_gs1("]d2010950600013435217261231" "10ABC" + GS + "21XYZ", today=TODAY)
    assert to_human_readable(udi) == "(01)09506000134352(17)261231(10)ABC(21)XYZ"
    assert parse_gs1(to_human_readable(udi), today=TODAY).elements == udi.elements


def test_parse_is_fast() -> None:
    text = "]d20109506000134352112401151726123110LOT-2024-A" + GS + "21SN0000123456"
    parse_gs1(text, today=TODAY)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        parse_gs1(text, today=TODAY)
    per_scan = (time.perf_counter() - start) / n
    assert per_scan < 500e-6, f"{per_scan * 1e6:.1f} us per scan"


# --- properties -------------------------------------------------------------------------------------------------

_CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_PROPERTY_AIS = ["00", "01", "02", "10", "11", "13", "15", "16", "17", "20", "21", "22", "235", "240", "241", "250",
                 "251", "253", "30", "37", "422", "7003", "7240", "8004", "8006", "8012", "8020", "91"]


def _with_check(body: str) -> str:
    return body + str(gtin_check_digit(body))


@st.composite
def _yymmdd(draw: st.DrawFn, *, day_zero: bool) -> str:
    day = draw(st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2049, 12, 31)))
    text = day.strftime("%y%m%d")
    if day_zero and draw(st.booleans()):
        text = text[:4] + "00"
    return text


@st.composite
def _value(draw: st.DrawFn, ai: str) -> str:
    spec = AI_TABLE[ai]
    if ai in ("00", "01", "02"):
        return _with_check(draw(st.text(_DIGITS, min_size=spec.max_len - 1, max_size=spec.max_len - 1)))
    if ai == "253":
        return _with_check(draw(st.text(_DIGITS, min_size=12, max_size=12))) + draw(
            st.text(_CSET82, max_size=17).filter(lambda v: "<GS>" not in v))
    if ai == "8006":
        total = draw(st.integers(1, 99))
        piece = draw(st.integers(1, total))
        return _with_check(draw(st.text(_DIGITS, min_size=13, max_size=13))) + f"{piece:02d}{total:02d}"
    if ai == "7003":
        return draw(_yymmdd(day_zero=False)) + f"{draw(st.integers(0, 23)):02d}{draw(st.integers(0, 59)):02d}"
    part = spec.parts[0]
    if part.lint == "yymmd0":
        return draw(_yymmdd(day_zero=True))
    alphabet = _DIGITS if part.charset == "N" else _CSET82
    # "<GS>" is all character-set-82 text, but the parser reads it as the separator some scanners send for
    # FNC1 (DEFAULT_GS_ALIASES): a value holding it is ambiguous by design, so it is no valid element here
    return draw(st.text(alphabet, min_size=part.min_len, max_size=part.max_len).filter(lambda v: "<GS>" not in v))


@st.composite
def valid_elements(draw: st.DrawFn) -> list[tuple[str, str]]:
    ais = draw(st.lists(st.sampled_from(_PROPERTY_AIS), min_size=1, max_size=7, unique=True))
    return [(ai, draw(_value(ai))) for ai in ais]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_elements(), st.sampled_from(["", "]C1", "]d2", "]Q3", "]e0"]))
def test_generated_element_strings_round_trip(elements: list[tuple[str, str]], symbology: str) -> None:
    text = symbology + to_element_string(elements)
    udi = parse_gs1(text)
    assert list(udi.elements) == elements
    assert udi.symbology == (symbology or None)
    assert to_element_string(udi.elements) == text[len(symbology):]
    assert parse_gs1(to_human_readable(udi)).elements == udi.elements


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_elements())
def test_parser_agrees_with_biip(elements: list[tuple[str, str]]) -> None:
    text = "]d2" + to_element_string(elements)
    ours = parse_gs1(text)
    theirs = biip.parse(text)
    assert theirs.gs1_message is not None, theirs.gs1_message_error
    strings = theirs.gs1_message.element_strings
    assert [(es.ai.ai, es.value) for es in strings] == list(ours.elements)

    def value(ai: str) -> str | None:
        found = strings.get(ai=ai)
        return found.value if found is not None else None

    assert ours.gtin == value("01")
    assert ours.lot == value("10")
    assert ours.serial == value("21")
    expiry = strings.get(ai="17")
    if expiry is not None:
        assert ours.expiry == expiry.date
    elif ours.expiry_time is not None:
        found = strings.get(ai="7003")
        assert found is not None and ours.expiry_time == found.datetime
    else:
        assert ours.expiry is None


_NOISE = st.text(alphabet=st.sampled_from(list(_DIGITS + "AZaz()[]<>^ -/" + GS + "]\u00e9\n")), max_size=60)


@settings(max_examples=500, deadline=None)
@given(_NOISE)
def test_noise_raises_only_gs1_error(text: str) -> None:
    try:
        parse_gs1(text, today=TODAY)
    except Gs1Error as err:
        assert err.reason in Gs1Reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_elements(), st.data())
def test_mutated_codes_raise_only_gs1_error(elements: list[tuple[str, str]], data: st.DataObject) -> None:
    text = to_element_string(elements)
    pos = data.draw(st.integers(0, len(text)))
    op = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
    char = data.draw(st.sampled_from(list(_DIGITS + "A" + GS + " (")))
    mutated = {
        "delete": text[:pos] + text[pos + 1:],
        "insert": text[:pos] + char + text[pos:],
        "replace": text[:pos] + char + text[pos + 1:],
        "truncate": text[:pos],
    }[op]
    try:
        parse_gs1(mutated)
    except Gs1Error as err:
        assert err.reason in Gs1Reason


def test_a_lot_spelling_the_gs_alias_reads_as_a_separator_unless_aliases_are_off() -> None:
    """Found by the round-trip property: "<GS>" is valid lot text and also what some scanners send for FNC1."""
    text = to_element_string([("01", "09506000134352"), ("10", "<GS>")])
    with pytest.raises(Gs1Error) as err:
        parse_gs1(text)
    assert err.value.reason is Gs1Reason.FIELD_TOO_SHORT and err.value.ai == "10"
    assert list(parse_gs1(text, gs_aliases=()).elements) == [("01", "09506000134352"), ("10", "<GS>")]
