"""The HIS recorder (gateway/his/recorder.py) and the store's first-come lock (gateway/data/fair_lock.py).

A lane hands the HIS's acceptances to the recorder and sends on; the rows stay held by the feed until the
recorder committed them, so no lane gets them again, and a store that fails keeps them waiting, in order.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from test_outbox_feed import RecordingHis, queue_charges

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
