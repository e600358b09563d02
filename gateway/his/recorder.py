"""The HIS recorder: one thread records what the HIS accepted on every lane, many acceptances a transaction.

A lane that records its own acceptances waits for the store between two sends, and on a busy store (the
ingest writer committing a group of a thousand batches) that wait was most of a lane's time: at 1,000 scans
a second the four lanes sent a few dozen charges a second between them. Now a lane hands the HIS's
acceptances over and sends the next charge at once; this thread writes them (charge accepted and its
consumption record, :meth:`ChargeStore.mark_accepted_many`) for all lanes in one transaction and then lets
the feed forget the rows.

Nothing is sent twice on the way: an accepted row stays *held* by the feed (:class:`OutboxFeed`) until its
acceptance is committed, so no lane is handed it again. A crash before the commit leaves the row pending,
and the gateway sends it again after its restart; the HIS recognises the charge id (MSH-10) and books it
once, the window there always was between an answer and its record; at most ``MAX_WAITING`` acceptances
wait to be written (then the lanes wait for the recorder), so that window stays bounded when the store is
slower than the HIS. A store that fails keeps the acceptances here and they are written again after a
pause, in order.
"""

from __future__ import annotations

import logging
import threading
import time

from gateway.his.adapter import HisResult
from gateway.his.feed import OutboxFeed
from gateway.store import GatewayStore, OutboxCharge
from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)

MAX_WAITING = 1024
"""Acceptances handed over and not yet written, at most (then the lanes wait): what a crash would send again."""
RECORDER_DEADLINE_S = 90.0
"""One pass: a transaction that may wait 30 s on a busy store, retried after a pause."""


class AcceptRecorder:
    """Acceptances in, committed in groups by one thread, rows released from the feed after the commit."""

    def __init__(self, store: GatewayStore, feed: OutboxFeed, *, max_group: int = 512, wait_s: float = 0.01,
                 retry_s: float = 1.0, max_waiting: int = MAX_WAITING,
                 heartbeats: HeartbeatRegistry | None = None) -> None:
        """``wait_s``: after the first acceptance of a group, how long to gather more before the commit;
        ``max_waiting``: acceptances not yet written beyond which a lane handing more waits (back-pressure)."""
        self.store = store
        self.feed = feed
        self.max_group = max_group
        self.max_waiting = max_waiting
        self.lane_waits = 0  # times a lane waited for the recorder to catch up
        self.wait_s = wait_s
        self.retry_s = retry_s
        self.recorded = 0
        self.failures = 0
        self._pending: list[tuple[OutboxCharge, HisResult]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat("his-recorder", deadline_s=RECORDER_DEADLINE_S)

    def add(self, accepted: list[tuple[OutboxCharge, HisResult]]) -> None:
        """Acceptances to write; their rows must be held by the feed until then (the lane keeps them held).

        While more than ``max_waiting`` wait, the lane waits here (until the recorder wrote some, or stops):
        the lanes never run further ahead of the store than that, which bounds what a crash sends again.
        """
        if not accepted:
            return
        with self._cond:
            self._pending.extend(accepted)
            self._cond.notify_all()
            if len(self._pending) > self.max_waiting and not self._stop.is_set():
                self.lane_waits += 1
                while len(self._pending) > self.max_waiting and not self._stop.is_set():
                    self._cond.wait(0.5)

    def waiting(self) -> int:
        with self._cond:
            return len(self._pending)

    def record_once(self, timeout_s: float = 0.0) -> int:
        """Write what is waiting (up to ``max_group``); how many were written. A store failure raises, and
        the acceptances stay waiting, in order."""
        with self._cond:
            if not self._pending and timeout_s > 0:
                self._cond.wait(timeout_s)
            if not self._pending:
                return 0
        if self.wait_s > 0:  # let the lanes' next answers join this transaction
            time.sleep(self.wait_s)
        with self._cond:
            group = self._pending[: self.max_group]
        self.store.charges.mark_accepted_many([(c.charge_id, r.code, r.his_ref) for c, r in group])
        with self._cond:
            del self._pending[: len(group)]
            self._cond.notify_all()  # lanes waiting for room
        self.feed.release(c.id for c, _ in group)
        self.recorded += len(group)
        return len(group)

    def flush(self) -> None:
        """Write everything waiting now (at shutdown); a failure is logged and the rows stay pending in the store."""
        try:
            while self.record_once():
                pass
        except Exception:
            log.exception("HIS recorder: %d acceptances not written; those charges are sent again after a restart",
                          self.waiting())

    # ------------------------------------------------------------ thread

    def start(self) -> AcceptRecorder:
        self._beat.watch()
        self._thread = threading.Thread(target=self._run, name="his-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after writing what is waiting (call after the lanes stopped)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        self._beat.retire()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat()
            try:
                self.record_once(timeout_s=0.5)
            except self.store.store_faults:
                self.failures += 1
                log.exception("HIS recorder: the store failed; %d acceptances wait and are written again",
                              self.waiting())
                self._stop.wait(self.retry_s)
            except Exception:
                self.failures += 1
                log.exception("HIS recorder: writing acceptances failed; retrying")
                self._stop.wait(self.retry_s)
