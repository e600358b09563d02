"""The HIS recorder (gateway/his/recorder.py) and the store's first-come lock (gateway/data/fair_lock.py).

A lane hands the HIS's acceptances to the recorder and sends on; the rows stay held by the feed until the
recorder committed them, so no lane gets them again, and a store that fails keeps them waiting, in order.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_outbox_feed import RecordingHis, queue_charges

from gateway.data.charges import StoreError
from gateway.data.fair_lock import FairRLock
from gateway.his.adapter import HisOutcome, HisResult
from gateway.his.feed import OutboxFeed
from gateway.his.recorder import AcceptRecorder
from gateway.his.sender import HisSender
from gateway.store import GatewayStore

from conftest import wait_for


def test_accepted_rows_stay_held_until_written_and_are_never_sent_again(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    ids = queue_charges(store, 1, 20)
    feed = OutboxFeed(store, 1)
    recorder = AcceptRecorder(store, feed, wait_s=0.0)  # not started: nothing is written until record_once
    his = RecordingHis()
    lane = HisSender(store, his, feed=feed, recorder=recorder)
    assert lane.run_once() == 20
    assert recorder.waiting() == 20 and feed.held() == 20
    assert len(store.pending_charges()) == 20  # not written yet: still pending in the store ...
    feed.invalidate()
    assert lane.run_once() == 0  # ... but held: no lane is handed them again, even after a full read
    assert recorder.record_once() == 20
    assert store.pending_charges() == [] and feed.held() == 0
    assert lane.run_once() == 0
    assert [cid for cid, _ in his.sent] == ids
    assert {c.status for c in store.charges.listing(status=None, limit=1000)} == {"accepted"}
    store.close()


def test_a_failing_store_keeps_the_acceptances_waiting_in_order(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    ids = queue_charges(store, 1, 5)
    feed = OutboxFeed(store, 1)
    recorder = AcceptRecorder(store, feed, wait_s=0.0, retry_s=0.05)
    lane = HisSender(store, RecordingHis(), feed=feed, recorder=recorder)
    real = store.charges.mark_accepted_many
    failures = [2]

    def flaky(accepted: list[tuple[str, str | None, str | None]]) -> int:
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(accepted)

    store.charges.mark_accepted_many = flaky  # type: ignore[method-assign]
    assert lane.run_once() == 5
    with pytest.raises(sqlite3.OperationalError):
        recorder.record_once()
    assert recorder.waiting() == 5 and feed.held() == 5
    recorder.start()  # the thread writes them after its pause
    try:
        wait_for(lambda: recorder.waiting() == 0, timeout=10)
    finally:
        recorder.stop()
    assert recorder.failures == 1 and recorder.recorded == 5
    assert store.pending_charges() == [] and feed.held() == 0
    assert sorted(c.charge_id for c in store.charges.listing(status=None, limit=1000) if c.status == "accepted") == ids
    store.close()


def test_stop_writes_what_is_waiting(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    queue_charges(store, 1, 7)
    feed = OutboxFeed(store, 1)
    recorder = AcceptRecorder(store, feed, wait_s=0.5).start()
    charges = store.pending_charges()
    feed.take(0)
    recorder.add([(c, HisResult(HisOutcome.ACCEPTED, "AA", "", f"R{c.id}")) for c in charges])
    recorder.stop()
    assert store.pending_charges() == [] and recorder.waiting() == 0
    store.close()


def test_the_fair_lock_serves_waiters_in_the_order_they_came_and_is_reentrant() -> None:
    lock = FairRLock()
    order: list[int] = []
    with lock:
        with lock:  # reentrant
            assert lock.held()
        threads = []
        for n in range(6):
            t = threading.Thread(target=lambda n=n: (lock.acquire(), order.append(n), lock.release()))
            t.start()
            threads.append(t)
            wait_for(lambda n=n: len(lock._waiters) == n + 1, timeout=5)  # queued one after the other
        assert order == []
    for t in threads:
        t.join(timeout=5)
    assert order == list(range(6))
    assert not lock.held()
    with pytest.raises(RuntimeError):
        lock.release()


def test_a_thread_that_loops_over_the_lock_cannot_keep_it_from_a_waiter() -> None:
    """The ingest writer's pattern: release and take again at once. With threading.RLock the looping thread
    usually wins again; here the waiter gets the lock at the next release."""
    lock = FairRLock()
    stop = threading.Event()
    got = threading.Event()

    def looper() -> None:
        while not stop.is_set():
            with lock:
                time.sleep(0.001)

    t = threading.Thread(target=looper)
    t.start()
    try:
        time.sleep(0.02)
        started = time.monotonic()
        with lock:
            got.set()
        waited = time.monotonic() - started
    finally:
        stop.set()
        t.join(timeout=5)
    assert got.is_set() and waited < 1.0


def test_the_lanes_wait_when_the_recorder_falls_behind(tmp_path: Path) -> None:
    """At most ``max_waiting`` acceptances wait to be written: what a crash could send again stays bounded."""
    store = GatewayStore(tmp_path / "gw.db")
    queue_charges(store, 1, 12)
    feed = OutboxFeed(store, 1)
    recorder = AcceptRecorder(store, feed, wait_s=0.0, max_waiting=5)  # not started: it writes when told
    his = RecordingHis()
    lane = HisSender(store, his, feed=feed, recorder=recorder)
    t = threading.Thread(target=lane.run_once)
    t.start()
    wait_for(lambda: len(his.sent) == 6 and recorder.lane_waits == 1, timeout=5)
    time.sleep(0.2)
    assert len(his.sent) == 6  # the lane waits: no seventh charge goes out before the store caught up
    assert recorder.record_once() == 6
    wait_for(lambda: len(his.sent) == 12 and recorder.lane_waits == 2, timeout=5)  # six more, then it waits again
    assert t.is_alive()
    assert recorder.record_once() == 6
    t.join(timeout=5)
    assert not t.is_alive()
    assert store.pending_charges() == [] and feed.held() == 0
    store.close()



def _accepted(store: GatewayStore, first: int) -> list[tuple[object, ...]]:
    """Charges ``first`` .. ``first + 11`` and their consumption lines, numbered from 1."""
    rows = store._engine.query(
        "SELECT c.seq, c.status, c.attempts, c.ack_code, c.his_ref, c.last_error, k.seq, k.gtin, k.serial, "
        "k.price_fen, k.his_ref FROM charges c LEFT JOIN consumption k ON k.charge_id = c.charge_id "
        "WHERE c.seq BETWEEN ? AND ? ORDER BY c.seq", (first, first + 11))
    return [(int(r[0]) - first + 1, *r[1:6], None if r[6] is None else int(r[6]) - first + 1, r[7],
             None if r[8] is None else int(str(r[8])[1:]) - first + 1, *r[9:]) for r in rows]


def test_acceptances_written_together_end_as_written_one_by_one(open_store: Callable[[], GatewayStore]) -> None:
    store = open_store()
    queue_charges(store, 1, 12)
    queue_charges(store, 101, 12)

    def group(first: int) -> list[tuple[str, str | None, str | None]]:
        c = [f"C{first + n:08d}" for n in range(12)]  # repeats, one accepted before, codes and references of each kind
        return [(c[0], "AA", "H1"), (c[1], None, None), (c[2], "AA", "H3b"), (c[0], "AA", "H1b"),
                *((c[n], "CA", f"R{n}") for n in range(3, 12))]

    store.charges.mark_accepted("C00000003", "AA", "H3")
    store.charges.mark_accepted("C00000103", "AA", "H3")
    assert store.charges.mark_accepted_many(group(1)) == 11
    assert sum(store.charges.mark_accepted(*accepted) for accepted in group(101)) == 11
    assert _accepted(store, 1) == _accepted(store, 101)
    assert {r[1] for r in _accepted(store, 1)} == {"accepted"}
    assert store.charges.mark_accepted_many(group(1)) == 0  # written once
    with pytest.raises(StoreError):  # nothing of it written
        store.charges.mark_accepted_many([("C00000001", "AA", "H1"), ("no-such-charge", "AA", None)])
