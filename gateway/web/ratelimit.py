"""The sign-in rate limit: failed attempts counted per account and per address in a sliding window."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class LoginLimiter:
    """At most ``attempts`` failures per key within ``window_s``; then :meth:`blocked_for` says how long to wait."""

    def __init__(self, attempts: int, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def blocked_for(self, *keys: str) -> float:
        """Seconds until a sign-in is tried again for these keys (0: not blocked)."""
        now = self._clock()
        with self._lock:
            waits = [q[0] + self.window_s - now for k in keys if len(q := self._live(k, now)) >= self.attempts]
            for k in keys:
                if not self._failures.get(k):
                    self._failures.pop(k, None)
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for k in keys:
                self._live(k, now).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
