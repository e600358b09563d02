"""The shape of the gateway's periodic loops that only the charging-lease holder runs (the not-linked watch,
the stock ledger's projection, the incident watch): a thread that beats its heartbeat every ``interval_s``
and, on the instance that holds the lease, runs one pass. A pass that fails is logged and tried again at
the next beat; a pass that hangs stops the heartbeat, and the watchdog names the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)

# a pass waits at most the interval, then may wait on a busy store: the heartbeat allows that much more
PASS_GRACE_S = 90.0

LIVE_STEP = 500
"""Events a loop that follows the stored events reads and writes per transaction while the gateway ingests.
On SQLite every thread takes its turn on one connection, and ingest waits while such a transaction runs: the
stock ledger's 5,000 events a step (every 5 s, at 1,000 scans a second) held it for about half a second, and
the scans stored meanwhile waited that long (scan → stored p99 1.4 s at 500 scans/s, the gateway's CPU at
77 %). Catching up from the command line keeps the larger steps."""

FOLLOW_STEP = 100
"""Events the stock ledger and the not-linked watch take per transaction while the gateway ingests. Neither
is on a scan's way to the HIS, and every writer of the store waits while they hold it: in the gateway's
three processes at 1,000 scans/s a step of :data:`LIVE_STEP` held the store's one writer's turn for 50 to
80 ms, and each scan then waiting behind it that much longer. They run their steps back to back until they
have caught up, so smaller steps cost a few more transactions, not a growing backlog."""


class LeaderLoop:
    """Subclasses give :meth:`run_once` and call ``super().__init__`` with the thread's name."""

    def __init__(self, name: str, interval_s: float, *, may_run: Callable[[], bool],
                 heartbeats: HeartbeatRegistry | None) -> None:
        self.loop_name = name
        self.interval_s = interval_s
        self._may_run = may_run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat(name, deadline_s=interval_s + PASS_GRACE_S)

    def run_once(self) -> object:
        raise NotImplementedError

    def start(self) -> Self:
        self._beat.watch()
        self._thread = threading.Thread(target=self._run, name=self.loop_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._beat.retire()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()
            if not self._may_run():
                continue
            try:
                self.run_once()
            except Exception:
                log.exception("%s: a pass failed; trying again in %.0f s", self.loop_name, self.interval_s)
