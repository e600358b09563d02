"""Exponential back-off, one rule for every retry loop: the device's scanners and RFID reader, the HIS sender.

The wait before retry ``n`` (0 = the first) is ``first_s * 2**n``, capped at ``ceiling_s``;
doubling stops after 16 steps. With a random source the wait is scaled by a factor in [0.5, 1),
so lanes that failed together do not retry together.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Final

MAX_DOUBLINGS: Final = 16


def backoff_delay(attempt: int, *, first_s: float, ceiling_s: float, rng: random.Random | None = None) -> float:
    """The wait in seconds before retry number ``attempt`` (0 = the first retry)."""
    delay = min(ceiling_s, first_s * 2 ** min(max(attempt, 0), MAX_DOUBLINGS))
    return float(delay * (0.5 + rng.random() / 2)) if rng is not None else float(delay)


def backoff_delays(first_s: float, ceiling_s: float) -> Iterator[float]:
    """The waits one after another: ``first_s``, doubling, capped at ``ceiling_s`` (0 < first <= ceiling)."""
    if not 0 < first_s <= ceiling_s:  # checked at the call, not at the first next()
        raise ValueError(f"backoff must be 0 < first <= ceiling, got {(first_s, ceiling_s)!r}")
    return (backoff_delay(attempt, first_s=first_s, ceiling_s=ceiling_s) for attempt in itertools.count())
