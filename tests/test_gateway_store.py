"""The gateway store: idempotent ingest, cumulative acks, quarantine and chain checks (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from device.eventlog import EventLog
from gateway.store import GatewayStore
from spd_common.wire import Event, decode_batch, encode_batch

OpenStore = Callable[[], GatewayStore]


def _events(tmp_path: Path, n: int, device: str = "HH01") -> list[Event]:
    log = EventLog(tmp_path / f"{device}.db", device=device)
    return [log.append("consume", {"admission": "ZY1", "udi": f"u{i}", "operator": "N", "dept": "D"})
            for i in range(n)]


def _batch(events: list[Event], device: str = "HH01") -> object:
    return decode_batch(f"spd/v1/H1/{device}/events", encode_batch("H1", device, events))


def test_each_event_is_stored_once_whatever_the_resends(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store()
    ev = _events(tmp_path, 5)
    r1 = store.ingest(_batch(ev[:3]))  # type: ignore[arg-type]
    r2 = store.ingest(_batch(ev))  # type: ignore[arg-type]
    assert (r1.new, r1.duplicates, r1.contiguous) == (3, 0, 3)
    assert (r2.new, r2.duplicates, r2.contiguous) == (2, 3, 5)
    assert store.counts()["events"] == 5


def test_ack_covers_only_the_contiguous_prefix(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store()
    ev = _events(tmp_path, 6)
    assert store.ingest(_batch([ev[0], ev[1], ev[4]])).contiguous == 2  # type: ignore[arg-type]
    assert store.ingest(_batch([ev[2]])).contiguous == 3  # type: ignore[arg-type]
    assert store.ingest(_batch([ev[3]])).contiguous == 5  # type: ignore[arg-type]
    assert store.contiguous_seq("HH01") == 5


def test_invalid_event_is_quarantined_and_does_not_block_the_ack(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store()
    ev = _events(tmp_path, 3)
    doc = json.loads(encode_batch("H1", "HH01", ev))
    doc["events"][1]["body"]["udi"] = "altered"
    batch = decode_batch("spd/v1/H1/HH01/events", json.dumps(doc).encode())
    res = store.ingest(batch)
    assert (res.new, res.quarantined, res.contiguous) == (2, 1, 3)
    assert [(r.seq, r.reason) for r in res.rejected] == [(2, "bad_hash")]
    assert store._engine.query("SELECT seq, reason FROM quarantine") == [(2, "bad_hash")]


def test_chain_break_is_flagged_with_device_and_seq(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store()
    a = _events(tmp_path / "a", 3)
    b = _events(tmp_path / "b", 3)  # a second log with the same device id: different history
    store.ingest(_batch(a[:2]))  # type: ignore[arg-type]
    bogus = Event(b[2].device, 3, b[2].ts_ms, b[2].kind, b[2].body, "f" * 64, "")
    from spd_common.wire import event_hash
    bogus = Event(bogus.device, 3, bogus.ts_ms, bogus.kind, bogus.body, bogus.prev,
                  event_hash(bogus.device, 3, bogus.ts_ms, bogus.kind, bogus.body, bogus.prev))
    res = store.ingest(_batch([bogus]))  # type: ignore[arg-type]
    assert res.chain_breaks == [(3, "prev does not match the stored predecessor")]
    assert store._engine.query("SELECT device, seq FROM chain_breaks") == [("HH01", 3)]


def test_same_seq_with_different_content_is_a_conflict_not_an_overwrite(tmp_path: Path,
                                                                         open_store: OpenStore) -> None:
    store = open_store()
    a = _events(tmp_path / "a", 1)
    b = _events(tmp_path / "b", 1)
    b0 = Event("HH01", 1, a[0].ts_ms + 1, "consume", {"x": 1}, a[0].prev, "")
    from spd_common.wire import event_hash
    b0 = Event(b0.device, 1, b0.ts_ms, b0.kind, b0.body, b0.prev, event_hash("HH01", 1, b0.ts_ms, "consume", b0.body,
                                                                               b0.prev))
    store.ingest(_batch(a))  # type: ignore[arg-type]
    res = store.ingest(_batch([b0]))  # type: ignore[arg-type]
    assert res.conflicts == 1 and res.new == 0
    assert store._engine.query("SELECT hash FROM events") == [(a[0].hash,)]
    del b


def test_only_one_instance_holds_the_charging_lease_until_it_runs_out(open_store: OpenStore) -> None:
    a = open_store()
    b = open_store()
    assert a.hold_lease("charging", "gw-a", 5, now=100.0)
    assert not b.hold_lease("charging", "gw-b", 5, now=101.0)
    assert a.hold_lease("charging", "gw-a", 5, now=103.0)  # renewal
    assert not b.hold_lease("charging", "gw-b", 5, now=107.0)
    assert b.hold_lease("charging", "gw-b", 5, now=108.5)  # a stopped renewing: b takes over
    assert not a.hold_lease("charging", "gw-a", 5, now=109.0)


def test_a_charging_batch_that_fails_to_commit_leaves_its_items_chargeable(tmp_path: Path,
                                                                           open_store: OpenStore) -> None:
    from gateway import bridge
    from gateway.charging import ChargingWorker
    from hw_sim.catalog import sim_catalog
    from hw_sim.handheld import scan_for

    store = open_store()
    catalog = sim_catalog()
    store.upsert_catalog([i.row() for i in catalog])
    log = EventLog(tmp_path / "HH01.db", device="HH01")
    events = []
    for n in range(1, 4):
        pair = scan_for(1, "HH01", n, catalog)
        events.append(log.append("consume", {"admission": pair.wristband, "udi": pair.udi, "operator": "N",
                                             "dept": "OR"}))
    store.ingest(_batch(events))  # type: ignore[arg-type]
    worker = ChargingWorker(store, bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP"))
    real = store._engine.transaction

    def failing() -> object:
        raise OSError("disk I/O error")

    store._engine.transaction = failing  # type: ignore[method-assign,assignment]
    try:
        worker.run_once()
    except OSError:
        pass
    store._engine.transaction = real  # type: ignore[method-assign]
    assert worker.run_once() == 3
    assert store.counts()["charges"] == 3 and store.counts()["charge_rejects"] == 0
