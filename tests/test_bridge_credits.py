"""Credits for items given back unused, and the consumed-item set, in both bridge implementations."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.bridge import (
    BridgeConfig,
    CreditRefused,
    CreditRequest,
    ItemKeyError,
    RejectReason,
    _twin,
    credit_compact,
    new_consumed_set,
    render_credit,
)


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("gateway.bridge._cbridge")
    except ImportError:
        return None


cbridge = _compiled()
needs_compiled = pytest.mark.skipif(
    cbridge is None, reason="compiled bridge not built (python setup.py build_ext --inplace); nothing to compare")

STENT = "04012345678901"
CONFIG = BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")
RETURNED_AT = 1_735_800_000_000  # 2025-01-02 14:40:00 at UTC+8
CREDIT = CreditRequest(
    device="CAB-02", seq=9, ts_ms=RETURNED_AT, operator="N042", dept="心内科",
    original_charge_id="CF4B9C1F5E0000000007", admission="ZY0001", gtin=STENT, lot="LOT-A1", serial="SN0001",
    expiry="2027-12-31", item_code="IT-STENT", charge_code="C310001", name="冠脉支架|药物洗脱", spec="3.0x18mm",
    manufacturer="ACME & Co", price_fen=1_234_567,
)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_credit_reverses_the_charge_with_cd_and_names_the_original() -> None:
    message = render_credit(CREDIT, CONFIG)
    assert message.split("\r") == [
        "MSH|^~\\&|SPD-EDGE|SPD|HIS|HOSP|20250102144000+0800||DFT^P03^DFT_P03|DBD9A337A10000000009|P|2.5|||||||"
        "UNICODE UTF-8",
        "EVN|P03|20250102144000+0800",
        "PID|1||ZY0001^^^HOSP^MR||^^^^^^U",
        "PV1|1|I|心内科||||||||||||||||ZY0001",
        "FT1|1|DBD9A337A10000000009||20250102144000||CD|C310001^冠脉支架\\F\\药物洗脱|||1|12345.67&CNY|12345.67&CNY"
        "|心内科|||||||N042|||CF4B9C1F5E0000000007",
        f"ZUD|1|{STENT}^GS1|LOT-A1|SN0001|20271231|IT-STENT|3.0x18mm|ACME \\T\\ Co|CAB-02",
    ]


def test_credit_validates_strictly_with_hl7apy() -> None:
    message = parse_message(render_credit(CREDIT._replace(admission="ZY|1^2", lot=""), CONFIG),
                            validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate() is True
    ft1 = message.dft_p03_financial.ft1
    assert (ft1.ft1_2.value, ft1.ft1_6.value, ft1.ft1_23.to_er7()) == (
        "DBD9A337A10000000009", "CD", "CF4B9C1F5E0000000007")


def test_credit_id_is_derived_from_the_return_event_like_a_charge_id() -> None:
    first = render_credit(CREDIT, CONFIG)
    assert render_credit(CREDIT, CONFIG) == first
    assert render_credit(CREDIT._replace(seq=10), CONFIG).split("|")[9] == "DBD9A337A10000000010"


@pytest.mark.parametrize(("change", "reason", "detail"), [
    ({"admission": " "}, RejectReason.MISSING_PATIENT, "empty admission number"),
    ({"original_charge_id": "cf4b9c1f5e0000000007"}, RejectReason.BAD_EVENT, "original_charge_id is not a charge id"),
    ({"gtin": "04012345678902"}, RejectReason.BAD_EVENT, "gtin is not a valid GTIN"),
    ({"serial": "S" * 21}, RejectReason.BAD_EVENT, "serial is not a GS1 serial (X..20)"),
    ({"expiry": "2027-02-30"}, RejectReason.BAD_EVENT, "expiry is not YYYY-MM-DD"),
    ({"charge_code": ""}, RejectReason.BAD_EVENT, "empty charge code"),
    ({"price_fen": -1}, RejectReason.BAD_EVENT, "price_fen out of range 0..999999999999999"),
    ({"seq": True}, RejectReason.BAD_EVENT, "seq must be int"),
    ({"name": None}, RejectReason.BAD_EVENT, "name must be str"),
])
def test_invalid_credit_request_is_refused_with_reason(change: dict[str, Any], reason: RejectReason,
                                                        detail: str) -> None:
    with pytest.raises(CreditRefused) as raised:
        render_credit(CREDIT._replace(**change), CONFIG)
    assert (raised.value.reason, str(raised.value)) == (str(reason), detail)
    assert isinstance(raised.value, ValueError)


def test_credit_batch_keeps_good_requests_around_a_bad_one() -> None:
    compact = credit_compact([CREDIT, ("not", "a", "credit"), CREDIT._replace(seq=10)], CONFIG)
    assert compact.status == bytes([0, RejectReason.BAD_EVENT.code, 0])
    assert compact.details == ["credit is not a 17-tuple"]
    assert len(compact.ends) == 2


def test_consumed_set_holds_item_keys_and_refuses_anything_else() -> None:
    consumed = new_consumed_set([f"{STENT}/SN1"])
    consumed.add(f"{STENT}/SN2")
    consumed.add(f"{STENT}/SN2")
    assert (f"{STENT}/SN1" in consumed, "x" in consumed, 7 in consumed, len(consumed)) == (True, False, False, 2)
    copy = consumed.copy()
    consumed.discard(f"{STENT}/SN1")
    assert set(consumed) == {f"{STENT}/SN2"}
    assert set(copy) == {f"{STENT}/SN1", f"{STENT}/SN2"}
    for bad in ["", f"{STENT}/", f"{STENT}/{'S' * 21}", f"{STENT}/S N", "0401234567890/S", f"{STENT}-S"]:
        with pytest.raises(ItemKeyError):
            consumed.add(bad)


gs1_text = st.text(alphabet="!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz",
                   max_size=22)
any_text = st.one_of(st.text(max_size=10), st.sampled_from(["", " ", "A|B^C&D~E\\F", "科室\r\n", "\udcff"]))
credit_values: dict[str, st.SearchStrategy[Any]] = {
    "device": st.one_of(st.sampled_from(["CAB-01", "柜-3", "D|1"]), any_text),
    "seq": st.one_of(st.integers(-2, 10**10 + 1), st.booleans()),
    "ts_ms": st.one_of(st.integers(0, 4_102_444_800_000), st.integers(-10**20, 10**20)),
    "original_charge_id": st.one_of(st.just("CF4B9C1F5E0000000007"), st.from_regex(r"[0-9A-Fa-f]{10}[0-9]{9,11}",
                                                                                    fullmatch=True), any_text),
    "gtin": st.one_of(st.just(STENT), st.from_regex(r"[0-9]{13,15}", fullmatch=True), any_text),
    "lot": st.one_of(gs1_text, any_text),
    "serial": st.one_of(gs1_text, any_text),
    "expiry": st.one_of(st.just(""), st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True), any_text),
    "price_fen": st.one_of(st.integers(-1, 10**16), st.just(999_999_999_999_999), st.floats(0, 1)),
}


@st.composite
def credit_requests(draw: st.DrawFn) -> Any:
    """Mostly valid credit requests with one to three fields swapped for generated values."""
    if draw(st.integers(0, 20)) == 0:
        return draw(st.one_of(st.none(), st.tuples(st.text()), st.lists(st.text(), min_size=17, max_size=17)))
    fields = CREDIT._asdict()
    for name in draw(st.lists(st.sampled_from(CreditRequest._fields), max_size=3)):
        fields[name] = draw(credit_values.get(name, any_text))
    return tuple(fields.values())


@needs_compiled
@FAST
@given(credits=st.lists(credit_requests(), max_size=6), offset=st.sampled_from([480, -210, 0]))
def test_generated_credits_give_identical_results(credits: list[Any], offset: int) -> None:
    assert cbridge is not None
    config = BridgeConfig(sending_facility="S|1", receiving_facility="医院", utc_offset_minutes=offset)
    pure = _twin.credit_compact(credits, config)
    compiled = cbridge.credit_compact(credits, config)
    assert compiled.status == pure.status
    assert compiled.details == pure.details
    assert compiled.messages == pure.messages
    assert compiled.ends == pure.ends
    assert compiled.udi == pure.udi


item_keys = st.one_of(
    st.builds(lambda g, s: f"{g}/{s}", st.sampled_from([STENT, "06900000000011"]), gs1_text),
    st.text(max_size=40),
)


@needs_compiled
@FAST
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "discard", "contains", "copy"]), item_keys), max_size=60))
def test_consumed_sets_agree_on_every_operation(ops: list[tuple[str, str]]) -> None:
    assert cbridge is not None
    pure, compiled = _twin.ConsumedSet(), cbridge.ConsumedSet()
    for op, key in ops:
        if op == "add":
            outcomes = []
            for consumed in (pure, compiled):
                try:
                    consumed.add(key)
                    outcomes.append("added")
                except ItemKeyError as err:
                    outcomes.append(err.reason)
            assert outcomes[0] == outcomes[1]
        elif op == "discard":
            pure.discard(key)
            compiled.discard(key)
        elif op == "copy":
            pure, compiled = pure.copy(), compiled.copy()
        assert (key in pure) == (key in compiled)
        assert len(pure) == len(compiled)
    assert sorted(pure) == sorted(compiled)


@needs_compiled
def test_consumed_set_survives_growth_and_many_deletions() -> None:
    assert cbridge is not None
    pure, compiled = _twin.ConsumedSet(), cbridge.ConsumedSet()
    for round_ in range(3):
        keys = [f"{STENT}/R{round_}S{i}" for i in range(5000)]
        for key in keys:
            pure.add(key)
            compiled.add(key)
        for key in keys[::2]:
            pure.discard(key)
            compiled.discard(key)
    assert len(compiled) == len(pure) == 7500
    assert set(compiled) == set(pure)
