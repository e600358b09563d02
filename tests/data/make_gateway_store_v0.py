"""Make ``gateway_store_v0.db``: a gateway store as the release before the versioned schema left it.

The file was made once by running this script with the code of that release (the commit before the
data layer was added, where ``gateway/store.py`` still created its tables with ``CREATE TABLE IF NOT
EXISTS`` and added columns after looking at ``PRAGMA table_info``)::

    git worktree add /tmp/v0 <commit before the data layer>
    cd /tmp/v0 && make .venv/.installed
    .venv/bin/python <this file> tests/data/gateway_store_v0.db

It fills every table that release had: events (chained, one quarantined, one bad payload), charges
pending, accepted and parked, a credit booked by the HIS (a return of an accepted charge), catalog rows
with purchase terms, recalled lots, lot expiry dates, department stock, the patient census with ADT
details, staff, audit rows, device state, leases, cursors, command sequence numbers, a catalog version,
fleet pushes and link-watch rows. ``tests/test_data_migrations.py`` opens a copy with the new code and
checks every row is still there and the store is at the current schema version. The script is not run
by the tests: with today's code it would make a current store, not an old one.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from device.cabinet.allowlist import Role
from gateway import bridge
from gateway.audit import AuditAction, AuditLog
from gateway.catalog import CatalogEntry, RecalledLot, import_catalog, import_recalled_lots, set_dept_stock
from gateway.catalog_export import build_device_catalog
from gateway.census import (
    AdtEvent,
    AdtUpdate,
    CensusRecord,
    PatientState,
    apply_adt,
    import_census,
    mark_census_complete,
)
from gateway.charging import ChargingWorker
from gateway.commands import CommandSequence
from gateway.fleet import FLEET_SCHEMA
from gateway.his.http_adapter import HttpJsonAdapter
from gateway.his.sender import HisSender
from gateway.linking import LinkWatch
from gateway.lot_expiry import LotExpiry, import_lot_expiry
from gateway.staff import StaffMember, import_staff
from gateway.store import GatewayStore
from hw_sim.his_http import SimulatedHttpHis
from spd_common.wire import GENESIS_HASH, Batch, DeviceState, DeviceStatus, Event, EventKind, InvalidEvent, event_hash

STENT = "04012345678901"
T0 = 1_735_700_000_000


class Handheld:
    def __init__(self, store: GatewayStore, device: str) -> None:
        self.store, self.device, self.seq, self.prev = store, device, 0, GENESIS_HASH

    def emit(self, kind: EventKind, body: dict[str, Any]) -> None:
        self.seq += 1
        ts = T0 + self.seq * 60_000
        prev, self.prev = self.prev, event_hash(self.device, self.seq, ts, kind.value, body, self.prev)
        self.store.ingest(Batch(self.device, "H1", [Event(self.device, self.seq, ts, kind.value, body, prev,
                                                          self.prev)]), now=1_735_700_000.0 + self.seq)


def udi(serial: str) -> str:
    return f"]d201{STENT}17271231\x1d10LOT-A1\x1d21{serial}"


def main(out: Path) -> None:
    out.unlink(missing_ok=True)
    store = GatewayStore(out)
    import_catalog(store, [
        CatalogEntry(STENT, "IT-STENT", "C310001", "冠脉支架", "3.0x18mm", "ACME", 1_234_567, True, True,
                     supplier="ACME Med", vbp=True, vbp_price_fen=1_000_000),
        CatalogEntry("04012345678918", "IT-GAUZE", "C100002", "纱布", "10x10", "Cotton", 150, False, False),
    ])
    import_recalled_lots(store, [RecalledLot(STENT, "LOT-Z9", "sterility", "2025-01-02")])
    import_lot_expiry(store, [LotExpiry(STENT, "LOT-A1", dt.date(2027, 12, 31))])
    set_dept_stock(store, "心内科", [STENT])
    import_census(store, [CensusRecord("ZY0001", PatientState.IN_HOUSE, "Z.S.", "W3", "心内科", "12", 1_735_000_000.0,
                                       None, "import"),
                          CensusRecord("ZY0002", PatientState.DISCHARGED, "L.S.", "W3", "心内科", "14")])
    apply_adt(store, AdtUpdate(AdtEvent.TRANSFER, "ZY0001", bed="15", at=1_735_700_100.0), control_id="MSG0001")
    mark_census_complete(store, by="his-admin")
    import_staff(store, [StaffMember("N042", "BADGE-042", Role.NURSE, ("心内科",), None)])
    audit = AuditLog(store)
    audit.record("admin", AuditAction.STAFF_IMPORTED, rows=1)
    audit.record("admin", AuditAction.COMMAND_SENT, device="CAB-1", kind="unlock")
    seqs = CommandSequence(store)
    seqs.next("CAB-1")
    seqs.next("CAB-1")
    build_device_catalog(store, dept="心内科")
    store.hold_lease("charging", "gw-a", 30.0, now=1_735_700_000.0)
    store.update_device_state("H1", DeviceState("HH-1", DeviceStatus.ONLINE, backlog=2, version="1.4.0"))
    with store.transaction() as db:  # a push as Fleet.push writes it (Fleet needs a signer and a broker)
        for ddl in FLEET_SCHEMA:
            db.execute(ddl)
        db.execute("INSERT INTO fleet_desired VALUES ('CAB-1', 'H1', 'allowlist', 3, '{}', 1735700000.0, 'admin')")
        db.execute("INSERT INTO fleet_applied VALUES ('CAB-1', '{\"allowlist\": 2}', 1735700001.0)")

    config = bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")
    worker = ChargingWorker(store, config)
    hh = Handheld(store, "HH-1")

    def use(serial: str) -> None:
        hh.emit(EventKind.CONSUME, {"admission": "ZY0001", "udi": udi(serial), "operator": "N042", "dept": "心内科"})
        while worker.run_once():
            pass

    with SimulatedHttpHis(out.with_suffix(".his.db")) as his:
        sender = HisSender(store, HttpJsonAdapter(his.url, timeout_s=2.0), backoff_base_s=0.01)
        use("S1")
        sender.run_once(now=1e12)  # S1 accepted
        use("S2")
        his.answer_next(422, error="refused", message="unknown admission")
        sender.run_once(now=1e12)  # S2 parked
        hh.emit(EventKind.RETURN_UNUSED, {"udi": udi("S1"), "operator": "N043", "dept": "心内科"})
        while worker.run_once():
            pass
        sender.run_once(now=1e12)  # the credit of S1 accepted
    use("S3")  # stays pending
    hh.emit(EventKind.ALARM, {"code": "tamper"})
    store.ingest(Batch("HH-1", "H1", [], invalid=[InvalidEvent(hh.seq + 1, "bad_body", "no udi",
                                                               {"seq": hh.seq + 1})]))
    store.record_bad_payload("spd/H1/HH-1/events", "undecodable", "not CBOR", b"\xff\x00")
    cab = Handheld(store, "CAB-1")
    for serial in ("S3", "S9"):  # S3 linked to its charge, S9 never charged: a not_linked alarm
        cab.emit(EventKind.TAKEN, {"gtin": STENT, "serial": serial, "epc": "E-" + serial, "user": "N042",
                                   "session": "s1", "dept": "心内科"})
    now = [1_735_700_000.0]
    watch = LinkWatch(store, window_s=60.0, clock=lambda: now[0])
    now[0] += 3600.0
    watch.run_once()
    store.close()
    out.with_suffix(".his.db").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
