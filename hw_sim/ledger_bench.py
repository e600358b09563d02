"""Stock ledger figures: the projection of device events into stock movements, and the books' reads over it.

A store is filled with cabinet takes and handheld consumes (real signed events, ingested as batches), then
the projection runs from an empty cursor and ``stock``, ``alerts`` and ``replenish`` read the result::

    .venv/bin/python -m hw_sim.ledger_bench --events 200000
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
from pathlib import Path

from gateway.books.alerts import alerts
from gateway.books.ledger import on_hand
from gateway.books.projection import catch_up
from gateway.books.replenish import suggestions
from gateway.store import GatewayStore
from hw_sim.udi_gen import make_gtin, make_udi
from spd_common.wire import GENESIS_HASH, Batch, Event, event_hash


def fill(store: GatewayStore, events: int, *, cabinets: int = 20, seed: int = 1) -> None:
    """``events`` events over ``cabinets`` cabinets: each item taken, then consumed on a handheld."""
    rng = random.Random(seed)
    gtins = [make_gtin(rng) for _ in range(50)]
    per = events // (2 * cabinets)
    t0 = 1_795_000_000_000
    for c in range(cabinets):
        cab, hh = f"CB{c:03d}", f"HH{c:03d}"
        dept = f"D{c % 10}"
        chains: dict[str, list[Event]] = {cab: [], hh: []}
        for i in range(per):
            gtin, serial, ts = rng.choice(gtins), f"{cab}{i:07d}", t0 + i * 60_000
            _emit(chains, cab, ts, "taken", {"epc": "", "gtin": gtin, "serial": serial, "dept": dept, "user": "N1",
                                    "role": "nurse", "session": "S"})
            udi = make_udi(gtin=gtin, lot="L1", serial=serial, expiry=dt.date(2027, 6, 30))
            _emit(chains, hh, ts + 30_000, "consume", {"admission": "ZY0000000001", "udi": udi, "operator": "N1",
                                              "dept": dept})
        for device, out in chains.items():
            for i in range(0, len(out), 1000):
                store.ingest(Batch(device, "H1", out[i:i + 1000]))


def _emit(chains: dict[str, list[Event]], device: str, ts: int, kind: str, body: dict[str, object]) -> None:
    out = chains[device]
    prev = out[-1].hash if out else GENESIS_HASH
    seq = len(out) + 1
    out.append(Event(device, seq, ts, kind, body, prev, event_hash(device, seq, ts, kind, body, prev)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.ledger_bench", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000, help="device events to store and project")
    p.add_argument("--db", type=Path, default=None, help="store to fill (default: a temporary file)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = GatewayStore(a.db or Path(tmp) / "gateway.db", synchronous="OFF")
        fill(store, a.events)
        t = time.perf_counter()
        n = catch_up(store)
        took = time.perf_counter() - t
        print(f"projection: {n} events in {took:.1f} s, {n / took:,.0f} events/s")
        for name, read in (("stock", lambda: len(on_hand(store))), ("alerts", lambda: len(alerts(store))),
                           ("replenish", lambda: len(suggestions(store)))):
            t = time.perf_counter()
            rows = read()
            print(f"{name}: {rows} rows in {time.perf_counter() - t:.2f} s")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
