"""The patient census (ADT events, CSV import) and the catalog document built from the gateway's tables."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from device.catalog_cache import CatalogCache, PatientStatus
from device.eventlog import EventLog
from device.handheld import Handheld
from device.scan_policy import ConsumedSerials, ScanPolicy, ScanRefusal
from gateway import bridge
from gateway.catalog import CatalogEntry, RecalledLot, csv_table, import_catalog, import_recalled_lots
from gateway.catalog_export import build_device_catalog
from gateway.census import (
    AdtEvent,
    AdtUpdate,
    CensusRecord,
    PatientState,
    apply_adt,
    census_complete,
    census_record,
    import_census,
    initials,
    load_census,
    mark_census_complete,
    parse_census_table,
)
from gateway.charging import ChargingWorker
from gateway.cli import main as gateway_main
from gateway.lot_expiry import LotExpiry, import_lot_expiry, parse_expiry_table
from gateway.store import GatewayStore
from hw_sim.udi_gen import make_gtin, make_udi
from spd_common.catalog_doc import content_digest
from spd_common.wire import decode_batch, encode_batch

_rng = random.Random(23)
STENT, GAUZE = make_gtin(_rng), make_gtin(_rng)
PATIENT, OTHER = "ZY2026001234", "ZY2026000042"
DAY = 86400


@pytest.fixture
def store(tmp_path: Path) -> GatewayStore:
    s = GatewayStore(tmp_path / "gw.db")
    import_catalog(s, [
        CatalogEntry(STENT, "HC00001", "33100001", "Coronary stent", "3.0x18mm", "Maker", 589000, True, True),
        CatalogEntry(GAUZE, "HC00007", "33100007", "Haemostatic gauze", "5x7.5cm", "Maker", 21800, True, False)])
    return s


def adt(store: GatewayStore, event: AdtEvent, admission: str = PATIENT, cid: str | None = None, **kw: Any) -> bool:
    return apply_adt(store, AdtUpdate(event, admission, **kw), control_id=cid or f"C{time.monotonic_ns()}")


# -- initials --------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "given", "shown"), [
    ("Zhang", "San", "Z.S."), ("smith", "", "S."), ("张", "三", "张*"), ("欧阳", "娜娜", "欧*"), ("", "", ""),
    ("", "Wei", "W."),
])
def test_initials_never_spell_a_name(family: str, given: str, shown: str) -> None:
    assert initials(family, given) == shown


# -- ADT events ------------------------------------------------------------------------------


def test_adt_events_move_an_admission_through_the_census(store: GatewayStore) -> None:
    admitted = dt.datetime(2026, 12, 1, 9, 30).timestamp()
    assert adt(store, AdtEvent.ADMIT, initials="Z.S.", ward="5A", bed="12", dept="CARD", at=admitted)
    assert census_record(store, PATIENT) == CensusRecord(PATIENT, PatientState.IN_HOUSE, "Z.S.", "5A", "CARD", "12",
                                                         admitted, None, "adt")
    assert adt(store, AdtEvent.TRANSFER, ward="ICU", bed="3")  # details not given stay as they were
    rec = census_record(store, PATIENT)
    assert rec is not None and (rec.ward, rec.bed, rec.dept, rec.initials) == ("ICU", "3", "CARD", "Z.S.")
    assert adt(store, AdtEvent.UPDATE, initials="Z.W.")
    discharged = admitted + 3 * DAY
    assert adt(store, AdtEvent.DISCHARGE, at=discharged)
    rec = census_record(store, PATIENT)
    assert rec is not None and (rec.status, rec.discharged_at, rec.initials) == (PatientState.DISCHARGED, discharged,
                                                                                 "Z.W.")
    assert adt(store, AdtEvent.CANCEL_DISCHARGE)
    rec = census_record(store, PATIENT)
    assert rec is not None and (rec.status, rec.discharged_at) == (PatientState.IN_HOUSE, None)
    assert adt(store, AdtEvent.CANCEL_ADMIT)
    assert census_record(store, PATIENT) is None


def test_a_resent_message_is_applied_once(store: GatewayStore) -> None:
    assert adt(store, AdtEvent.ADMIT, cid="MSG1", ward="5A")
    assert adt(store, AdtEvent.DISCHARGE, cid="MSG2")
    assert not adt(store, AdtEvent.ADMIT, cid="MSG1", ward="5A")  # the ACK was lost, the HIS sends it again
    rec = census_record(store, PATIENT)
    assert rec is not None and rec.status is PatientState.DISCHARGED
    assert store._engine.query("SELECT control_id, event, outcome FROM adt_messages ORDER BY control_id") == [
        ("MSG1", "A01", "changed"), ("MSG2", "A03", "changed")]


def test_transfer_or_update_of_an_unseen_admission_admits_it(store: GatewayStore) -> None:
    assert adt(store, AdtEvent.TRANSFER, OTHER, ward="7B")
    rec = census_record(store, OTHER)
    assert rec is not None and (rec.status, rec.ward) == (PatientState.IN_HOUSE, "7B")


# -- CSV import ------------------------------------------------------------------------------


CENSUS_CSV = """admission,name,ward,dept,bed,status,discharged_at
ZY2026001234,Zhang^San,5A,CARD,12,in_house,
ZY2026000042,李四,7B,ORTH,3,出院,2026-12-01T14:00:00+08:00
,Nobody,5A,CARD,1,in_house,
ZY2026000050,Wang Wu,5A,CARD,2,transferred,
ZY2026000051,,5A,CARD,4,discharged,yesterday
ZY2026000052,,5A,CARD,5,in_house,2026-12-01T10:00:00
ZY2026001234,Zhang^San,5A,CARD,12,in_house,
"""


def test_census_csv_import_reports_row_errors_and_keeps_initials_only(store: GatewayStore) -> None:
    records, errors = parse_census_table(csv_table(CENSUS_CSV))
    assert [(e.line, e.column, e.reason) for e in errors] == [
        (4, "admission", "empty admission number"),
        (5, "status", "'transferred' is not in_house or discharged"),
        (6, "discharged_at", "not an ISO 8601 date-time: 'yesterday'"),
        (7, "discharged_at", "an in-house patient has no discharge time"),
        (8, "admission", "admission ZY2026001234 listed twice"),
    ]
    assert [(r.admission, r.status, r.initials, r.ward, r.dept, r.bed) for r in records] == [
        (PATIENT, PatientState.IN_HOUSE, "Z.S.", "5A", "CARD", "12"),
        (OTHER, PatientState.DISCHARGED, "李*", "7B", "ORTH", "3")]
    assert records[1].discharged_at == dt.datetime(2026, 12, 1, 6, 0, tzinfo=dt.UTC).timestamp()
    import_census(store, records)
    adt(store, AdtEvent.ADMIT, "ZY2026009999")
    import_census(store, records[:1])  # a snapshot replaces the census
    assert [r.admission for r in load_census(store) or []] == [PATIENT]
    import_census(store, records[1:], replace_all=False)
    assert [r.admission for r in load_census(store) or []] == [OTHER, PATIENT]


def test_census_import_command_refuses_a_file_with_bad_rows_unless_partial(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    f = tmp_path / "census.csv"
    f.write_text(CENSUS_CSV, encoding="utf-8")
    assert gateway_main(["census-import", "--db", str(db), str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{f}:5: status: 'transferred' is not in_house or discharged" in err
    assert "census not imported" in err
    store = GatewayStore(db)
    assert load_census(store) is None
    store.close()
    assert gateway_main(["census-import", "--db", str(db), "--partial", str(f)]) == 1
    assert "imported 2 admissions (1 in house, 1 discharged), 5 row errors" in capsys.readouterr().out
    good = tmp_path / "good.csv"
    good.write_text("Admission,Status\nZY1,admitted\nZY2,discharged\n", encoding="utf-8")
    assert gateway_main(["census-import", "--db", str(db), str(good)]) == 0
    store = GatewayStore(db)
    assert [(r.admission, r.status) for r in load_census(store) or []] == [
        ("ZY1", PatientState.IN_HOUSE), ("ZY2", PatientState.DISCHARGED)]
    store.close()


def test_expiry_list_import_checks_each_row() -> None:
    lots, errors = parse_expiry_table(csv_table(
        f"gtin,lot,expiry\n{GAUZE},L1,2026-06-30\n{GAUZE},,2026-06-30\nABC,L2,2026-06-30\n{GAUZE},L3,30/06/2026\n"
        f"{GAUZE},L1,2027-01-01\n"))
    assert lots == [LotExpiry(GAUZE, "L1", dt.date(2026, 6, 30))]
    assert [(e.line, e.column) for e in errors] == [(3, "lot"), (4, "gtin"), (5, "expiry"), (6, "lot")]


# -- the catalog document ----------------------------------------------------------------------


def _charge_one_item(store: GatewayStore, tmp_path: Path, code: str) -> None:
    """A consume event goes through ingest and charging, as a handheld's scan does."""
    log = EventLog(tmp_path / "HH01.db", device="HH01")
    ev = log.append("consume", {"admission": PATIENT, "udi": code, "operator": "N0001", "dept": "CARD"})
    log.close()
    store.ingest(decode_batch("spd/v1/H1/HH01/events", encode_batch("H1", "HH01", [ev])))  # type: ignore[arg-type]
    ChargingWorker(store, bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")).run_once()


def test_catalog_document_carries_recalls_expiry_consumed_serials_and_the_census(
        store: GatewayStore, tmp_path: Path) -> None:
    now = time.time()
    import_recalled_lots(store, [RecalledLot(STENT, "L9999", "sterility breach")])
    import_lot_expiry(store, [LotExpiry(GAUZE, "G-OLD", dt.date(2025, 1, 31)), LotExpiry(GAUZE, "G-NEW",
                                                                                         dt.date(2030, 1, 31))])
    _charge_one_item(store, tmp_path, make_udi(gtin=STENT, lot="L1", serial="SN77", expiry=dt.date(2030, 1, 1)))
    import_census(store, [
        CensusRecord(PATIENT, PatientState.IN_HOUSE, "Z.S.", "5A", "CARD", "12", now - 3 * DAY),
        CensusRecord(OTHER, PatientState.DISCHARGED, "李*", "7B", "ORTH", "3", now - 9 * DAY, now - 2 * 3600),
        CensusRecord("ZY2025000001", PatientState.DISCHARGED, "", "", "", "", None, now - 60 * DAY)])
    doc = build_device_catalog(store, dept=None, discharge_grace_s=6 * 3600)
    assert doc["recalled_lots"] == [{"gtin": STENT, "lot": "L9999", "reason": "sterility breach"}]
    assert doc["lot_expiry"] == [{"gtin": GAUZE, "lot": "G-NEW", "expiry": "2030-01-31"},
                                 {"gtin": GAUZE, "lot": "G-OLD", "expiry": "2025-01-31"}]
    assert doc["consumed_serials"] == [f"{STENT}/SN77"]
    assert doc["patients"] == {
        "in_house": [PATIENT], "discharged": [OTHER], "discharge_grace_s": 6 * 3600,
        "records": {PATIENT: {"initials": "Z.S.", "ward": "5A", "dept": "CARD", "bed": "12"},
                    OTHER: {"initials": "李*", "ward": "7B", "dept": "ORTH", "bed": "3",
                            "discharged_at": int(now - 2 * 3600)}}}  # the discharge of 60 days ago is left out
    assert "Zhang" not in json.dumps(doc, ensure_ascii=False)

    cache = CatalogCache(tmp_path / "device" / "catalog.json")
    assert cache.apply(doc)
    log = EventLog(tmp_path / "device" / "events.db", device="HH-0001")
    consumed = ConsumedSerials(tmp_path / "device" / "events.db")
    handheld = Handheld(log, operator="N0001", dept="CARD", policy=ScanPolicy(cache, consumed))
    expiry = dt.date.today() + dt.timedelta(days=300)
    verdicts = [handheld.scan_pair(PATIENT, code).reason for code in (
        make_udi(gtin=STENT, lot="L9999", serial="SN1", expiry=expiry),  # recalled lot
        make_udi(gtin=STENT, lot="L1", serial="SN77", expiry=expiry),  # charged at the gateway already
        f"]d201{GAUZE}10G-OLD",  # no expiry in the code: the list says expired
        f"]d201{GAUZE}10G-NEW",
    )]
    assert verdicts == ["recalled_lot", "serial_already_consumed", "expired", ""]
    assert handheld.scan_pair(OTHER, make_udi(gtin=STENT, lot="L1", serial="SN2", expiry=expiry)).accepted
    consumed.close()
    log.close()


def test_discharged_patient_is_chargeable_during_the_grace_period_then_refused(
        store: GatewayStore, tmp_path: Path) -> None:
    discharged_at = dt.datetime(2026, 12, 2, 14, 0).timestamp()
    import_census(store, [CensusRecord(PATIENT, PatientState.DISCHARGED, "Z.S.", "5A", "CARD", "12", None,
                                       discharged_at)])
    cache = CatalogCache(tmp_path / "catalog.json")
    cache.apply(build_device_catalog(store, dept=None, discharge_grace_s=DAY))
    before_end = discharged_at + DAY - 60
    assert cache.patient_status(PATIENT, now=before_end) is PatientStatus.RECENTLY_DISCHARGED
    assert cache.patient_status(PATIENT, now=discharged_at + DAY) is PatientStatus.DISCHARGED
    info = cache.patient(PATIENT, now=before_end)
    assert info is not None
    assert (info.admission, info.initials, info.ward, info.dept, info.bed, info.status, info.discharged_at,
            info.chargeable_until) == (PATIENT, "Z.S.", "5A", "CARD", "12", PatientStatus.RECENTLY_DISCHARGED,
                                       discharged_at, discharged_at + DAY)
    assert cache.patient("ZY2099999999") is None

    consumed = ConsumedSerials(tmp_path / "c.db")
    code = make_udi(gtin=GAUZE, lot="L1", serial="S1", expiry=dt.date.today() + dt.timedelta(days=30))
    clock = {"now": before_end}
    policy = ScanPolicy(cache, consumed, clock=lambda: clock["now"])
    assert policy.check(admission=PATIENT, udi=_udi(code), dept="CARD") is None
    clock["now"] = discharged_at + DAY + 1
    refusal = policy.check(admission=PATIENT, udi=_udi(code), dept="CARD")
    assert refusal is not None and refusal.reason is ScanRefusal.PATIENT_DISCHARGED
    assert refusal.message == f"Patient {PATIENT} has been discharged on 2026-12-02 14:00: check the wristband."
    consumed.close()


def _udi(code: str) -> Any:
    from device.udi import parse_udi

    return parse_udi(code)


def test_a_document_from_an_older_gateway_still_parses(tmp_path: Path) -> None:
    doc: dict[str, Any] = {"schema": "spd-device-catalog/1", "dept": None, "items": [], "recalled_lots": [],
                           "dept_stock": {}, "consumed_serials": [],
                           "patients": {"in_house": [PATIENT], "discharged": [OTHER]}}
    doc["version"], doc["digest"] = 3, content_digest(doc)
    cache = CatalogCache(tmp_path / "catalog.json")
    assert cache.apply(doc)
    assert cache.patient_status(OTHER) is PatientStatus.DISCHARGED  # no discharge time: refused at once
    info = cache.patient(PATIENT)
    assert info is not None and (info.status, info.initials, info.ward) == (PatientStatus.IN_HOUSE, "", "")
    assert cache.lot_expiry(GAUZE, "L1") is None


def test_an_adt_fed_census_reaches_the_devices_only_once_the_site_says_it_is_complete(
        store: GatewayStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adt(store, AdtEvent.ADMIT, PATIENT)  # the feed started today: everyone admitted before is missing
    assert not census_complete(store)
    assert build_device_catalog(store, dept=None)["patients"] is None  # devices refuse nobody for it
    mark_census_complete(store, by="interface.eng")
    assert build_device_catalog(store, dept=None)["patients"]["in_house"] == [PATIENT]
    store.close()
    db = tmp_path / "gw.db"
    assert gateway_main(["census-ready", "--db", str(db), "--off", "--by", "spd.desk"]) == 0
    assert "census marked not complete (1 in house, 0 discharged)" in capsys.readouterr().out
    again = GatewayStore(db)
    assert build_device_catalog(again, dept=None)["patients"] is None
    again.close()
    # the go-live check: the counts, and nothing changes
    assert gateway_main(["census-ready", "--db", str(db), "--check"]) == 0
    assert capsys.readouterr().out.strip() == "census not marked complete: 1 in house, 0 discharged"
    again = GatewayStore(db)
    assert not census_complete(again)
    again.close()
    assert gateway_main(["census-ready", "--db", str(db)]) == 0
    assert "census marked complete (1 in house, 0 discharged); devices check wristbands against it from the next " \
           "catalog push" in capsys.readouterr().out
    assert gateway_main(["census-ready", "--db", str(db), "--check"]) == 0
    assert capsys.readouterr().out.strip() == "census complete: 1 in house, 0 discharged"


def test_a_census_snapshot_import_is_complete(store: GatewayStore) -> None:
    import_census(store, [CensusRecord(PATIENT)], replace_all=False)  # added to: not the whole census
    assert not census_complete(store)
    import_census(store, [CensusRecord(PATIENT)])
    assert census_complete(store)
