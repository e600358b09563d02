"""Behaviour of the charging bridge through whichever implementation gateway.bridge imported."""

from __future__ import annotations

import hashlib

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

import gateway.bridge as bridge
from gateway.bridge import (
    BridgeConfig,
    Catalog,
    CatalogError,
    CatalogItem,
    RejectReason,
    charge_batch,
    new_consumed_set,
)


def gtin(first13: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(first13))
    return first13 + str((10 - total % 10) % 10)


STENT = gtin("0401234567890")
GAUZE = gtin("0690000000001")
CATHETER = gtin("0690000000002")
UNKNOWN = gtin("0690000000099")
TS = 1_735_700_000_000  # 2025-01-01 10:53:20 at UTC+8
CONFIG = BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([
        CatalogItem(STENT, "IT-STENT", "C310001", "冠脉支架|药物洗脱", "3.0x18mm", "ACME & Co", 1_234_567, True, True),
        CatalogItem(GAUZE, "IT-GAUZE", "", "纱布", "10x10cm", "某厂", 250, False, False),
        CatalogItem(CATHETER, "IT-CATH", "C320002", "导管", "5F", "某厂", 9_905, True, False),
    ])


def event(seq: int, udi: str, *, admission: str = "ZY0001", ts: int = TS, device: str = "CAB-01",
          operator: str = "N042", dept: str = "心内科") -> tuple[str, int, int, str, str, str, str]:
    return (device, seq, ts, admission, udi, operator, dept)


def stent_udi(serial: str = "SN0001", expiry: str = "271231") -> str:
    return f"]d201{STENT}17{expiry}10LOT-A1\x1d21{serial}"


def test_implementation_is_named() -> None:
    assert bridge.IMPLEMENTATION in ("compiled", "pure")


def test_valid_scan_produces_charge_line_at_purchase_price(catalog: Catalog) -> None:
    consumed = new_consumed_set()
    result = charge_batch([event(7, stent_udi())], catalog, consumed, CONFIG)
    assert result.rejects == [] and result.uncharged == []
    [line] = result.lines
    prefix = hashlib.sha256(b"CAB-01").hexdigest()[:10].upper()
    assert line.charge_id == f"{prefix}0000000007"
    assert (line.gtin, line.lot, line.serial, line.expiry) == (STENT, "LOT-A1", "SN0001", "2027-12-31")
    assert (line.item_code, line.charge_code, line.price_fen, line.qty) == ("IT-STENT", "C310001", 1_234_567, 1)
    assert (line.device, line.seq, line.ts_ms, line.admission, line.operator, line.dept) == (
        "CAB-01", 7, TS, "ZY0001", "N042", "心内科")
    assert set(consumed) == {f"{STENT}/SN0001"}


def test_message_has_expected_segments_and_fields(catalog: Catalog) -> None:
    [line] = charge_batch([event(7, stent_udi())], catalog, new_consumed_set(), CONFIG).lines
    cid = line.charge_id
    assert line.message.split("\r") == [
        f"MSH|^~\\&|SPD-EDGE|SPD|HIS|HOSP|20250101105320+0800||DFT^P03^DFT_P03|{cid}|P|2.5|||||||UNICODE UTF-8",
        "EVN|P03|20250101105320+0800",
        "PID|1||ZY0001^^^HOSP^MR||^^^^^^U",
        "PV1|1|I|心内科||||||||||||||||ZY0001",
        f"FT1|1|{cid}||20250101105320||CG|C310001^冠脉支架\\F\\药物洗脱|||1|12345.67&CNY|12345.67&CNY|心内科"
        "|||||||N042",
        f"ZUD|1|{STENT}^GS1|LOT-A1|SN0001|20271231|IT-STENT|3.0x18mm|ACME \\T\\ Co|CAB-01",
    ]


def test_rerender_is_byte_identical(catalog: Catalog) -> None:
    first = charge_batch([event(7, stent_udi())], catalog, new_consumed_set(), CONFIG).lines[0].message
    again = charge_batch([event(7, stent_udi())], catalog, new_consumed_set(), CONFIG).lines[0].message
    assert first == again


def test_field_values_are_hl7_escaped(catalog: Catalog) -> None:
    udi = f"(01){CATHETER}(10)A&B"
    [line] = charge_batch([event(1, udi, admission="ZY|1^2", operator="N\\9~x", dept="骨科\r\n二病区")],
                          catalog, new_consumed_set(), CONFIG).lines
    segments = line.message.split("\r")
    assert segments[2] == "PID|1||ZY\\F\\1\\S\\2^^^HOSP^MR||^^^^^^U"
    assert segments[3].startswith("PV1|1|I|骨科\\X0D\\\\X0A\\二病区|")
    assert segments[4].endswith("|N\\E\\9\\R\\x")
    assert segments[5].split("|")[3] == "A\\T\\B"


def test_messages_validate_strictly_with_hl7apy(catalog: Catalog) -> None:
    events = [
        event(1, stent_udi(), admission="ZY|1^2&3", operator="N\\9~x", dept="骨科\r\n二病区"),
        event(2, f"(01){CATHETER}(17)260200(10)L&1"),
    ]
    result = charge_batch(events, catalog, new_consumed_set(), CONFIG)
    assert len(result.lines) == 2
    for line in result.lines:
        message = parse_message(line.message, validation_level=VALIDATION_LEVEL.STRICT)
        assert message.validate() is True
        assert message.msh.msh_10.value == line.charge_id
    first = parse_message(result.lines[0].message, validation_level=VALIDATION_LEVEL.STRICT)
    financial = first.dft_p03_financial
    assert financial.ft1.ft1_6.value == "CG"
    assert financial.ft1.ft1_11.to_er7() == "12345.67&CNY"
    assert first.pid.pid_3.to_er7() == "ZY\\F\\1\\S\\2\\T\\3^^^HOSP^MR"


def test_amount_is_yuan_with_two_decimals_from_fen(catalog: Catalog) -> None:
    [line] = charge_batch([event(1, f"(01){CATHETER}")], catalog, new_consumed_set(), CONFIG).lines
    assert "|1|99.05&CNY|99.05&CNY|" in line.message


def test_serial_seen_earlier_in_batch_is_refused(catalog: Catalog) -> None:
    result = charge_batch([event(1, stent_udi()), event(2, stent_udi())], catalog, new_consumed_set(), CONFIG)
    assert [line.seq for line in result.lines] == [1]
    [reject] = result.rejects
    assert (reject.seq, reject.reason, reject.detail) == (
        2, RejectReason.SERIAL_ALREADY_CONSUMED, f"serial SN0001 of GTIN {STENT} already consumed")


def test_serial_consumed_in_earlier_batch_is_refused(catalog: Catalog) -> None:
    consumed = new_consumed_set([f"{STENT}/SN0001"])
    result = charge_batch([event(1, stent_udi())], catalog, consumed, CONFIG)
    assert result.lines == []
    assert result.rejects[0].reason is RejectReason.SERIAL_ALREADY_CONSUMED
    assert set(consumed) == {f"{STENT}/SN0001"}


def test_empty_admission_is_missing_patient(catalog: Catalog) -> None:
    result = charge_batch([event(1, stent_udi(), admission=" ")], catalog, new_consumed_set(), CONFIG)
    assert [(r.reason, r.detail) for r in result.rejects] == [(RejectReason.MISSING_PATIENT, "empty admission number")]


def test_unknown_gtin_is_refused(catalog: Catalog) -> None:
    result = charge_batch([event(1, f"01{UNKNOWN}")], catalog, new_consumed_set(), CONFIG)
    assert [(r.reason, r.detail) for r in result.rejects] == [
        (RejectReason.UNKNOWN_ITEM, f"GTIN {UNKNOWN} not in catalog")]


def test_item_expired_before_scan_date_is_refused(catalog: Catalog) -> None:
    result = charge_batch([event(1, stent_udi(expiry="241231"))], catalog, new_consumed_set(), CONFIG)
    assert [(r.reason, r.detail) for r in result.rejects] == [
        (RejectReason.EXPIRED, "expired 2024-12-31, scanned 2025-01-01")]


def test_item_expiring_on_scan_date_is_charged(catalog: Catalog) -> None:
    result = charge_batch([event(1, stent_udi(expiry="250101"))], catalog, new_consumed_set(), CONFIG)
    assert [line.expiry for line in result.lines] == ["2025-01-01"]


def test_expiry_day_00_means_end_of_month(catalog: Catalog) -> None:
    result = charge_batch([event(1, stent_udi(expiry="280200"))], catalog, new_consumed_set(), CONFIG)
    assert result.lines[0].expiry == "2028-02-29"


def test_expiry_year_follows_gs1_century_rule(catalog: Catalog) -> None:
    # scanned in 2025: 75 is 50 years ahead at most -> 2075; 76 is more -> 1976 (expired)
    ahead = charge_batch([event(1, stent_udi(serial="A", expiry="751231"))], catalog, new_consumed_set(), CONFIG)
    behind = charge_batch([event(1, stent_udi(serial="B", expiry="761231"))], catalog, new_consumed_set(), CONFIG)
    assert ahead.lines[0].expiry == "2075-12-31"
    assert behind.rejects[0].detail == "expired 1976-12-31, scanned 2025-01-01"


def test_expiry_uses_local_date_of_scan(catalog: Catalog) -> None:
    late_utc = 1_735_660_800_000  # 2024-12-31T16:00Z = 2025-01-01 00:00 at UTC+8
    result = charge_batch([event(1, stent_udi(expiry="241231"), ts=late_utc)], catalog, new_consumed_set(), CONFIG)
    assert result.rejects[0].reason is RejectReason.EXPIRED
    utc = BridgeConfig(sending_facility="SPD", receiving_facility="HOSP", utc_offset_minutes=0)
    late = charge_batch([event(1, stent_udi(expiry="241231"), ts=late_utc)], catalog, new_consumed_set(), utc)
    assert len(late.lines) == 1


def test_high_value_item_without_serial_is_refused(catalog: Catalog) -> None:
    result = charge_batch([event(1, f"]C101{STENT}17271231")], catalog, new_consumed_set(), CONFIG)
    assert [(r.reason, r.detail) for r in result.rejects] == [
        (RejectReason.MISSING_SERIAL, f"high-value GTIN {STENT} scanned without serial (AI 21)")]


def test_non_chargeable_item_is_uncharged_not_rejected(catalog: Catalog) -> None:
    consumed = new_consumed_set()
    result = charge_batch([event(1, f"(01){GAUZE}(21)X1")], catalog, consumed, CONFIG)
    assert result.lines == [] and result.rejects == []
    assert [(u.reason, u.detail) for u in result.uncharged] == [
        (RejectReason.NOT_CHARGEABLE, f"GTIN {GAUZE} is not chargeable")]
    assert set(consumed) == set()


@pytest.mark.parametrize(("udi", "detail"), [
    ("", "empty UDI"),
    ("]d2", "empty UDI"),
    (f"]X901{STENT}", "unsupported symbology identifier"),
    (f"01{STENT[:-1]}0", "GTIN check digit wrong at 2"),
    (f"01{STENT}10{'L' * 21}", "AI 10 longer than 20 at 18 (missing separator?)"),
    (f"01{STENT}99ABC", "unsupported AI at 16"),
    (f"01{STENT}17251301", "AI 17 invalid date at 18"),
    (f"01{STENT}172502", "AI 17 truncated at 18"),
    (f"01{STENT}10LOT 1", "AI 10 invalid character at 21"),
    (f"01{STENT}10\x1d21S", "AI 10 empty at 18"),
    (f"01{STENT}21A\x1d21B", "duplicate AI 21 at 20"),
    ("10LOT", "no GTIN (AI 01)"),
    (f"(01){STENT}(17)2512", "AI 17 wrong length at 22"),
    (f"(01){STENT}(99)x", "unsupported AI at 18"),
    (f"(01{STENT}", "unterminated AI at 0"),
    ("x01", "bad AI at 0"),
    (f"01{STENT}30\uff11\uff12", "AI 30 non-numeric at 18"),  # full-width digits
])
def test_malformed_udi_is_refused_with_detail(catalog: Catalog, udi: str, detail: str) -> None:
    result = charge_batch([event(1, udi)], catalog, new_consumed_set(), CONFIG)
    assert [(r.reason, r.detail) for r in result.rejects] == [(RejectReason.BAD_UDI, detail)]


@pytest.mark.parametrize("udi", [
    f"]d201{STENT}1727123110LOT-A1\x1d21SN0001",
    f"]C101{STENT}17271231\x1d10LOT-A1\x1d21SN0001",
    f"]Q3\x1d01{STENT}1124010117271231\x1d10LOT-A1\x1d21SN0001\x1d2401Z\x1d30123\x1d70032501011200",
    f"]e001{STENT}11240101\x1d241X\x1d10LOT-A1\x1d21SN0001\x1d17271231",
    f"(01){STENT}(17)271231(10)LOT-A1(21)SN0001",
])
def test_udi_forms_all_give_the_same_item(catalog: Catalog, udi: str) -> None:
    [line] = charge_batch([event(1, udi)], catalog, new_consumed_set(), CONFIG).lines
    assert (line.gtin, line.lot, line.serial, line.expiry) == (STENT, "LOT-A1", "SN0001", "2027-12-31")


@pytest.mark.parametrize(("bad", "detail"), [
    ("not a tuple", "event is not a 7-tuple"),
    (("CAB-01", 1, TS), "event is not a 7-tuple"),
    (("CAB-01", "1", TS, "ZY1", "x", "N", "D"), "seq must be int"),
    (("CAB-01", True, TS, "ZY1", "x", "N", "D"), "seq must be int"),
    (("CAB-01", -1, TS, "ZY1", "x", "N", "D"), "seq out of range 0..9999999999"),
    (("CAB-01", 10**10, TS, "ZY1", "x", "N", "D"), "seq out of range 0..9999999999"),
    (("CAB-01", 1, 10**30, "ZY1", "x", "N", "D"), "ts_ms out of range"),
    (("", 1, TS, "ZY1", "x", "N", "D"), "empty device id"),
    (("CAB-01", 1, TS, None, "x", "N", "D"), "admission must be str"),
    (("CAB-01", 1, TS, "ZY1", "\ud800", "N", "D"), "udi is not encodable as UTF-8"),
])
def test_malformed_event_is_refused_and_batch_goes_on(catalog: Catalog, bad: object, detail: str) -> None:
    result = charge_batch([bad, event(2, stent_udi())], catalog, new_consumed_set(), CONFIG)  # type: ignore[list-item]
    assert [(r.reason, r.detail) for r in result.rejects] == [(RejectReason.BAD_EVENT, detail)]
    assert [line.seq for line in result.lines] == [2]


def test_catalog_refuses_gtin_with_bad_check_digit() -> None:
    with pytest.raises(CatalogError) as raised:
        CatalogItem(STENT[:-1] + "0", "X", "C", "n", "s", "m", 1, True, False)
    assert raised.value.reason == "bad_gtin"
    assert isinstance(raised.value, ValueError)


def test_catalog_refuses_duplicate_gtin() -> None:
    item = CatalogItem(STENT, "X", "C", "n", "s", "m", 1, True, False)
    with pytest.raises(CatalogError) as raised:
        Catalog([item, item])
    assert raised.value.reason == "duplicate_gtin"


@pytest.mark.parametrize(("offset", "local"), [
    (-840, (9999, 12, 31, 23, 59, 59)),  # 10000-01-01 13:59:59 UTC: only the local time is bounded
    (-840, (9999, 12, 31, 20, 0, 0)),
    (840, (1970, 1, 1, 0, 0, 0)),  # a negative ts_ms
    (0, (9999, 12, 31, 23, 59, 59)),
])
def test_scan_times_at_the_ends_of_the_local_range(catalog: Catalog, offset: int, local: tuple[int, ...]) -> None:
    import datetime as dt

    from gateway.bridge.types import MAX_LOCAL_MS

    zone = dt.timezone(dt.timedelta(minutes=offset))
    ts = (dt.datetime(*local, tzinfo=zone) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)
    end = MAX_LOCAL_MS - offset * 60_000  # 10000-01-01 00:00 local
    start = -offset * 60_000  # 1970-01-01 00:00 local
    result = charge_batch([event(1, f"01{CATHETER}21S1", ts=ts), event(2, f"01{CATHETER}21S2", ts=end),
                           event(3, f"01{CATHETER}21S3", ts=start - 1)],
                          catalog, new_consumed_set(), BridgeConfig(utc_offset_minutes=offset))
    [line] = result.lines
    assert line.seq == 1
    assert "|{:04d}{:02d}{:02d}{:02d}{:02d}{:02d}|".format(*local) in line.message.replace("\r", "|")
    assert [(r.seq, r.detail) for r in result.rejects] == [(2, "ts_ms out of range"), (3, "ts_ms out of range")]
