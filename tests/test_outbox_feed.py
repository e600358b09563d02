"""The HIS lanes fed by one reader (gateway/his/feed.py): every due row reaches its lane once, in order.

Real store in tmp_path, real :class:`HisSender` threads sharing one :class:`OutboxFeed`, and an adapter
that records what reached the "HIS" (the lanes' threads call it concurrently).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.his.adapter import HisOutcome, HisResult, RetryReason
from gateway.his.feed import OutboxFeed
from gateway.his.lanes import lane_of
from gateway.his.recorder import AcceptRecorder
from gateway.his.sender import HisSender
from gateway.store import GatewayStore

from conftest import wait_for

LANES = 4
ADMISSIONS = [f"ZY{n:03d}" for n in range(24)]


def queue_charges(store: GatewayStore, first: int, n: int) -> list[str]:
    """``n`` charges in the outbox, admissions in turn; their charge ids."""
    ids = []
    with store.charges.batch() as db:
        for seq in range(first, first + n):
            admission = ADMISSIONS[seq % len(ADMISSIONS)]
            line = {"admission": admission, "gtin": "09506000134352", "item_code": "I1", "name": "item", "lot": "L",
                    "serial": f"S{seq}", "expiry": "2030-01-01", "price_fen": 100, "operator": "N1", "dept": "OR",
                    "ts_ms": 1_795_430_400_000 + seq}
            charge_id = f"C{seq:08d}"
            assert db.add_charge(charge_id, "HH01", seq, admission, f"09506000134352/S{seq}", json.dumps(line),
                                 f"MSH|{charge_id}", time.time())
            ids.append(charge_id)
    return ids


class RecordingHis:
    """Accepts everything (after ``delay_s``), except the first attempt of each id in ``retry_once``."""

    timeout_s = 2.0

    def __init__(self, *, delay_s: float = 0.0, retry_once: set[str] | None = None) -> None:
        self.sent: list[tuple[str, str]] = []  # (charge id, thread name)
        self.delay_s = delay_s
        self.retry_once = set(retry_once or ())
        self._lock = threading.Lock()

    def send(self, control_id: str, message: str) -> HisResult:
        time.sleep(self.delay_s)
        with self._lock:
            self.sent.append((control_id, threading.current_thread().name))
            if control_id in self.retry_once:
                self.retry_once.discard(control_id)
                return HisResult(HisOutcome.RETRY, RetryReason.TIMEOUT.value, "no answer")
        return HisResult(HisOutcome.ACCEPTED, "AA", "", f"REF-{control_id}")

    def close(self) -> None:
        pass


class Lanes:
    """The lanes of one gateway on ``store``; with ``recorded``, as ``spd-gateway run`` assembles them: the feed
    reads on a connection of its own and one HIS recorder writes every lane's acceptances."""

    def __init__(self, store: GatewayStore, his: RecordingHis, *, recorded: bool, read_limit: int = 500) -> None:
        self.reader = GatewayStore(store.location, synchronous="NORMAL") if recorded else None
        self.feed = OutboxFeed(self.reader or store, LANES, read_limit=read_limit)
        self.recorder = AcceptRecorder(store, self.feed) if recorded else None
        self.senders = [HisSender(store, his, lane=lane, lanes=LANES, feed=self.feed, backoff_base_s=0.05,
                                  backoff_max_s=0.1, idle_wait_s=0.02, recorder=self.recorder)
                        for lane in range(LANES)]

    def __enter__(self) -> Lanes:
        if self.recorder is not None:
            self.recorder.start()
        for s in self.senders:
            s.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.senders:
            s.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self.reader is not None:
            self.reader.close()


@pytest.mark.parametrize("recorded", [False, True], ids=["lane-records", "recorder"])
def test_every_due_row_reaches_its_own_lane_once_in_order_while_charges_keep_coming(tmp_path: Path,
                                                                                     recorded: bool) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    his = RecordingHis(delay_s=0.0005)
    lanes = Lanes(store, his, recorded=recorded, read_limit=50)  # small reads: the buffers refill many times
    feed = lanes.feed
    ids = queue_charges(store, 1, 300)
    with lanes:
        for k in range(5):  # more charges while the lanes send
            ids += queue_charges(store, 301 + 100 * k, 100)
            time.sleep(0.05)
        wait_for(lambda: len(his.sent) >= len(ids), timeout=60)
        time.sleep(0.2)  # anything sent twice would show by now
    sent = [cid for cid, _ in his.sent]
    assert Counter(sent) == Counter(ids)  # each charge sent exactly once
    assert store.pending_charges() == []
    assert feed.held() == 0
    admission_of = {cid: ADMISSIONS[int(cid[1:]) % len(ADMISSIONS)] for cid in ids}
    for cid, thread in his.sent:  # by the lane its patient maps to
        assert thread == f"his-sender-{lane_of(admission_of[cid], LANES)}"
    for admission in ADMISSIONS:  # a patient's charges in outbox order
        mine = [cid for cid in sent if admission_of[cid] == admission]
        assert mine == sorted(mine)
    # one reader: about one row read per row queued, not one per lane (the lanes before read every row each)
    assert feed.stats.rows_read <= 2 * len(ids), feed.stats
    store.close()


@pytest.mark.parametrize("recorded", [False, True], ids=["lane-records", "recorder"])
def test_a_retried_row_holds_its_patient_and_is_sent_again_once_due(tmp_path: Path, recorded: bool) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    ids = queue_charges(store, 1, 48)  # two charges per admission
    first_of_zy001 = ids[0]  # seq 1 -> ZY001; its second charge is seq 25
    his = RecordingHis(retry_once={first_of_zy001})
    with Lanes(store, his, recorded=recorded):
        wait_for(lambda: len(his.sent) >= len(ids) + 1, timeout=30)
        time.sleep(0.2)
    sent = [cid for cid, _ in his.sent]
    assert Counter(sent) == Counter([*ids, first_of_zy001])  # the retried one twice, every other once
    assert sent.index(ids[24]) > len(sent) - 1 - sent[::-1].index(first_of_zy001)  # its patient waited for it
    assert store.pending_charges() == []
    store.close()


def test_a_row_made_pending_again_outside_the_lanes_is_picked_up(tmp_path: Path) -> None:
    """``charges resend`` puts a parked row back below the feed's watermark; an idle feed reads it again."""
    store = GatewayStore(tmp_path / "gw.db")
    (cid,) = queue_charges(store, 1, 1)
    assert store.charges.mark_parked(cid, "AE", "refused") == []
    his = RecordingHis()
    sender = HisSender(store, his, lanes=1)
    assert sender.run_once() == 0
    assert store.requeue_parked(cid)
    assert sender.run_once() == 1 and his.sent[0][0] == cid
    assert sender.run_once() == 0
    store.close()
