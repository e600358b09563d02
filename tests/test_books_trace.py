"""Trace in the three directions: item to patient, patient to items, lot to patients and to the rest in stock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import bridge, cli
from gateway.books.projection import catch_up
from gateway.books.trace import trace_item, trace_lot, trace_patient
from gateway.charging import ChargingWorker
from gateway.store import GatewayStore

from books_helpers import CATHETER, PATIENT, PATIENT2, STENT, CabinetFeed, Clock, HandheldFeed, Site, gs1


@pytest.fixture
def store(store_location: Path | str) -> Iterator[GatewayStore]:
    s = GatewayStore(store_location)
    s.upsert_catalog([(STENT, "HC-STENT", "C-STENT", "Coronary stent", "3.0x18", "Acme", 580000, 1, 1),
                      (CATHETER, "HC-CATH", "C-CATH", "Catheter", "6F", "Acme", 12000, 1, 1)])
    yield s
    s.close()


@pytest.fixture
def ward(tmp_path: Path, store: GatewayStore) -> Site:
    """Stents of lot L1 (S1..S4) in CB01; S1 used on PATIENT (accepted by the HIS), S2 on PATIENT2 (pending),
    S2 scanned again on PATIENT (refused: re-use), a catheter on PATIENT; S3 still in the cabinet."""
    site = Site(tmp_path, store, Clock())
    cabinet = CabinetFeed(site, "CB01", "CATH-LAB")
    nurse, other = HandheldFeed(site, "HH01", "CATH-LAB", "N0001"), HandheldFeed(site, "HH02", "CATH-LAB", "N0002")
    for s in ("S1", "S2", "S3"):
        cabinet.restock(STENT, s, lot="L1")
    cabinet.restock(STENT, "S4", lot="L2")
    cabinet.take(STENT, "S1", user="N0001")
    cabinet.take(STENT, "S2", user="N0005")
    site.clock.t += 120
    for feed, patient, label in ((nurse, PATIENT, gs1(STENT, lot="L1", serial="S1")),
                                 (other, PATIENT2, gs1(STENT, serial="S2")),  # a code without its lot
                                 (nurse, PATIENT, gs1(STENT, lot="L1", serial="S2")),
                                 (nurse, PATIENT, gs1(CATHETER, lot="K", serial="C9"))):
        site.clock.t += 60
        feed.consume(patient, label)
    ChargingWorker(store, bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")).run_once()
    charges = {c.device: c.charge_id for c in store.pending_charges() if c.seq == 1}
    store.mark_accepted(charges["HH01"], "AA", "HIS-778")
    catch_up(store)
    return site


def test_an_item_traces_to_its_patient_operator_cabinet_and_charge(store: GatewayStore, ward: Site) -> None:
    t = trace_item(store, STENT, "S1")
    (use,) = t.uses
    assert (use.admission, use.operator, use.device, use.cabinet, use.taken_by, use.charge_status, use.his_ref,
            use.name) == (PATIENT, "N0001", "HH01", "CB01", "N0001", "accepted", "HIS-778", "Coronary stent")
    assert use.charge_id.endswith("0000000001")
    assert [m.kind for m in t.movements] == ["restock", "take", "use"]
    assert t.on_hand == []
    reused = trace_item(store, STENT, "S2")
    assert [(u.admission, u.charge_status, u.refusal) for u in reused.uses] == [
        (PATIENT2, "pending", ""), (PATIENT, "refused", "serial_already_consumed")]
    assert [(s.location, s.qty) for s in trace_item(store, STENT, "S3").on_hand] == [("CB01", 1)]


def test_a_patient_traces_to_every_item_lot_and_serial_with_its_charge(store: GatewayStore, ward: Site) -> None:
    got = [(u.gtin, u.lot, u.serial, u.charge_status) for u in trace_patient(store, PATIENT)]
    assert got == [(STENT, "L1", "S1", "accepted"), (STENT, "L1", "S2", "refused"), (CATHETER, "K", "C9", "pending")]
    assert trace_patient(store, "ZY9999999999") == []


def test_a_lot_traces_to_every_patient_and_to_where_the_rest_is(store: GatewayStore, ward: Site) -> None:
    t = trace_lot(store, STENT, "L1")
    assert [(u.admission, u.serial) for u in t.uses] == [(PATIENT, "S1"), (PATIENT2, "S2"), (PATIENT, "S2")]
    assert [(s.location, s.serial) for s in t.on_hand] == [("CB01", "S3")]
    other = trace_lot(store, STENT, "L2")
    assert other.uses == [] and [s.serial for s in other.on_hand] == ["S4"]


def test_trace_command_in_json(tmp_path: Path, store_location: Path | str, store: GatewayStore, ward: Site,
                               capsys: pytest.CaptureFixture[str]) -> None:
    db = str(store_location)
    assert cli.main(["trace", "--db", db, "--lot", f"{STENT}/L1", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["patients"] == 2
    assert [r["admission"] for r in doc["uses"]["rows"]] == [PATIENT, PATIENT2, PATIENT]
    assert [r["serial"] for r in doc["rest_of_the_lot_on_hand"]["rows"]] == ["S3"]
    assert cli.main(["trace", "--db", db, "--item", STENT]) == 2
