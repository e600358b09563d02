"""SGTIN-96 decoding and encoding against the GS1 Tag Data Standard example, and its refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.cabinet.epc import EpcError, EpcReason, decode_sgtin96, encode_sgtin96
from device.udi import gtin_check_digit, parse_gs1

TDS_EXAMPLE = "3074257BF7194E4000001A85"  # urn:epc:tag:sgtin-96:3.0614141.812345.6789


def test_tds_example_decodes_to_gtin_and_serial() -> None:
    sg = decode_sgtin96(TDS_EXAMPLE)
    assert (sg.gtin, sg.serial, sg.filter) == ("80614141123458", "6789", 3)
    assert sg.pure_identity_uri == "urn:epc:id:sgtin:0614141.812345.6789"


def test_tds_example_encodes_back() -> None:
    assert encode_sgtin96("80614141123458", 6789, company_prefix_digits=7, filter_value=3) == TDS_EXAMPLE


def test_tag_and_udi_give_the_same_item_key() -> None:
    epc = encode_sgtin96("06954321116404", "1000007", company_prefix_digits=7)
    udi = parse_gs1("]d2010695432111640417280101101234\x1d211000007")
    assert decode_sgtin96(epc.lower()).item_key == udi.item_key == ("06954321116404", "1000007")


@pytest.mark.parametrize(
    ("epc", "reason"),
    [
        ("3074257BF7194E4000001A8", EpcReason.BAD_HEX),
        ("3074257BF7194E4000001A", EpcReason.BAD_LENGTH),
        ("E2801160600002054E2E3C8A", EpcReason.NOT_SGTIN96),
        ("36" + "00" * 12, EpcReason.NOT_SGTIN96),
        ("301C257BF7194E4000001A85", EpcReason.BAD_PARTITION),
        ("3060FFFFFFFFFFC000001A85", EpcReason.FIELD_OVERFLOW),
    ],
)
def test_malformed_epcs_are_refused_with_a_reason(epc: str, reason: EpcReason) -> None:
    with pytest.raises(EpcError) as err:
        decode_sgtin96(epc)
    assert err.value.reason is reason


@pytest.mark.parametrize("serial", ["0123", "12A", str(2**38)])
def test_serials_sgtin96_cannot_carry_are_refused(serial: str) -> None:
    with pytest.raises(EpcError) as err:
        encode_sgtin96("80614141123458", serial, company_prefix_digits=7)
    assert err.value.reason is EpcReason.BAD_SERIAL


@given(
    cp_digits=st.integers(6, 12),
    digits=st.text("0123456789", min_size=13, max_size=13),
    serial=st.integers(0, 2**38 - 1),
    filter_value=st.integers(0, 7),
)
def test_every_partition_round_trips(cp_digits: int, digits: str, serial: int, filter_value: int) -> None:
    gtin = digits + str(gtin_check_digit(digits))
    epc = encode_sgtin96(gtin, serial, company_prefix_digits=cp_digits, filter_value=filter_value)
    sg = decode_sgtin96(epc)
    assert (sg.gtin, sg.serial, sg.filter, len(sg.company_prefix)) == (gtin, str(serial), filter_value, cp_digits)
