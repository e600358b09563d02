"""Validation at the scan against the cached catalog and lists: every refusal reason, the cache and its versions."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.catalog_cache import CatalogCache, CatalogDocumentError, PatientStatus
from device.eventlog import EventLog
from device.handheld import Handheld, ScanOutcome
from device.scan_policy import ConsumedSerials, ScanPolicy, ScanRefusal
from gateway.catalog import (
    CatalogEntry,
    RecalledLot,
    import_catalog,
    import_recalled_lots,
    set_dept_stock,
    set_patient_census,
)
from gateway.catalog_export import build_device_catalog, catalog_version
from gateway.store import GatewayStore
from hw_sim.udi_gen import make_gtin, make_udi
from spd_common.catalog_doc import content_digest

TODAY = dt.date(2026, 11, 23)
PATIENT = "ZY2026001234"
_rng = random.Random(7)
STENT = make_gtin(_rng)
GAUZE = make_gtin(_rng)
UNLISTED = make_gtin(_rng)


def entries() -> list[CatalogEntry]:
    return [
        CatalogEntry(STENT, "HC00001", "33100001", "冠脉药物洗脱支架", "3.0x18mm", "微创医疗", 589000, True, True,
                     "国药控股", True, 589000),
        CatalogEntry(GAUZE, "HC00007", "33100007", "可吸收止血纱布", "5x7.5cm", "强生", 21800, True, False),
    ]


def udi(gtin: str = STENT, *, serial: str = "SN0001", lot: str = "L2211", expiry: dt.date = TODAY) -> str:
    return make_udi(gtin=gtin, lot=lot, serial=serial, expiry=expiry)


@dataclass
class Rig:
    store: GatewayStore
    cache: CatalogCache
    log: EventLog
    consumed: ConsumedSerials
    handheld: Handheld

    def push(self, dept: str | None = "OR-3") -> dict[str, Any]:
        doc = build_device_catalog(self.store, dept=dept)
        self.cache.apply(doc)
        return doc

    def scan(self, code: str, wristband: str = PATIENT) -> ScanOutcome:
        return self.handheld.scan_pair(wristband, code)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = GatewayStore(tmp_path / "gateway.db")
    import_catalog(store, entries())
    cache = CatalogCache(tmp_path / "device" / "catalog.json")
    log = EventLog(tmp_path / "device" / "events.db", device="HH-0001")
    consumed = ConsumedSerials(tmp_path / "device" / "events.db")
    policy = ScanPolicy(cache, consumed, today=lambda: TODAY)
    handheld = Handheld(log, operator="N0001", dept="OR-3", policy=policy)
    r = Rig(store, cache, log, consumed, handheld)
    r.push()
    yield r
    consumed.close()
    log.close()
    store.close()


def refused(outcome: ScanOutcome, reason: ScanRefusal) -> None:
    assert not outcome.accepted
    assert outcome.reason == reason.value
    assert outcome.event.kind == "refused_scan"
    assert outcome.event.body["reason"] == reason.value


def test_good_scan_is_consumed(rig: Rig) -> None:
    outcome = rig.scan(udi())
    assert outcome.accepted
    assert outcome.event.kind == "consume"
    assert rig.consumed.contains(STENT, "SN0001")


def test_item_expiring_today_is_still_usable(rig: Rig) -> None:
    assert rig.scan(udi(expiry=TODAY)).accepted


def test_expired_item_is_refused_and_nothing_is_consumed(rig: Rig) -> None:
    code = udi(expiry=TODAY - dt.timedelta(days=1))
    outcome = rig.scan(code)
    refused(outcome, ScanRefusal.EXPIRED)
    assert outcome.detail == (
        f"冠脉药物洗脱支架 ({STENT}) expired on 2026-11-22. Do not use; return it to the SPD."
    )
    assert outcome.event.body == {
        "reason": "expired", "detail": outcome.detail, "wristband": PATIENT, "udi": code, "operator": "N0001",
        "dept": "OR-3", "catalog_version": 1,
    }
    assert [e.kind for e in rig.log.events()] == ["refused_scan"]
    assert len(rig.consumed) == 0


def test_unknown_item_is_refused(rig: Rig) -> None:
    outcome = rig.scan(udi(UNLISTED))
    refused(outcome, ScanRefusal.UNKNOWN_ITEM)
    assert outcome.detail == f"Item {UNLISTED} is not in the catalog: do not use, call the SPD desk."


def test_recalled_lot_is_refused_with_the_recall_reason(rig: Rig) -> None:
    import_recalled_lots(rig.store, [RecalledLot(STENT, "L2211", "coating defect")])
    rig.push()
    outcome = rig.scan(udi(lot="L2211"))
    refused(outcome, ScanRefusal.RECALLED_LOT)
    assert outcome.detail == (
        f"Lot L2211 of 冠脉药物洗脱支架 ({STENT}) is recalled: coating defect. Do not use; return it to the SPD."
    )
    assert rig.scan(udi(lot="L9999", serial="SN0002")).accepted


def test_recall_of_every_lot_refuses_any_lot(rig: Rig) -> None:
    import_recalled_lots(rig.store, [RecalledLot(STENT, "*", "")])
    rig.push()
    refused(rig.scan(udi(lot="L0001")), ScanRefusal.RECALLED_LOT)


def test_high_value_item_without_serial_is_refused(rig: Rig) -> None:
    code = "]d2" + f"01{STENT}17{TODAY:%y%m%d}10L2211"
    refused(rig.scan(code), ScanRefusal.MISSING_SERIAL)


def test_serial_consumed_at_the_gateway_is_refused(rig: Rig) -> None:
    with rig.store._engine.transaction() as db:
        db.execute(
            "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, created_at) "
            "VALUES ('C1', 'HH-0009', 1, 'ZY0000000001', ?, '{}', '', strftime('%s', 'now'))",
            (f"{STENT}/SN0001",),
        )
    doc = rig.push()
    assert doc["consumed_serials"] == [f"{STENT}/SN0001"]
    outcome = rig.scan(udi(serial="SN0001"))
    refused(outcome, ScanRefusal.SERIAL_ALREADY_CONSUMED)
    assert outcome.detail == (
        f"冠脉药物洗脱支架 ({STENT}) serial SN0001 was already used. A single-use item cannot be charged twice; "
        "keep it aside and report it."
    )


def test_serial_consumed_earlier_on_this_device_is_refused_offline(rig: Rig) -> None:
    assert rig.scan(udi(serial="SN0005")).accepted
    refused(rig.scan(udi(serial="SN0005"), "ZY2026009999"), ScanRefusal.SERIAL_ALREADY_CONSUMED)
    assert [e.kind for e in rig.log.events()] == ["consume", "refused_scan"]


def test_device_consumptions_missed_before_a_crash_are_caught_up_from_the_log(rig: Rig, tmp_path: Path) -> None:
    rig.log.append("consume", {"admission": PATIENT, "udi": udi(serial="SN0042"), "operator": "N0001",
                               "dept": "OR-3"})
    assert not rig.consumed.contains(STENT, "SN0042")
    assert rig.consumed.catch_up(rig.log) == 1
    assert rig.consumed.catch_up(rig.log) == 0
    refused(rig.scan(udi(serial="SN0042")), ScanRefusal.SERIAL_ALREADY_CONSUMED)


def test_item_not_stocked_in_the_department_is_refused(rig: Rig) -> None:
    set_dept_stock(rig.store, "OR-3", [GAUZE])
    rig.push()
    outcome = rig.scan(udi())
    refused(outcome, ScanRefusal.NOT_STOCKED_IN_DEPT)
    assert outcome.detail == (
        f"冠脉药物洗脱支架 ({STENT}) is not stocked in department OR-3: check the item, call the SPD desk."
    )


def test_department_without_a_stock_list_is_not_refused(rig: Rig) -> None:
    set_dept_stock(rig.store, "ICU", [GAUZE])
    doc = rig.push(dept="OR-3")
    assert doc["dept_stock"] == {}
    assert rig.scan(udi()).accepted


def test_discharged_patient_is_refused(rig: Rig) -> None:
    set_patient_census(rig.store, in_house=["ZY2026000001"], discharged=[PATIENT])
    rig.push()
    outcome = rig.scan(udi())
    refused(outcome, ScanRefusal.PATIENT_DISCHARGED)
    assert outcome.detail == f"Patient {PATIENT} has been discharged: check the wristband."


def test_unknown_patient_is_refused_when_a_census_is_cached(rig: Rig) -> None:
    set_patient_census(rig.store, in_house=["ZY2026000001"], discharged=[])
    rig.push()
    refused(rig.scan(udi()), ScanRefusal.PATIENT_UNKNOWN)
    assert rig.scan(udi(serial="SN0002"), "ZY2026000001").accepted


def test_without_a_census_any_readable_wristband_is_accepted(rig: Rig) -> None:
    assert rig.cache.patient_status(PATIENT) is PatientStatus.NO_CENSUS
    assert rig.scan(udi()).accepted


def test_without_any_cached_catalog_only_local_checks_apply(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", device="HH-0002")
    consumed = ConsumedSerials(tmp_path / "events.db")
    policy = ScanPolicy(CatalogCache(tmp_path / "catalog.json"), consumed, today=lambda: TODAY)
    handheld = Handheld(log, operator="N0001", dept="OR-3", policy=policy)
    assert handheld.scan_pair(PATIENT, udi(UNLISTED)).accepted
    refused(handheld.scan_pair(PATIENT, udi(UNLISTED)), ScanRefusal.SERIAL_ALREADY_CONSUMED)
    refused(handheld.scan_pair(PATIENT, udi(serial="X", expiry=dt.date(2026, 1, 1))), ScanRefusal.EXPIRED)
    consumed.close()
    log.close()


# -- the cache ------------------------------------------------------------------------------


def test_applied_catalog_survives_a_restart(rig: Rig) -> None:
    again = CatalogCache(rig.cache.path)
    assert (again.version, again.digest) == (rig.cache.version, rig.cache.digest)
    item = again.item(STENT)
    assert item is not None
    assert (item.name, item.price_fen, item.vbp) == ("冠脉药物洗脱支架", 589000, True)
    assert not rig.cache.path.with_name("catalog.json.tmp").exists()


def test_version_moves_only_when_the_content_changes(rig: Rig) -> None:
    first = build_device_catalog(rig.store, dept="OR-3")
    assert first["version"] == 1
    assert build_device_catalog(rig.store, dept="OR-3")["version"] == 1
    assert rig.cache.apply(first) is False
    set_dept_stock(rig.store, "OR-3", [STENT])
    second = build_device_catalog(rig.store, dept="OR-3")
    assert second["version"] == 2
    assert catalog_version(rig.store, dept="OR-3") == (2, second["digest"])
    assert rig.cache.apply(second) is True
    with pytest.raises(CatalogDocumentError) as err:
        rig.cache.apply(first)
    assert err.value.reason == "stale_version"


def test_tampered_document_is_refused_and_the_cached_copy_is_kept(rig: Rig) -> None:
    doc = build_device_catalog(rig.store, dept="OR-3")
    forged = copy.deepcopy(doc)
    forged["version"] = 99
    forged["items"][0]["price_fen"] = 1
    with pytest.raises(CatalogDocumentError) as err:
        rig.cache.apply(forged)
    assert err.value.reason == "bad_digest"
    assert rig.cache.version == 1
    assert json.loads(rig.cache.path.read_text(encoding="utf-8"))["version"] == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(schema="spd-device-catalog/9"), "unknown_schema"),
        (lambda d: d["items"][0].update(gtin="12345"), "bad_document"),
        (lambda d: d["items"][0].update(high_value="yes"), "bad_document"),
        (lambda d: d["items"].append(dict(d["items"][0])), "bad_document"),
        (lambda d: d.update(consumed_serials="x"), "bad_document"),
        (lambda d: d.update(patients={"in_house": [1]}), "bad_document"),
    ],
)
def test_malformed_documents_are_refused(rig: Rig, mutate: Any, reason: str) -> None:
    doc = build_device_catalog(rig.store, dept="OR-3")
    mutate(doc)
    doc["version"] = 5
    doc["digest"] = content_digest(doc)
    with pytest.raises(CatalogDocumentError) as err:
        rig.cache.apply(doc)
    assert err.value.reason == reason
    assert rig.cache.version == 1


def test_same_version_with_other_content_is_a_conflict(rig: Rig) -> None:
    doc = build_device_catalog(rig.store, dept="OR-3")
    doc["recalled_lots"] = [{"gtin": STENT, "lot": "L1", "reason": ""}]
    doc["digest"] = content_digest(doc)
    with pytest.raises(CatalogDocumentError) as err:
        rig.cache.apply(doc)
    assert err.value.reason == "version_conflict"
