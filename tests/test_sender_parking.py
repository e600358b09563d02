"""A row an adapter cannot send is parked with its reason; the rows behind it in its lane still reach the HIS."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main as gateway_cli
from gateway.his.adapter import HisAdapter, HisMessageError, HisResult
from gateway.his.http_adapter import HttpJsonAdapter
from gateway.his.mllp_adapter import MllpAdapter
from gateway.his.sender import HisSender
from gateway.store import GatewayStore
from hw_sim.his import SimulatedHis
from hw_sim.his_http import SimulatedHttpHis

from test_credits import CONFIG, STENT, Handheld


class FailsOn:
    """Wraps a real adapter and fails on one row, as an adapter that cannot render it would."""

    def __init__(self, inner: HisAdapter, bad_id: str, error: Exception) -> None:
        self.inner, self.bad_id, self.error = inner, bad_id, error
        self.outbox_payload = getattr(inner, "outbox_payload", None) or "hl7"

    def send(self, control_id: str, message: str) -> HisResult:
        if control_id == self.bad_id:
            raise self.error
        return self.inner.send(control_id, message)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def store(store_location: Path | str) -> Iterator[GatewayStore]:
    s = GatewayStore(store_location, synchronous="OFF")
    s.upsert_catalog([(STENT, "IT-STENT", "C310001", "冠脉支架", "3.0x18mm", "ACME", 1_234_567, 1, 1)])
    yield s
    s.close()


def _charge_rows(store: GatewayStore, n: int) -> list[str]:
    from gateway.charging import ChargingWorker

    hh = Handheld(store, "HH01")
    for i in range(n):
        hh.consume(f"SN{i}")  # one patient: one lane, in order
    worker = ChargingWorker(store, CONFIG)
    while worker.run_once():
        pass
    return [str(r[0]) for r in store._engine.query("SELECT charge_id FROM charges ORDER BY id")]


@pytest.mark.parametrize("protocol", ["mllp", "http"])
@pytest.mark.parametrize("error", [HisMessageError("bad_message", "charge line field 'x' is missing"),
                                   KeyError("price_fen")])
def test_a_row_the_adapter_cannot_send_is_parked_and_the_lane_goes_on(
    tmp_path: Path, store: GatewayStore, protocol: str, error: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _charge_rows(store, 5)
    sim: SimulatedHis | SimulatedHttpHis = (
        SimulatedHis(tmp_path / "his.db") if protocol == "mllp" else SimulatedHttpHis(tmp_path / "his.db"))
    with sim:
        inner: HisAdapter = (MllpAdapter("127.0.0.1", sim.port, timeout_s=2.0) if isinstance(sim, SimulatedHis)
                             else HttpJsonAdapter(sim.url, timeout_s=2.0))
        sender = HisSender(store, FailsOn(inner, ids[1], error), backoff_base_s=0.01, lanes=1)
        deadline = time.monotonic() + 10
        while store._engine.query("SELECT COUNT(*) FROM charges WHERE status = 'pending'")[0][0] and \
                time.monotonic() < deadline:
            sender.run_once(now=1e12)
        sender.stop()
        booked = [c.txn_id for c in sim.charges()] if isinstance(sim, SimulatedHis) \
            else [c.charge_id for c in sim.charges()]
    assert booked == [ids[0], *ids[2:]]
    rows = dict(store._engine.query("SELECT charge_id, status FROM charges"))
    assert rows[ids[1]] == "parked" and [rows[i] for i in ids if i != ids[1]] == ["accepted"] * 4
    (code, reason), = store._engine.query("SELECT ack_code, last_error FROM charges WHERE charge_id = ?", (ids[1],))
    assert code in ("unsendable:bad_message", "adapter_error")
    assert ("'x' is missing" if isinstance(error, HisMessageError) else "KeyError") in reason
    assert gateway_cli(["charges", "list", "--db", str(store.url or store.path), "--status", "parked"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and listed[0].startswith(ids[1]) and reason in listed[0]


def test_reproduction_http_returns_do_not_stop_the_lane(tmp_path: Path, store: GatewayStore) -> None:
    """Charges and credits over HTTP from one lane: everything is booked, nothing stays pending."""
    from gateway.charging import ChargingWorker

    hh = Handheld(store, "HH01")
    for i in range(6):
        hh.consume(f"SN{i}")
        if i % 2 == 0:
            hh.give_back(f"SN{i}", restocked=False)
    worker = ChargingWorker(store, CONFIG)
    while worker.run_once():
        pass
    with SimulatedHttpHis(tmp_path / "his.db") as sim:
        sender = HisSender(store, HttpJsonAdapter(sim.url, timeout_s=2.0), backoff_base_s=0.01, lanes=1)
        while sender.run_once(now=1e12):
            pass
        sender.stop()
        assert len(sim.charges()) == 6 and len(sim.credits()) == 3
    assert store._engine.query("SELECT status, COUNT(*) FROM charges GROUP BY status") == [("accepted", 9)]
    assert store.counts()["credits_accepted"] == 3
    assert all(json.loads(line)["credit_id"] for (line,) in
               store._engine.query("SELECT line FROM charges WHERE item_key LIKE 'credit:%'"))
