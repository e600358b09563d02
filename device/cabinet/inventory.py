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

The same bound covers the other direction: a tag put in the cabinet (a
restock, an item brought back, every tag of the first count) is found only
if some round reads it. A count therefore sweeps every antenna at least ``k``
times (rounds in which an antenna reported an error do not count for it),
``k`` computed over the larger of the previous and the seen population, so
the chance that an added tag goes unrecorded is at most ``N * p**k`` too.
One round would miss each added tag with probability ``p``: the item would
then be recorded later, as returned by whoever opens the cabinet next, or
never, if a nurse takes it out first (found by the chaos run).

Speed: round 1 reads every antenna once. Tags of the previous inventory not
seen are *suspects*. Each further round runs on the antennas still owed a
sweep and those where an unresolved suspect was last seen; a suspect read
again is present, a suspect missed ``k`` times is confirmed taken, and
counting stops as soon as every suspect is one or the other and every
antenna has had its ``k`` sweeps. With a Gen2 session the extra sweeps are
cheap: tags already read stay silent, only the unread ones answer. A round in which a suspect's antenna reported an
error does not count as a miss for it; suspects still open after
``max_rounds`` are kept as present (unconfirmed), never reported as taken.

Gen2 sessions (``policy.session``, S1 by default): round 1 and the confirming
rounds are session/target inventories with target A. Every tag read in round 1
flips its flag to B and stays silent for the flag's persistence, so a
confirming round is answered only by tags not read yet: the present suspects
(plus any tag whose flag has already decayed back to A, which costs time, never
correctness). A present suspect was not read, so it still holds A and each
confirming round is again a fresh chance for it to answer with probability
``1 - p``: the ``p**k`` math above is unchanged. It rests on three conditions,
each enforced here:

* every tag holds A when round 1 starts: the session is used only when the
  reader has not inventoried for ``flag_quiet_s`` (the S1 persistence ceiling,
  5 s in the Gen2 spec); otherwise the count runs on real-time inventories;
* a tag that flipped was reported: an antenna whose round lost or garbled a
  packet on the serial line (``InventoryResult.line_errors``) may hold a
  flipped, unreported tag, so its remaining rounds in this count are real-time
  inventories, which every tag answers whatever its flags;
* a tag whose persistence outlasts ``flag_quiet_s`` (the spec lets 5% of tags
  miss its bounds) could sit in B through round 1 and every target-A round: the
  round that would be a suspect's ``k``-th miss is therefore always a
  real-time inventory, so such a tag is only reported taken if that round
  misses it too (probability ``p``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from device.hal.rfid.r2000 import Session, Target
from device.hal.rfid.reader import InventoryResult

log = logging.getLogger(__name__)


class InventoryReader(Protocol):
    """What counting needs of a reader (:class:`device.hal.rfid.RfidReader` has it)."""

    @property
    def antennas(self) -> tuple[int, ...]: ...

    def inventory(
        self,
        rounds: int = 1,
        *,
        antennas: Iterable[int] | None = None,
        repeat: int = 1,
        session: Session | None = None,
        target: Target = Target.A,
    ) -> InventoryResult: ...

    def seconds_since_inventory(self) -> float: ...


@dataclass(frozen=True, slots=True)
class InventoryPolicy:
    """How sure a removal must be (miss probability, phantom target, rounds) and which Gen2 session confirms."""

    miss_rate: float = 0.05
    phantom_target: float = 1e-5
    min_rounds: int = 2
    max_rounds: int = 12
    session: Session | None = Session.S1  # None: every round is a real-time inventory (0x89)
    flag_quiet_s: float = 5.0  # reader idle this long before a count: every flag of ``session`` is back to A

    def __post_init__(self) -> None:
        if not 0.0 < self.miss_rate < 1.0:
            raise ValueError(f"miss_rate must be in (0, 1), got {self.miss_rate}")
        if not 0.0 < self.phantom_target < 1.0:
            raise ValueError(f"phantom_target must be in (0, 1), got {self.phantom_target}")
        if not 1 <= self.min_rounds <= self.max_rounds:
            raise ValueError("need 1 <= min_rounds <= max_rounds")
        if self.session is Session.S0:
            raise ValueError("S0 flags reset whenever an antenna stops transmitting: use S1, S2 or S3")
        if not self.flag_quiet_s >= 0.0:
            raise ValueError(f"flag_quiet_s must be >= 0, got {self.flag_quiet_s}")

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
    plain_antenna_rounds: int = 0  # of which real-time inventories (every tag answers)
    confirm_rounds: int = 0
    session: Session | None = None  # the session the count used, None if it ran on real-time inventories
    first_round_s: float = 0.0  # round 1 (every antenna) alone
    duration_s: float = 0.0


class _Rounds:
    """Runs one count's rounds: session/target A where the flags can be trusted, real-time inventory elsewhere."""

    def __init__(self, reader: InventoryReader, session: Session | None) -> None:
        self.reader = reader
        self.session = session
        self.tainted: set[int] = set()  # antennas whose flags this count can no longer trust
        self.antenna_rounds = 0
        self.plain_antenna_rounds = 0

    def run(self, antennas: Iterable[int], *, plain: set[int]) -> tuple[dict[str, set[int]], set[int]]:
        """One round on ``antennas`` (``plain`` ones as real-time inventories): (EPC -> antennas, erroring antennas)."""
        ants = sorted(set(antennas))
        by_session = [a for a in ants if self.session is not None and a not in plain and a not in self.tainted]
        by_plain = [a for a in ants if a not in by_session]
        seen: dict[str, set[int]] = {}
        errors: set[int] = set()
        for group, session in ((by_session, self.session), (by_plain, None)):
            if not group:
                continue
            res = self.reader.inventory(1, antennas=group, session=session, target=Target.A)
            for epc, s in res.tags.items():
                seen.setdefault(epc, set()).update(s.antennas)
            errors |= set(res.antenna_errors)
            if session is not None and res.line_errors:
                log.info("serial line lost packets on antennas %s: real-time inventories there from now on",
                         sorted(res.line_errors))
                self.tainted |= set(res.line_errors)
        self.antenna_rounds += len(ants)
        self.plain_antenna_rounds += len(by_plain)
        return seen, errors


def count_stable(
    reader: InventoryReader,
    previous: Mapping[str, frozenset[int]],
    policy: InventoryPolicy,
) -> CountResult:
    """Count the cabinet against ``previous`` (EPC -> antennas last seen). Raises what the reader raises."""
    started = time.monotonic()
    all_antennas = tuple(reader.antennas)
    k = policy.confirm_rounds(len(previous))
    session = policy.session
    if session is not None and reader.seconds_since_inventory() < policy.flag_quiet_s:
        log.info("reader used %.1f s ago (< %.1f s): flags may still be set, counting on real-time inventories",
                 reader.seconds_since_inventory(), policy.flag_quiet_s)
        session = None
    rounds_ = _Rounds(reader, session)

    def where(epc: str) -> frozenset[int]:
        return previous[epc] or frozenset(all_antennas)

    first, bad = rounds_.run(all_antennas, plain=set())
    first_round_s = time.monotonic() - started
    seen: dict[str, set[int]] = first
    sweeps_needed = policy.confirm_rounds(max(len(previous), len(seen)))
    sweeps = {a: 0 if a in bad else 1 for a in all_antennas}  # good looks each antenna had, for added tags
    misses: dict[str, int] = {}
    for epc in previous:
        if epc not in seen:
            misses[epc] = 0 if where(epc) <= bad else 1
    rounds = 1
    taken: set[str] = {e for e, m in misses.items() if m >= k}
    open_suspects = {e for e, m in misses.items() if m < k}
    def unswept() -> set[int]:
        return {a for a, n in sweeps.items() if n < sweeps_needed}

    while (open_suspects or unswept()) and rounds < policy.max_rounds:
        ants_needed = {a for e in open_suspects for a in where(e)} | unswept()
        deciding = {a for e in open_suspects if misses[e] >= k - 1 for a in where(e)}
        res, errs = rounds_.run(ants_needed, plain=deciding)
        rounds += 1
        for a in ants_needed - errs:
            sweeps[a] += 1
        for epc, ants in res.items():
            seen.setdefault(epc, set()).update(ants)
        for epc in list(open_suspects):
            if epc in seen:
                open_suspects.discard(epc)
                continue
            if where(epc) <= errs:
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
        antenna_rounds=rounds_.antenna_rounds,
        plain_antenna_rounds=rounds_.plain_antenna_rounds,
        confirm_rounds=k,
        session=session,
        first_round_s=first_round_s,
        duration_s=time.monotonic() - started,
    )
    log.info("count: %d present, %d taken, %d added, %d unconfirmed; %d rounds (%d antenna-rounds, %d real-time), "
             "k=%d, session %s, %.2f s", len(present), len(taken), len(result.added), len(open_suspects), rounds,
             result.antenna_rounds, result.plain_antenna_rounds, k, session.name if session else "none",
             result.duration_s)
    return result
