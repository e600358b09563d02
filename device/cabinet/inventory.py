"""A stable inventory after the door closes: a tag counts as taken only after enough confirming absent rounds.

The math (also in ``docs/cabinet.md``). Let ``p`` be the probability that a
tag which is in the cabinet is not read in one inventory round (configured
per cabinet from measurement; rounds are assumed independent). A present tag
is reported taken only if it is missed in ``k`` rounds in a row, which happens
with probability ``p**k``. Over the ``N`` tags of the previous inventory the
chance that a count produces at least one phantom removal is at most
``N * p**k`` (union bound), so with a target phantom rate ``eps`` per count::

    k = ceil( ln(eps / N) / ln(p) )        (at least 2, at most max_rounds)

e.g. p = 0.05, N = 200, eps = 1e-5: k = ceil(-16.8 / -3.0) = 6.

Speed: round 1 reads every antenna once. Tags of the previous inventory not
seen are *suspects*. Each further round runs only on the antennas where an
unresolved suspect was last seen; a suspect read again is present, a suspect
missed ``k`` times is confirmed taken, and counting stops as soon as every
suspect is one or the other. A round in which a suspect's antenna reported an
error does not count as a miss for it; suspects still open after
``max_rounds`` are kept as present (unconfirmed), never reported as taken.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from device.hal.rfid.reader import InventoryResult

log = logging.getLogger(__name__)


class InventoryReader(Protocol):
    """What counting needs of a reader (:class:`device.hal.rfid.RfidReader` has it)."""

    @property
    def antennas(self) -> tuple[int, ...]: ...

    def inventory(self, rounds: int = 1, *, antennas: Iterable[int] | None = None, repeat: int = 1) -> InventoryResult:
        ...


@dataclass(frozen=True, slots=True)
class InventoryPolicy:
    """How sure a removal must be: per-round miss probability, target phantom rate per count, round ceiling."""

    miss_rate: float = 0.05
    phantom_target: float = 1e-5
    min_rounds: int = 2
    max_rounds: int = 12

    def __post_init__(self) -> None:
        if not 0.0 < self.miss_rate < 1.0:
            raise ValueError(f"miss_rate must be in (0, 1), got {self.miss_rate}")
        if not 0.0 < self.phantom_target < 1.0:
            raise ValueError(f"phantom_target must be in (0, 1), got {self.phantom_target}")
        if not 1 <= self.min_rounds <= self.max_rounds:
            raise ValueError("need 1 <= min_rounds <= max_rounds")

    def confirm_rounds(self, population: int) -> int:
        """Absent rounds needed before a tag of a ``population``-tag inventory counts as taken."""
        n = max(1, population)
        k = math.ceil(math.log(self.phantom_target / n) / math.log(self.miss_rate))
        return max(self.min_rounds, min(self.max_rounds, k))

    def phantom_bound(self, population: int) -> float:
        """Upper bound on the probability of any phantom removal in one count."""
        return min(1.0, max(1, population) * self.miss_rate ** self.confirm_rounds(population))


@dataclass(slots=True)
class CountResult:
    """The outcome of one stable count."""

    present: dict[str, frozenset[int]]  # EPC -> antennas it was seen on (or last seen on, if unconfirmed)
    taken: set[str] = field(default_factory=set)
    added: set[str] = field(default_factory=set)
    unconfirmed: set[str] = field(default_factory=set)
    rounds: int = 0
    antenna_rounds: int = 0
    confirm_rounds: int = 0
    duration_s: float = 0.0


def count_stable(
    reader: InventoryReader,
    previous: Mapping[str, frozenset[int]],
    policy: InventoryPolicy,
) -> CountResult:
    """Count the cabinet against ``previous`` (EPC -> antennas last seen). Raises what the reader raises."""
    started = time.monotonic()
    all_antennas = tuple(reader.antennas)
    k = policy.confirm_rounds(len(previous))
    first = reader.inventory(1, antennas=all_antennas)
    seen: dict[str, set[int]] = {epc: set(s.antennas) for epc, s in first.tags.items()}
    bad = set(first.antenna_errors)
    misses: dict[str, int] = {}
    for epc, ants in previous.items():
        if epc in seen:
            continue
        where = set(ants) or set(all_antennas)
        misses[epc] = 0 if where <= bad else 1
    rounds, antenna_rounds = 1, len(all_antennas)
    taken: set[str] = set()
    open_suspects = {e for e, m in misses.items() if m < k}
    taken.update(e for e, m in misses.items() if m >= k)
    while open_suspects and rounds < policy.max_rounds:
        ants_needed = sorted({a for e in open_suspects for a in (previous[e] or all_antennas)})
        res = reader.inventory(1, antennas=ants_needed)
        rounds += 1
        antenna_rounds += len(ants_needed)
        for epc, s in res.tags.items():
            seen.setdefault(epc, set()).update(s.antennas)
        errs = set(res.antenna_errors)
        for epc in list(open_suspects):
            if epc in seen:
                open_suspects.discard(epc)
                continue
            if set(previous[epc] or all_antennas) <= errs:
                continue  # its antennas could not look: no evidence either way
            misses[epc] += 1
            if misses[epc] >= k:
                open_suspects.discard(epc)
                taken.add(epc)
    present = {epc: frozenset(a) for epc, a in seen.items()}
    for epc in open_suspects:
        present[epc] = frozenset(previous[epc])
    result = CountResult(
        present=present,
        taken=taken,
        added={e for e in seen if e not in previous},
        unconfirmed=set(open_suspects),
        rounds=rounds,
        antenna_rounds=antenna_rounds,
        confirm_rounds=k,
        duration_s=time.monotonic() - started,
    )
    log.info("count: %d present, %d taken, %d added, %d unconfirmed; %d rounds (%d antenna-rounds), k=%d, %.2f s",
             len(present), len(taken), len(result.added), len(open_suspects), rounds, antenna_rounds, k,
             result.duration_s)
    return result
