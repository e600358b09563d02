"""A reentrant lock that serves its waiters in the order they came: the SQLite engine's one connection.

The gateway's threads share one SQLite connection (:class:`gateway.data.engine.SqliteEngine`). With
``threading.RLock`` the thread that releases it usually takes it again at once — it still holds the
interpreter lock, while the woken waiter needs that too before it can run — so a thread that loops over
transactions (the ingest writer, group after group, at a thousand scans a second) kept the store for itself
and the HIS lanes waited for their turn for tens of seconds (docs/benchmarks.md, "Load generator"). Here a
release hands the lock to the longest waiter directly: every thread waits for at most the transactions of
the threads queued before it.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType


class FairRLock:
    """``with lock:`` — reentrant, first come first served, ownership handed over at release."""

    __slots__ = ("_depth", "_mutex", "_owner", "_waiters")

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # guards the fields; held only for a few bytecodes
        self._waiters: deque[tuple[int, threading.Lock]] = deque()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return
            if self._owner is None:
                self._owner, self._depth = me, 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append((me, turn))
        turn.acquire()  # released by the owner that hands the lock to this thread; it is ours on return

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FairRLock not held by this thread")
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                self._owner, turn = self._waiters.popleft()
                self._depth = 1
                turn.release()
            else:
                self._owner = None

    def held(self) -> bool:
        """This thread holds the lock."""
        return self._owner == threading.get_ident()

    def __enter__(self) -> FairRLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
