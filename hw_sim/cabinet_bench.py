"""Cabinet benchmarks: door close → taken/returned committed, and phantom removals over many sessions.

``python -m hw_sim.cabinet_bench [--sessions 30] [--phantom-sessions 1000]`` prints one JSON
object per figure:

* ``close_to_committed``: the real agent on a :class:`hw_sim.cabinet.SimCabinet` with
  200 tagged items on 4 antennas, the pty reader pacing ~300 tag reads/s and
  missing each tag in 5% of rounds; a nurse takes 1-3 items (and sometimes puts
  one back); measured from the door shutting to the last event of the count
  being committed.
* ``phantom_removals``: the same counting code driven by an in-memory reader
  (:class:`hw_sim.cabinet.SimTagField`, no pacing) over 1,000 sessions of
  200 tags at 5% misses; counts removals reported for tags still present
  (phantoms) and removals missed, and the modelled count time at 300 reads/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
from pathlib import Path

from device.cabinet.inventory import InventoryPolicy, count_stable
from hw_sim.cabinet import SimCabinet, SimTagField, SimTaggedItem


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def bench_close_to_committed(sessions: int, *, tags: int = 200, seed: int = 1) -> dict[str, object]:
    rng = random.Random(seed)
    lat: list[float] = []
    phantoms = missed = 0
    with tempfile.TemporaryDirectory() as d:
        cab = SimCabinet(Path(d), items=tags, tags_per_s=300.0, sim_miss_rate=0.05, miss_rate=0.05,
                         phantom_target=1e-5, reader_timeout_s=0.3, unlock_s=5.0, seed=seed)
        cab.start(timeout_s=60)
        out: list[SimTaggedItem] = []
        try:
            for _ in range(sessions):
                after = cab.log.last_seq
                cab.badge("N0001")
                cab.open_door()
                back: list[SimTaggedItem] = []
                if out and rng.random() < 0.4:
                    back = [out.pop(rng.randrange(len(out)))]
                    cab.put_back(back)
                taken = cab.take(rng.randint(1, 3))
                out.extend(taken)
                closed = cab.close_door(timeout_s=60)
                lat.append(cab.agent.counts[-1][1] - closed)
                got_taken = {e.body["epc"] for e in cab.events("taken", after_seq=after)}
                got_back = {e.body["epc"] for e in cab.events("returned", after_seq=after)}
                want_taken = {t.epc for t in taken}
                phantoms += len(got_taken - want_taken)
                missed += len(want_taken - got_taken) + len({b.epc for b in back} - got_back)
        finally:
            cab.stop()
    return {"figure": "close_to_committed", "tags": tags, "antennas": 4, "reads_per_s": 300, "miss_rate": 0.05,
            "sessions": sessions, "p50_s": round(statistics.median(lat), 3), "p99_s": round(pct(lat, 99), 3),
            "max_s": round(max(lat), 3), "phantoms": phantoms, "missed": missed,
            "confirm_rounds": InventoryPolicy(miss_rate=0.05, phantom_target=1e-5).confirm_rounds(tags)}


def bench_phantoms(sessions: int, *, tags: int = 200, miss_rate: float = 0.05, seed: int = 2) -> dict[str, object]:
    rng = random.Random(seed)
    policy = InventoryPolicy(miss_rate=miss_rate, phantom_target=1e-5)
    field = SimTagField(miss_rate=miss_rate, seed=seed, tags_per_s=300.0)
    for i in range(tags):
        field.tags[f"30{i:022X}"] = {1 + i % 4}
    outside: dict[str, set[int]] = {}
    phantoms = missed = wrong_added = 0
    modelled: list[float] = []
    for _ in range(sessions):
        previous = {e: frozenset(a) for e, a in field.tags.items()}
        if len(outside) > 12:  # a restock brings everything back
            field.tags.update(outside)
            outside.clear()
        elif outside and rng.random() < 0.4:
            epc = rng.choice(sorted(outside))
            field.tags[epc] = outside.pop(epc)
        gone = set(rng.sample(sorted(field.tags), rng.randint(1, 3)))
        for e in gone:
            outside[e] = field.tags.pop(e)
        field.sim_time_s = 0.0
        r = count_stable(field, previous, policy)
        modelled.append(field.sim_time_s)
        truly_gone = set(previous) - set(field.tags)
        phantoms += len(r.taken - truly_gone)
        missed += len(truly_gone - r.taken)
        wrong_added += len(r.added - (set(field.tags) - set(previous)))
    return {"figure": "phantom_removals", "sessions": sessions, "tags": tags, "miss_rate": miss_rate,
            "reader": "in-memory (not paced)", "confirm_rounds": policy.confirm_rounds(tags),
            "phantom_bound_per_count": policy.phantom_bound(tags), "phantoms": phantoms, "missed": missed,
            "wrong_added": wrong_added, "modelled_p50_s_at_300_reads": round(statistics.median(modelled), 3),
            "modelled_p99_s_at_300_reads": round(pct(modelled, 99), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.cabinet_bench", description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=30, help="sessions on the real agent (paced reader)")
    p.add_argument("--phantom-sessions", type=int, default=1000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(bench_phantoms(a.phantom_sessions)), flush=True)
    print(json.dumps(bench_close_to_committed(a.sessions)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
