"""Benchmark: compiled bridge vs pure twin vs biip parse-only, events/s on one core, in one run on one batch.

Run: ``python -m gateway.bridge.bench [--events N] [--twin-events N] [--biip-events N] [--repeat R]
[--clock wall|cpu] [--baseline PATH]``. ``--baseline`` adds another build of the extension (a
``_cbridge*.so`` file, e.g. built from an earlier commit) to the same interleaved rounds, so that
a change is measured before and after in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.bridge import _twin
from gateway.bridge.types import BridgeConfig, Catalog, CatalogItem, EventTuple

START_MS = 1_735_700_000_000  # 2025-01-01 local (UTC+8)


def with_check_digit(first13: str) -> str:
    """Append the GS1 mod-10 check digit to 13 digits."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(first13))
    return first13 + str((10 - total % 10) % 10)


def make_catalog(count: int, rng: random.Random) -> Catalog:
    """A catalog of ``count`` items, one in four high-value, names in Chinese."""
    items = []
    for i in range(count):
        gtin = with_check_digit(f"069{i:010d}")
        high = i % 4 == 0
        items.append(CatalogItem(
            gtin=gtin, item_code=f"SPD{i:06d}", charge_code=f"C{310000 + i}", name=f"一次性使用耗材{i}号",
            spec=f"{rng.randint(1, 9)}.0x{rng.randint(8, 38)}mm", manufacturer="某医疗器械有限公司",
            price_fen=rng.randint(100, 5_000_000), chargeable=True, high_value=high,
        ))
    return Catalog(items)


def make_events(count: int, catalog: Catalog, rng: random.Random) -> list[EventTuple]:
    """Valid scans: DataMatrix/GS1-128 element strings and bracketed text, unique serials."""
    items = list(catalog)
    events: list[EventTuple] = []
    for seq in range(count):
        item = items[rng.randrange(len(items))]
        lot = f"L{rng.randrange(10**6):06d}"
        serial = f"S{seq:09d}"
        form = seq % 3
        if form == 0:
            udi = f"]d201{item.gtin}17271231\x1d10{lot}\x1d21{serial}"
        elif form == 1:
            udi = f"]C101{item.gtin}11240115\x1d17280600\x1d10{lot}\x1d21{serial}"
        else:
            udi = f"(01){item.gtin}(17)270300(10){lot}(21){serial}"
        device = f"CAB-{seq % 200:04d}"
        events.append((device, seq, START_MS + seq * 1000, f"ZY{rng.randrange(10**7):07d}", udi,
                       f"N{rng.randrange(1000):04d}", "心内科"))
    return events


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""``cpu`` counts only the time this thread ran: on a shared machine it leaves out the time other
processes held the core (not what they did to the caches)."""


def rate(run: Callable[[Sequence[Any]], object], events: Sequence[Any], budget_s: float,
         clock: Callable[[], float] = time.perf_counter) -> float:
    """Best events/s of runs of ``run`` on ``events`` repeated for about ``budget_s`` (at least one run)."""
    best = float("inf")
    spent = 0.0
    while spent < budget_s or best == float("inf"):
        started = clock()
        run(events)
        took = clock() - started
        best = min(best, took)
        spent += took
    return len(events) / best


def load_build(path: str) -> Any:
    """Another build of the compiled bridge, from its shared object, beside the one imported normally."""
    spec = importlib.util.spec_from_file_location("spd_bridge_baseline._cbridge", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"not an extension module: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="batch size for the compiled bridge")
    parser.add_argument("--twin-events", type=int, default=20_000, help="subset size for the pure twin")
    parser.add_argument("--biip-events", type=int, default=3_000, help="subset size for biip.parse")
    parser.add_argument("--repeat", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or cpu: the time the benchmark thread ran")
    parser.add_argument("--baseline", metavar="PATH",
                        help="another build of _cbridge (.so) to run in the same rounds, e.g. the previous commit's")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = random.Random(7)
    catalog = make_catalog(2_000, rng)
    config = BridgeConfig(sending_facility="SPD", receiving_facility="HOSP")
    events = make_events(args.events, catalog, rng)
    print(f"batch: {len(events)} valid events, catalog {len(catalog)} items; one core (pinned); "
          f"{args.repeat} interleaved rounds of about 0.25 s each, best run of each; {args.clock} clock")

    contestants: dict[str, tuple[Callable[[Sequence[Any]], object], Sequence[Any]]] = {}
    try:
        from gateway.bridge import _cbridge
    except ImportError:
        print("compiled bridge: NOT BUILT (run: python setup.py build_ext --inplace)")
        check = None
    else:
        def compiled(batch: Sequence[Any]) -> object:
            return _cbridge.charge_compact(batch, catalog, _cbridge.ConsumedSet(), config)

        check = _cbridge.charge_compact(events, catalog, _cbridge.ConsumedSet(), config)
        assert not any(check.status), "benchmark events must all be charged"
        contestants["compiled"] = (compiled, events)
    if args.baseline:
        baseline = load_build(args.baseline)

        def baseline_run(batch: Sequence[Any]) -> object:
            return baseline.charge_compact(batch, catalog, baseline.ConsumedSet(), config)

        if baseline_run(events) != check:
            print("baseline build: its result differs from the compiled bridge's")
        contestants["baseline"] = (baseline_run, events)
    subset = events[: args.twin_events]
    contestants["pure"] = (lambda batch: _twin.charge_compact(batch, catalog, _twin.ConsumedSet(), config), subset)
    try:
        import biip
    except ImportError:
        print("biip: not installed; skipping parse-only baseline")
    else:
        def biip_parse(batch: Sequence[Any]) -> object:
            return [biip.parse(udi) for udi in batch]

        contestants["biip"] = (biip_parse, [event[4] for event in events[: args.biip_events]])

    # Rounds interleave the contestants, so a busy spell of a shared machine slows all of them alike.
    results: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, (run, batch) in contestants.items():
            results[name] = max(results.get(name, 0.0), rate(run, batch, 0.25, CLOCKS[args.clock]))
    if check is not None:
        print(f"compiled bridge  : {results['compiled']:>12,.0f} events/s  (parse + lookup + HL7 render, "
              f"{len(events)} events, {len(check.messages) / len(events):.0f} bytes/message)")
    if "baseline" in results:
        print(f"baseline build   : {results['baseline']:>12,.0f} events/s  ({args.baseline}; "
              f"compiled / baseline {results['compiled'] / results['baseline']:.3f})")
    scope = ("the same batch" if len(subset) == len(events)
             else f"the first {len(subset)} events, per-event rate extrapolated")
    print(f"pure twin        : {results['pure']:>12,.0f} events/s  (measured on {scope})")
    if "biip" in results:
        print(f"biip.parse only  : {results['biip']:>12,.0f} events/s  (parse only, measured on the first "
              f"{len(contestants['biip'][1])} UDIs, per-event rate extrapolated)")

    if "compiled" in results:
        print(f"compiled / twin  : {results['compiled'] / results['pure']:8.1f}x  (target >= 10x)")
        if "biip" in results:
            print(f"compiled / biip  : {results['compiled'] / results['biip']:8.1f}x  (target >= 200x)")
        print(f"compiled target  : >= 1,500,000 events/s -> {'met' if results['compiled'] >= 1.5e6 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
