"""Cabinet benchmarks: door close → taken/returned committed, and phantom removals over many sessions.

``python -m hw_sim.cabinet_bench [--sessions 50] [--phantom-sessions 1000] [--hold-s 6]`` prints one
JSON object per figure:

* ``phantom_removals``: the counting code on the in-memory Gen2 reader
  (:class:`hw_sim.rfid_reader.SimGen2Field`, virtual clock: 300 reads/s, 10 ms per
  round, 5 ms per antenna switch) over 1,000 sessions of 200 tags at 5% misses,
  the door held ``--hold-s`` between counts; phantoms (removals reported for tags
  still present), missed removals and the modelled count time, once with Gen2
  session S1 confirming rounds and once with real-time inventories only.
* ``close_to_committed``: the real agent on a :class:`hw_sim.cabinet.SimCabinet` with
  200 tagged items on 4 antennas, the pty reader pacing ~300 tag reads/s and
  missing each tag in 5% of rounds; a nurse holds the door open ``--hold-s``
  and takes 1-3 items (sometimes putting one back), a restocker refills the
  cabinet when more than 6 are out (not timed); measured from the door
  shutting to the count being committed, with its parts: door shut → count
  start, round 1, the confirming rounds, count end → committed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import device.cabinet.agent as cabinet_agent
from device.cabinet.inventory import CountResult, InventoryPolicy, InventoryReader, count_stable
from device.hal.rfid.r2000 import Command, Session, Target
from device.hal.rfid.reader import InventoryResult
from hw_sim import reaper
from hw_sim.cabinet import SimCabinet, SimTaggedItem
from hw_sim.rfid_reader import SimGen2Field
from spd_common.logsetup import setup_logging


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_s": round(statistics.median(values), 3), "p99_s": round(pct(values, 99), 3),
            "max_s": round(max(values), 3)}


class _CountTimer:
    """Records each count the agent runs (start time and result); installed in place of the agent's count_stable."""

    def __init__(self) -> None:
        self.counts: list[tuple[float, CountResult]] = []

    def __call__(self, reader: InventoryReader, previous: Mapping[str, frozenset[int]],
                 policy: InventoryPolicy) -> CountResult:
        started = time.monotonic()
        result = count_stable(reader, previous, policy)
        self.counts.append((started, result))
        return result


def bench_close_to_committed(sessions: int, *, tags: int = 200, hold_s: float = 6.0,
                             seed: int = 1) -> dict[str, object]:
    rng = random.Random(seed)
    lat: list[float] = []
    parts: dict[str, list[float]] = {"close_to_count_start": [], "first_round": [], "confirming": [],
                                     "count_end_to_committed": []}
    phantoms = missed = with_session = 0
    timer = _CountTimer()
    setattr(cabinet_agent, "count_stable", timer)  # noqa: B010 - the bench's instrumentation, undone below
    try:
        with tempfile.TemporaryDirectory() as d:
            cab = SimCabinet(Path(d), items=tags, tags_per_s=300.0, sim_miss_rate=0.05, miss_rate=0.05,
                             phantom_target=1e-5, reader_timeout_s=0.3, unlock_s=5.0, seed=seed)
            cab.start(timeout_s=60)
            out: list[SimTaggedItem] = []
            population: list[int] = []
            restocks = 0
            try:
                for _ in range(sessions):
                    if len(out) > 6:  # a restocker brings everything back (not timed: nothing is taken)
                        cab.badge("R0001")
                        cab.open_door()
                        cab.put_back(out)
                        out.clear()
                        time.sleep(hold_s)
                        cab.close_door(timeout_s=60)
                        restocks += 1
                    after = cab.log.last_seq
                    cab.badge("N0001")
                    cab.open_door()
                    back: list[SimTaggedItem] = []
                    if out and rng.random() < 0.4:
                        back = [out.pop(rng.randrange(len(out)))]
                        cab.put_back(back)
                    taken = cab.take(rng.randint(1, 3))
                    out.extend(taken)
                    time.sleep(hold_s)
                    closed = cab.close_door(timeout_s=60)
                    committed = cab.agent.counts[-1][1]
                    lat.append(committed - closed)
                    started, result = timer.counts[-1]
                    population.append(len(result.present))
                    with_session += result.session is not None
                    parts["close_to_count_start"].append(started - closed)
                    parts["first_round"].append(result.first_round_s)
                    parts["confirming"].append(result.duration_s - result.first_round_s)
                    parts["count_end_to_committed"].append(committed - started - result.duration_s)
                    got_taken = {e.body["epc"] for e in cab.events("taken", after_seq=after)}
                    got_back = {e.body["epc"] for e in cab.events("returned", after_seq=after)}
                    want_taken = {t.epc for t in taken}
                    phantoms += len(got_taken - want_taken)
                    missed += len(want_taken - got_taken) + len({b.epc for b in back} - got_back)
                rounds = dict(cab.reader.stats.rounds_by_command)
            finally:
                cab.stop()
    finally:
        setattr(cabinet_agent, "count_stable", count_stable)  # noqa: B010
    return {"figure": "close_to_committed", "tags": tags, "antennas": 4, "reads_per_s": 300, "miss_rate": 0.05,
            "round_overhead_s": 0.01, "antenna_switch_s": 0.005, "door_held_s": hold_s, "sessions": sessions,
            **_summary(lat), "phantoms": phantoms, "missed": missed, "counts_with_s1": with_session,
            "tags_present_min_max": [min(population), max(population)], "untimed_restocks": restocks,
            "parts_p50_p99_s": {k: [round(statistics.median(v), 3), round(pct(v, 99), 3)] for k, v in parts.items()},
            "antenna_rounds": {"0x89": rounds.get(Command.REAL_TIME_INVENTORY, 0),
                               "0x8B": rounds.get(Command.CUSTOMIZED_SESSION_TARGET_INVENTORY, 0)},
            "confirm_rounds": InventoryPolicy(miss_rate=0.05, phantom_target=1e-5).confirm_rounds(tags)}


class _TimedField(SimGen2Field):
    """Also keeps the virtual time at which each antenna round ended (aligned with ``commands``)."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.round_ends: list[float] = []

    def inventory(self, rounds: int = 1, *, antennas: Iterable[int] | None = None, repeat: int = 1,
                  session: Session | None = None, target: Target = Target.A) -> InventoryResult:
        ants = tuple(antennas) if antennas is not None else self.antennas
        result = InventoryResult()
        for _ in range(rounds):
            for a in ants:
                res = super().inventory(1, antennas=(a,), repeat=repeat, session=session, target=target)
                self.round_ends.append(self.now)
                for epc, s in res.tags.items():
                    got = result.tags.setdefault(epc, s)
                    if got is not s:
                        got.count += s.count
                        got.antennas |= s.antennas
                result.antenna_errors.update(res.antenna_errors)
            result.rounds_completed += 1
        return result


def bench_phantoms(sessions: int, *, tags: int = 200, miss_rate: float = 0.05, hold_s: float = 6.0,
                   session: bool = True, seed: int = 2) -> dict[str, object]:
    rng = random.Random(seed)
    policy = InventoryPolicy(miss_rate=miss_rate, phantom_target=1e-5, session=Session.S1 if session else None)
    field = _TimedField(miss_rate=miss_rate, seed=seed, tags_per_s=300.0)
    for i in range(tags):
        field.add_tag(f"30{i:022X}", (1 + i % 4,))
    outside: dict[str, frozenset[int]] = {}
    phantoms = missed = wrong_added = 0
    modelled: list[float] = []
    first: list[float] = []
    for _ in range(sessions):
        previous = field.tags()
        if len(outside) > 12:  # a restock brings everything back
            for e, a in outside.items():
                field.add_tag(e, a)
            outside.clear()
        elif outside and rng.random() < 0.4:
            epc = rng.choice(sorted(outside))
            field.add_tag(epc, outside.pop(epc))
        for e in rng.sample(sorted(previous), rng.randint(1, 3)):
            if e in field.tags():
                outside[e] = previous[e]
                field.remove_tag(e)
        field.advance(hold_s)
        t0, calls = field.now, len(field.commands)
        r = count_stable(field, previous, policy)
        modelled.append(field.now - t0)
        first.append(field.round_ends[calls + len(field.antennas) - 1] - t0)
        now = field.tags()
        truly_gone = set(previous) - set(now)
        phantoms += len(r.taken - truly_gone)
        missed += len(truly_gone - r.taken)
        wrong_added += len(r.added - (set(now) - set(previous)))
    return {"figure": "phantom_removals", "sessions": sessions, "tags": tags, "miss_rate": miss_rate,
            "reader": "in-memory Gen2 (virtual clock: 300 reads/s, 10 ms/round, 5 ms/antenna switch)",
            "confirming_rounds": "S1 target A, deciding round real-time" if session else "real-time (0x89) only",
            "confirm_rounds": policy.confirm_rounds(tags), "phantom_bound_per_count": policy.phantom_bound(tags),
            "phantoms": phantoms, "missed": missed, "wrong_added": wrong_added,
            "modelled_p50_s": round(statistics.median(modelled), 3), "modelled_p99_s": round(pct(modelled, 99), 3),
            "modelled_first_round_p50_s": round(statistics.median(first), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.cabinet_bench", description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=50, help="sessions on the real agent (paced reader)")
    p.add_argument("--phantom-sessions", type=int, default=1000)
    p.add_argument("--hold-s", type=float, default=6.0, help="door held open per session (the reader is idle)")
    a = p.parse_args(argv)
    setup_logging()
    reaper.exit_on_signals()  # SIGTERM/SIGHUP: unwind through the cabinets' stop()
    print(json.dumps(bench_phantoms(a.phantom_sessions, hold_s=a.hold_s)), flush=True)
    print(json.dumps(bench_phantoms(a.phantom_sessions, hold_s=a.hold_s, session=False)), flush=True)
    print(json.dumps(bench_close_to_committed(a.sessions, hold_s=a.hold_s)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
