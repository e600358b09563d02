"""The SQLite store's checkpoints, moved out of the writers' turns.

In WAL mode a commit appends pages to ``<file>-wal``; a checkpoint copies them back into the database,
and once the log is copied whole the next writer starts it again from its beginning. By default the
connection whose commit takes the log past 1,000 pages runs that checkpoint straight after its commit,
and on the gateway's file it does so still holding the writers' turn (the ``flock`` of
:class:`~gateway.data.engine.SqliteEngine`): at 1,000 scans/s a fifth to a third of the time the parts
held the turn went on copying pages, and every other writer waited.

:class:`WalCheckpointer` copies them from a connection of its own, every ``interval_s``, while the
writers go on (a passive checkpoint waits for nobody and stops nobody). Under steady writes such a
checkpoint never ends with the log copied whole: more was appended while it copied, so the log would
never start again and the file would grow without bound. When what is left to copy is small it takes
one writers' turn, copies the rest (the few hundred pages written since its last pass) and lets the
turn go; the next writer then starts the log from its beginning. The writers' own checkpoints stay as a
backstop at :data:`~gateway.data.engine.BACKSTOP_PAGES` (where no checkpointer runs: a command line tool,
or the checkpointer's process stopped).

Durability is not its business: a commit is durable in the log (``synchronous=FULL`` on ingest's
connection), and a checkpoint only moves pages that are already there.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.data.engine import writers_lock
from gateway.leader_loop import LeaderLoop
from spd_common.heartbeat import HeartbeatRegistry

FINISH_BELOW_PAGES = 400
"""The checkpointer takes a writers' turn to finish the log when at most this many pages are left to copy."""

MIN_LOG_PAGES = 20_000
"""Below this many pages in the log (80 MB at 4 KiB) the checkpointer copies but does not take a turn to finish
it. A finish holds the writers' turn for 20 to 70 ms (the last pages, then a sync of the log and one of the
database before the log may start again), so it is done seldom: at 1,000 scans/s, about once in two seconds.
With 1,000 pages it finished six times a second and held the turn 110 ms of every second."""


@dataclass(frozen=True, slots=True)
class CheckpointStep:
    """One pass: the log's pages, how many of them are in the database, and whether a writers' turn was taken."""

    log_pages: int
    copied_pages: int
    finished: bool


class WalCheckpointer(LeaderLoop):
    """Copies the write-ahead log of the SQLite file ``path`` into the database outside the writers' turns."""

    def __init__(self, path: str | Path, *, interval_s: float = 0.1, finish_below: int = FINISH_BELOW_PAGES,
                 min_log: int = MIN_LOG_PAGES, heartbeats: HeartbeatRegistry | None = None) -> None:
        super().__init__("wal-checkpoint", interval_s, may_run=lambda: True, heartbeats=heartbeats)
        self.path = Path(path)
        self.finish_below = finish_below
        self.min_log = min_log
        self.finishes = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")  # a checkpoint syncs the log, then the database
        self._writers = writers_lock(self.path)  # None: a file no one may write, whose log never grows

    def run_once(self) -> CheckpointStep:
        """Copy what the log holds; finish it inside a writers' turn if it is large and little is left, or
        if it is twice that large whatever is left (writers faster than the copy, as in a drain after an
        outage, would otherwise take it to the writers' own backstop)."""
        log_pages, copied = self._checkpoint()
        if self._writers is None or log_pages < self.min_log or \
                (log_pages - copied > self.finish_below and log_pages < 2 * self.min_log):
            return CheckpointStep(log_pages, copied, finished=False)
        fcntl.flock(self._writers, fcntl.LOCK_EX)
        try:  # no writer of the gateway is inside a transaction: this pass copies the log to its end
            log_pages, copied = self._checkpoint()
        finally:
            fcntl.flock(self._writers, fcntl.LOCK_UN)
        self.finishes += 1
        return CheckpointStep(log_pages, copied, finished=log_pages == copied)

    def _checkpoint(self) -> tuple[int, int]:
        _busy, log_pages, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(log_pages), int(copied)

    def stop(self) -> None:
        super().stop()
        self._db.close()
        if self._writers is not None:
            os.close(self._writers)
