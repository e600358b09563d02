"""What a ``/metrics`` scrape and an incident-check pass cost on a month's store.

``python -m hw_sim.metrics_bench --events 3000000 --devices 1000`` fills a store with a synthetic month
(events, charges, devices, quarantine, alarms; written straight into the file as fast as SQLite allows:
a fixture, not the gateway's way of writing), then times ``--scrapes`` scrapes of the store's figures
(:class:`gateway.metrics.StoreCollector`, through prometheus-client's exposition) and as many passes of
the incident watch (:class:`gateway.notify.IncidentWatch`). Prints one JSON object; docs/benchmarks.md
records it.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import generate_latest

from gateway.metrics import GatewayMetrics
from gateway.notify import IncidentWatch
from gateway.notify_settings import NotifySettings
from gateway.store import GatewayStore


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _events(n: int, devices: int, rng: random.Random, start: float) -> Iterator[tuple[object, ...]]:
    kinds = ["consume"] * 850 + ["taken"] * 60 + ["returned"] * 40 + ["access"] * 49 + ["alarm"]
    seqs = [0] * devices
    for i in range(n):
        d = rng.randrange(devices)
        seqs[d] += 1
        kind = rng.choice(kinds)
        body = '{"alarm": "door_ajar", "dept": "ICU"}' if kind == "alarm" else '{"dept": "ICU"}'
        at = start + i * (30 * 86400 / n)
        yield (f"DEV{d:04d}", seqs[d], "H1", int(at * 1000), kind, body, "0" * 64, f"{i:064x}", at)


def fill(path: Path, *, events: int, devices: int, seed: int = 1) -> dict[str, int]:
    """A month: ``events`` events over ``devices`` devices, one charge per consume (accepted but a few)."""
    GatewayStore(path).close()  # the schema, by the migrations
    rng = random.Random(seed)
    start = time.time() - 30 * 86400
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    with db:
        db.executemany("INSERT INTO events (device, seq, site, ts_ms, kind, body, prev, hash, stored_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _events(events, devices, rng, start))
        db.execute(
            "INSERT INTO charges (charge_id, device, seq, admission, item_key, line, message, status, created_at) "
            "SELECT printf('C%012d', id), device, seq, printf('ZY%06d', abs(random()) % 20000), "
            "printf('0950600013435/%d', id), '{}', 'MSH', CASE WHEN id % 2000 = 0 THEN 'parked' "
            "WHEN id > (SELECT MAX(id) FROM events) - 400 THEN 'pending' ELSE 'accepted' END, stored_at "
            "FROM events WHERE kind = 'consume'")
        db.executemany("INSERT INTO devices (device, site, last_seen, status, backlog, version) VALUES "
                       "(?, 'H1', ?, ?, ?, '1.4') ON CONFLICT (device) DO NOTHING",
                       [(f"DEV{d:04d}", time.time() - rng.choice([5, 10, 20, 3600]),
                         rng.choice(["online"] * 9 + ["offline"]), rng.randrange(50)) for d in range(devices)])
        db.executemany("INSERT INTO quarantine (device, seq, reason, detail, raw, stored_at) VALUES "
                       "(?, ?, 'bad_event', '', '{}', 0)", [(f"DEV{d:04d}", 10**9 + d) for d in range(devices)])
    counts = {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in ("events", "charges", "devices")}
    db.close()
    return counts


def run(path: Path, *, scrapes: int, lanes: int) -> dict[str, object]:
    store = GatewayStore(path, synchronous="NORMAL")
    metrics = GatewayMetrics(store, lanes=lanes, process=False)
    scrape_ms, size = [], 0
    for _ in range(scrapes):
        t0 = time.perf_counter()
        size = len(generate_latest(metrics.registry))
        scrape_ms.append((time.perf_counter() - t0) * 1000)
    watch = IncidentWatch(store, NotifySettings())
    watch.run_once()  # the first pass opens the incidents of this store (offline devices, parked charges)
    pass_ms = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        watch.run_once()
        pass_ms.append((time.perf_counter() - t0) * 1000)
    open_incidents = len(store.incidents.open_incidents())
    store.close()
    return {"scrape_p50_ms": round(pct(scrape_ms, 50), 1), "scrape_p95_ms": round(pct(scrape_ms, 95), 1),
            "scrape_bytes": size, "watch_pass_p50_ms": round(pct(pass_ms, 50), 1),
            "watch_pass_p95_ms": round(pct(pass_ms, 95), 1), "open_incidents": open_incidents}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.metrics_bench", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=300_000, help="events in the synthetic month (default 300000)")
    p.add_argument("--devices", type=int, default=1000, help="devices they come from (default 1000)")
    p.add_argument("--scrapes", type=int, default=40, help="scrapes and watch passes to time (default 40)")
    p.add_argument("--lanes", type=int, default=4, help="HIS lanes the outbox is counted by (default 4)")
    p.add_argument("--db", type=Path, default=None, help="keep the store here (default: a temporary directory)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the watch's first pass logs every incident it opens
    with tempfile.TemporaryDirectory() as tmp:
        path = a.db or Path(tmp) / "month.db"
        t0 = time.perf_counter()
        counts = fill(path, events=a.events, devices=a.devices)
        filled_s = time.perf_counter() - t0
        result = {**counts, "fill_s": round(filled_s, 1), **run(path, scrapes=a.scrapes, lanes=a.lanes)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
