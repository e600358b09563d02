"""Returns of unused items end to end: return_unused event → credit in the outbox → simulated HIS → ledger.

Every test runs against both HIS interfaces (HL7 v2 over MLLP, JSON over HTTP) through `HisUnderTest`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import bridge
from gateway.charging import ChargingWorker
from gateway.his.adapter import HisAdapter
from gateway.his.http_adapter import HttpJsonAdapter
from gateway.his.mllp_adapter import MllpAdapter
from gateway.his.sender import HisSender
from gateway.store import GatewayStore
from hw_sim.his import SimulatedHis
from hw_sim.his_http import SimulatedHttpHis
from spd_common.wire import GENESIS_HASH, Batch, Event, EventKind, event_hash

STENT = "04012345678901"
CONFIG = bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")
T0 = 1_735_700_000_000  # 2025-01-01 10:53:20 at UTC+8


class Handheld:
    """Writes hash-chained events of one device straight into the gateway store."""

    def __init__(self, store: GatewayStore, device: str) -> None:
        self.store, self.device, self.seq, self.prev = store, device, 0, GENESIS_HASH

    def emit(self, kind: EventKind, body: dict[str, Any]) -> tuple[str, int]:
        ev = self.make(kind, body)
        self.store.ingest(Batch(self.device, "H1", [ev]))
        return self.device, self.seq

    def make(self, kind: EventKind, body: dict[str, Any]) -> Event:
        """The next event of this device, not yet delivered (a test delivers it when it likes)."""
        self.seq += 1
        ts = T0 + self.seq * 60_000
        prev, self.prev = self.prev, event_hash(self.device, self.seq, ts, kind.value, body, self.prev)
        return Event(self.device, self.seq, ts, kind.value, body, prev, self.prev)

    def consume(self, serial: str, admission: str = "ZY0001") -> tuple[str, int]:
        return self.emit(EventKind.CONSUME, {"admission": admission, "udi": udi(serial), "operator": "N042",
                                             "dept": "心内科"})

    def give_back(self, serial: str, **extra: Any) -> tuple[str, int]:
        return self.emit(EventKind.RETURN_UNUSED, {"udi": udi(serial), "operator": "N043", "dept": "心内科", **extra})


def udi(serial: str) -> str:
    return f"]d201{STENT}17271231\x1d10LOT-A1\x1d21{serial}"


class HisUnderTest:
    """One simulated HIS, over MLLP or HTTP, seen through what these tests ask of it."""

    def __init__(self, protocol: str, sim: SimulatedHis | SimulatedHttpHis) -> None:
        self.protocol, self.sim = protocol, sim

    def adapter(self) -> HisAdapter:
        if isinstance(self.sim, SimulatedHttpHis):
            return HttpJsonAdapter(self.sim.url, timeout_s=2.0)
        return MllpAdapter("127.0.0.1", self.sim.port, timeout_s=2.0)

    def credits(self) -> list[tuple[str, str, str, str, int]]:
        """(credit id, original charge id, admission, charge code, amount in fen, negative) as booked."""
        if isinstance(self.sim, SimulatedHttpHis):
            return [(c.credit_id, c.original_charge_id, c.admission, c.charge_code, c.amount_fen)
                    for c in self.sim.credits()]
        return [(c.txn_id, c.original_txn_id, c.admission, c.charge_code, int(c.amount * 100))
                for c in self.sim.credits()]

    def charges(self) -> list[tuple[str, str]]:
        """(charge id, admission) as booked."""
        if isinstance(self.sim, SimulatedHttpHis):
            return [(c.charge_id, c.admission) for c in self.sim.charges()]
        return [(c.txn_id, c.admission) for c in self.sim.charges()]

    def answers(self) -> list[tuple[str | None, bool]]:
        """(id, booked) for every message received, in order."""
        if isinstance(self.sim, SimulatedHttpHis):
            return [(cid, status == 201) for cid, status, _ in self.sim.answers()]
        return [(cid, answer == "AA") for cid, answer in self.sim.answers()]

    def refuse_next(self, text: str) -> None:
        if isinstance(self.sim, SimulatedHttpHis):
            self.sim.answer_next(422, error="refused", message=text)
        else:
            self.sim.answer_next("AE", text=text)

    def message(self, request: bridge.CreditRequest, credit_id: str) -> str:
        """The credit as the sender hands it to this HIS's adapter."""
        if isinstance(self.sim, SimulatedHttpHis):
            return json.dumps({**request._asdict(), "credit_id": credit_id})
        return bridge.render_credit(request, CONFIG)

    def go_down(self) -> None:
        self.sim.go_down()

    def come_up(self) -> None:
        self.sim.come_up()


class Gateway:
    """Store, charging worker and HIS sender of one gateway, stepped by the test."""

    def __init__(self, store: GatewayStore, his: HisUnderTest) -> None:
        self.store = store
        self.worker = ChargingWorker(store, CONFIG)
        self.sender = HisSender(store, his.adapter(), backoff_base_s=0.01)

    def settle(self) -> None:
        while self.worker.run_once():
            pass
        while self.sender.run_once(now=1e12):
            pass

    def charge_id(self, key: tuple[str, int]) -> str:
        return str(self.store._engine.query("SELECT charge_id FROM charges WHERE device = ? AND seq = ?", key)[0][0])

    def returned(self, key: tuple[str, int]) -> tuple[Any, ...]:
        return self.store._engine.query(
            "SELECT outcome, detail, charge_id, credit_id FROM returns WHERE device = ? AND seq = ?", key)[0]


@pytest.fixture(params=[("sqlite", "mllp"), ("sqlite", "http"), ("postgresql", "mllp")], ids="-".join)
def engine_and_his(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The store's engine and the HIS's protocol: both protocols on SQLite, and the SQL once more on PostgreSQL."""
    return tuple(request.param)  # type: ignore[return-value]


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, engine_and_his: tuple[str, str]) -> Iterator[GatewayStore]:
    location = request.getfixturevalue("pg_store_url") if engine_and_his[0] == "postgresql" else tmp_path / "gateway.db"
    gateway_store = GatewayStore(location, synchronous="OFF")
    gateway_store.upsert_catalog([(STENT, "IT-STENT", "C310001", "冠脉支架", "3.0x18mm", "ACME", 1_234_567, 1, 1)])
    yield gateway_store
    gateway_store.close()


@pytest.fixture
def his(tmp_path: Path, engine_and_his: tuple[str, str]) -> Iterator[HisUnderTest]:
    protocol = engine_and_his[1]
    sim: SimulatedHis | SimulatedHttpHis = (
        SimulatedHis(tmp_path / "his.db") if protocol == "mllp" else SimulatedHttpHis(tmp_path / "his.db"))
    with sim:
        yield HisUnderTest(protocol, sim)


def test_return_after_charge_credits_the_patient_at_the_his(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    used = hh.consume("SN1")
    gateway.settle()
    back = hh.give_back("SN1", reason="not opened")
    gateway.settle()
    charge_id = gateway.charge_id(used)
    outcome, _detail, original, credit_id = gateway.returned(back)
    assert (outcome, original) == ("credited", charge_id)
    assert his.credits() == [(credit_id, charge_id, "ZY0001", "C310001", -1_234_567)]
    assert his.charges() == [(charge_id, "ZY0001")]
    assert store._engine.query("SELECT status FROM charges WHERE charge_id = ?", (credit_id,)) == [("accepted",)]
    assert store._engine.query("SELECT entry, charge_id, amount_fen FROM consumption_ledger ORDER BY entry") == [
        ("charge", charge_id, 1_234_567), ("credit", credit_id, -1_234_567)]


def test_credit_is_idempotent_on_the_return_event(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    hh.consume("SN1")
    back = hh.give_back("SN1")
    gateway.settle()
    credit_id = gateway.returned(back)[3]
    assert credit_id == render_id(back)
    with store._engine.transaction() as db:
        db.execute("UPDATE cursors SET value = 0 WHERE name = 'charging'")
    gateway.settle()  # the whole history again: no second credit, no second charge
    assert store._engine.query("SELECT COUNT(*) FROM charges")[0][0] == 2
    assert store._engine.query("SELECT COUNT(*) FROM returns")[0][0] == 1
    assert len(his.credits()) == 1


def render_id(key: tuple[str, int]) -> str:
    import hashlib

    return hashlib.sha256(key[0].encode()).hexdigest()[:10].upper() + f"{key[1]:010d}"


def test_return_while_charge_is_pending_is_sent_after_it(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    his.go_down()
    used = hh.consume("SN1")
    back = hh.give_back("SN1")
    while gateway.worker.run_once():
        pass
    gateway.sender.run_once(now=1e12)  # HIS down: the charge waits for a retry, the credit behind it
    assert store._engine.query("SELECT status FROM charges ORDER BY id") == [("pending",), ("pending",)]
    his.come_up()
    gateway.settle()  # a clock past every backoff
    order = [control for control, booked in his.answers() if booked]
    assert order == [gateway.charge_id(used), gateway.returned(back)[3]]
    assert len(his.credits()) == 1


def test_return_of_item_never_charged_restores_stock_without_his_message(store: GatewayStore,
                                                                         his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    back = hh.give_back("SN9")
    gateway.settle()
    assert gateway.returned(back) == ("not_charged", "no charge for this item: stock restored", None, None)
    assert his.answers() == []
    assert store._engine.query("SELECT COUNT(*) FROM charges")[0][0] == 0


def test_restocked_item_may_be_used_again_once_the_credit_is_booked(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    hh.consume("SN1")
    gateway.settle()
    hh.give_back("SN1")
    gateway.settle()
    again = hh.consume("SN1", admission="ZY0002")
    gateway.settle()
    assert store._engine.query("SELECT status, admission FROM charges WHERE device = ? AND seq = ?", again) == [
        ("accepted", "ZY0002")]
    assert [admission for _, admission in his.charges()] == ["ZY0001", "ZY0002"]


def test_item_not_restocked_stays_consumed_after_credit(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    hh.consume("SN1")
    gateway.settle()
    hh.give_back("SN1", restocked=False, reason="package opened")
    gateway.settle()
    again = hh.consume("SN1", admission="ZY0002")
    gateway.settle()
    assert store._engine.query("SELECT reason FROM charge_rejects WHERE device = ? AND seq = ?", again) == [
        ("serial_already_consumed",)]
    assert len(his.credits()) == 1 and len(his.charges()) == 1


def test_reuse_before_the_credit_is_booked_is_refused(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    hh.consume("SN1")
    gateway.settle()
    hh.give_back("SN1")
    again = hh.consume("SN1", admission="ZY0002")
    while gateway.worker.run_once():
        pass
    assert store._engine.query("SELECT reason FROM charge_rejects WHERE device = ? AND seq = ?", again) == [
        ("serial_already_consumed",)]


def test_second_return_of_the_same_charge_is_refused(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    used = hh.consume("SN1")
    first = hh.give_back("SN1", restocked=False)
    second = hh.give_back("SN1", restocked=False)
    gateway.settle()
    assert gateway.returned(first)[0] == "credited"
    outcome, detail, _, credit = gateway.returned(second)
    assert (outcome, detail, credit) == ("refused", f"charge {gateway.charge_id(used)} already returned by HH01 seq 2",
                                         None)
    assert len(his.credits()) == 1


def test_return_of_parked_charge_voids_it_without_credit(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    his.refuse_next("patient discharged")
    used = hh.consume("SN1")
    gateway.settle()
    back = hh.give_back("SN1")
    gateway.settle()
    charge_id = gateway.charge_id(used)
    assert gateway.returned(back)[0] == "voided"
    assert store.requeue_parked(charge_id) is False
    assert his.credits() == [] and his.charges() == []


def test_unreadable_return_is_recorded_as_refused(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    back = hh.emit(EventKind.RETURN_UNUSED, {"udi": "garbage", "operator": "N1", "dept": "D"})
    flag = hh.give_back("SN1", restocked="yes")
    gateway.settle()
    assert gateway.returned(back)[:2] == ("refused", "bad AI at 0")
    assert gateway.returned(flag)[:2] == ("refused", "restocked must be true or false")


def test_simulated_his_refuses_a_credit_for_an_unknown_charge(his: HisUnderTest) -> None:
    request = bridge.CreditRequest("CAB-01", 5, T0, "N1", "D", "AAAAAAAAAA0000000001", "ZY0001", STENT, "", "S1", "",
                                   "IT", "C310001", "n", "", "", 100)
    adapter = his.adapter()
    try:
        result = adapter.send(render_id(("CAB-01", 5)), his.message(request, render_id(("CAB-01", 5))))
    finally:
        adapter.close()
    assert (result.outcome.value, result.code) == ("rejected", "AE" if his.protocol == "mllp" else "422")
    assert his.credits() == []


def test_credit_line_record_names_the_original(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    used = hh.consume("SN1")
    back = hh.give_back("SN1")
    gateway.settle()
    credit_id = gateway.returned(back)[3]
    [(line,)] = store._engine.query("SELECT line FROM charges WHERE charge_id = ?", (credit_id,))
    record = json.loads(line)
    assert (record["original_charge_id"], record["credit_id"], record["price_fen"]) == (
        gateway.charge_id(used), credit_id, 1_234_567)


# -- a charged item that comes back into a cabinet ----------------------------------


def cabinet_item(serial: str, **extra: Any) -> dict[str, Any]:
    """The body of a cabinet item event (`taken`, `returned`, `restocked`) as the RFID count records it."""
    return {"epc": f"3034{serial}", "gtin": STENT, "serial": serial, "session": "S7", "user": "N0007",
            "role": "nurse", "dept": "心内科", **extra}


def test_charged_item_put_back_into_a_cabinet_is_credited_once(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, cab = Gateway(store, his), Handheld(store, "CB01")
    cab.emit(EventKind.TAKEN, cabinet_item("SN1"))
    used = cab.consume("SN1")
    gateway.settle()
    back = cab.emit(EventKind.RETURNED, cabinet_item("SN1"))
    gateway.settle()
    outcome, _detail, original, credit_id = gateway.returned(back)
    assert (outcome, original) == ("credited", gateway.charge_id(used))
    assert store._engine.query("SELECT operator, restocked, reason FROM returns WHERE device = ? AND seq = ?",
                               back) == [
        ("N0007", 1, "put back into cabinet CB01 (returned)")]
    assert his.credits() == [(credit_id, original, "ZY0001", "C310001", -1_234_567)]
    # it went back into stock: the next patient may be charged for it
    again = cab.consume("SN1", admission="ZY0002")
    gateway.settle()
    assert store._engine.query("SELECT status FROM charges WHERE device = ? AND seq = ?", again) == [("accepted",)]
    with store._engine.transaction() as db:  # the whole history again: still one credit
        db.execute("UPDATE cursors SET value = 0 WHERE name = 'charging'")
    gateway.settle()
    assert len(his.credits()) == 1


def test_item_taken_and_put_back_uncharged_is_no_credit(store: GatewayStore, his: HisUnderTest) -> None:
    gateway, cab = Gateway(store, his), Handheld(store, "CB01")
    cab.emit(EventKind.TAKEN, cabinet_item("SN1"))
    cab.emit(EventKind.RETURNED, cabinet_item("SN1"))
    cab.emit(EventKind.RESTOCKED, cabinet_item("SN2", role="restocker"))
    gateway.settle()
    assert store._engine.query("SELECT COUNT(*) FROM returns")[0][0] == 0
    assert his.answers() == []


def test_item_returned_unused_then_put_back_into_the_cabinet_is_credited_once(
    store: GatewayStore, his: HisUnderTest
) -> None:
    gateway, hh, cab = Gateway(store, his), Handheld(store, "HH01"), Handheld(store, "CB01")
    hh.consume("SN1")
    gateway.settle()
    hh.give_back("SN1", restocked=False)
    back = cab.emit(EventKind.RETURNED, cabinet_item("SN1"))
    gateway.settle()
    assert gateway.returned(back)[0] == "refused"
    assert len(his.credits()) == 1


@pytest.mark.parametrize("same_batch", [False, True])
@pytest.mark.parametrize("kind", [EventKind.RETURN_UNUSED, EventKind.RETURNED])
def test_return_stored_before_its_consumption_is_credited(
    store: GatewayStore, his: HisUnderTest, kind: EventKind, same_batch: bool
) -> None:
    """Batches of one device can reach two gateway instances and be stored in either order."""
    gateway, dev = Gateway(store, his), Handheld(store, "CB01")
    consume = dev.make(EventKind.CONSUME, {"admission": "ZY0001", "udi": udi("SN1"), "operator": "N042",
                                           "dept": "心内科"})
    back = dev.make(kind, {"udi": udi("SN1"), "operator": "N043", "dept": "心内科"} if kind == EventKind.RETURN_UNUSED
                    else cabinet_item("SN1"))
    store.ingest(Batch("CB01", "H1", [back]))
    if not same_batch:
        gateway.settle()
    store.ingest(Batch("CB01", "H1", [consume]))
    gateway.settle()
    outcome, _detail, original, credit_id = gateway.returned(("CB01", back.seq))
    assert (outcome, original) == ("credited", gateway.charge_id(("CB01", consume.seq)))
    assert [(c[0], c[1]) for c in his.credits()] == [(credit_id, original)]
    assert store._engine.query("SELECT COUNT(*) FROM returns")[0][0] == 1


def test_credit_queued_behind_a_charge_the_his_then_refuses_is_voided_not_sent(
    store: GatewayStore, his: HisUnderTest
) -> None:
    """The return was recorded while the charge was still pending; the HIS then refused the charge for good."""
    gateway, hh = Gateway(store, his), Handheld(store, "HH01")
    his.refuse_next("patient discharged")
    used = hh.consume("SN1")
    back = hh.give_back("SN1", restocked=False)
    gateway.settle()
    charge_id = gateway.charge_id(used)
    outcome, detail, original, credit_id = gateway.returned(back)
    assert (outcome, original) == ("voided", charge_id)
    assert detail == f"charge {charge_id} was parked, never booked: credit {credit_id} voided"
    assert store._engine.query("SELECT charge_id, status FROM charges ORDER BY id") == [(charge_id, "parked"),
                                                                                (credit_id, "voided")]
    assert [cid for cid, _ in his.answers()] == [charge_id]  # the credit never went out
    assert his.credits() == [] and his.charges() == []
    assert store.requeue_parked(charge_id) is False  # its item was given back
    assert store.counts()["credits_voided"] == 1


def test_return_recorded_before_a_later_use_is_not_matched_to_it(store: GatewayStore, his: HisUnderTest) -> None:
    """An item put back uncharged, taken again and charged: the earlier put-back, stored late, credits nothing."""
    gateway, cab = Gateway(store, his), Handheld(store, "CB01")
    put_back = cab.make(EventKind.RETURNED, cabinet_item("SN1"))
    used = cab.make(EventKind.CONSUME, {"admission": "ZY0001", "udi": udi("SN1"), "operator": "N042",
                                        "dept": "心内科"})
    store.ingest(Batch("CB01", "H1", [used]))  # the later batch first
    gateway.settle()
    store.ingest(Batch("CB01", "H1", [put_back]))
    gateway.settle()
    assert store._engine.query("SELECT COUNT(*) FROM returns")[0][0] == 0 and his.credits() == []
    back = cab.emit(EventKind.RETURNED, cabinet_item("SN1"))  # now it really comes back
    gateway.settle()
    assert gateway.returned(back)[:3] == ("credited", "", gateway.charge_id(("CB01", used.seq)))
    assert len(his.credits()) == 1


def test_a_restock_made_before_the_use_and_delivered_late_is_not_a_return(store: GatewayStore,
                                                                          his: HisUnderTest) -> None:
    """A cabinet offline for a while sends its restock of an item after a handheld charged that item; the restock
    happened first (by the devices' clocks), so the charge stands. A later put-back is a return."""
    gateway, cab, hh = Gateway(store, his), Handheld(store, "CB01"), Handheld(store, "HH01")
    restock = cab.make(EventKind.RESTOCKED, cabinet_item("SN1", role="restocker"))  # CB01 seq 1: T0 + 1 min
    hh.emit(EventKind.ACCESS, {"badge": "B1", "outcome": "granted"})
    hh.emit(EventKind.ACCESS, {"badge": "B1", "outcome": "granted"})
    used = hh.consume("SN1")  # HH01 seq 3: T0 + 3 min
    gateway.settle()
    store.ingest(Batch("CB01", "H1", [restock]))  # the cabinet comes back online
    gateway.settle()
    assert store._engine.query("SELECT COUNT(*) FROM returns")[0][0] == 0 and his.credits() == []
    for _ in range(3):
        cab.emit(EventKind.ACCESS, {"badge": "B2", "outcome": "granted"})
    back = cab.emit(EventKind.RETURNED, cabinet_item("SN1"))  # CB01 seq 5: T0 + 5 min, after the use
    gateway.settle()
    assert gateway.returned(back)[:3] == ("credited", "", gateway.charge_id(used))
