"""Census benchmarks: ADT messages through the listener, and the size and build time of the catalog document.

``python -m hw_sim.census_bench [--messages 2000] [--items 10000] [--in-house 2000] [--discharged 2100]``
prints one JSON object per figure:

* ``adt``: ADT messages (admits, transfers, discharges) sent one after the other over one MLLP
  connection to :class:`gateway.adt.AdtListener` on a fresh store (SQLite, ``synchronous=FULL``);
  each waits for its ACK, which is sent once the change is committed: messages per second and the
  ACK latency percentiles;
* ``document``: the catalog document of a large hospital (``--items`` items, ``--in-house``
  patients in house, ``--discharged`` discharged in the last week): its size as pushed (JSON), the
  census part, zlib-compressed size, and the time to build it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.adt import AdtListener
from gateway.catalog import CatalogEntry, import_catalog
from gateway.catalog_export import build_device_catalog
from gateway.census import CensusRecord, PatientState, import_census
from gateway.store import GatewayStore
from hw_sim.adt import AdtSender, Patient, adt_message
from hw_sim.udi_gen import make_gtin


def bench_adt(messages: int, workdir: Path) -> dict[str, object]:
    store = GatewayStore(workdir / "adt.db")
    listener = AdtListener(store, port=0).start()
    latencies = []
    codes: dict[str, int] = {}
    try:
        with AdtSender("127.0.0.1", listener.port) as sender:
            start = time.perf_counter()
            for n in range(messages):
                trigger = ("A01", "A02", "A03")[n % 3]
                patient = Patient(f"ZY2026{n // 3:06d}", "Zhang^San", ward=f"{n % 40}", bed=str(n % 50), dept="CARD")
                t = time.perf_counter()
                ack = sender.send(adt_message(trigger, patient))
                latencies.append(time.perf_counter() - t)
                codes[ack.code.value] = codes.get(ack.code.value, 0) + 1
            elapsed = time.perf_counter() - start
    finally:
        listener.stop()
        store.close()
    q = statistics.quantiles(latencies, n=100)
    return {"figure": "adt", "messages": messages, "acks": codes, "per_s": round(messages / elapsed, 1),
            "ack_p50_ms": round(q[49] * 1000, 2), "ack_p99_ms": round(q[98] * 1000, 2)}


def bench_document(items: int, in_house: int, discharged: int, workdir: Path) -> dict[str, object]:
    import zlib

    rng = random.Random(1)
    store = GatewayStore(workdir / "doc.db")
    gtins: set[str] = set()
    while len(gtins) < items:
        gtins.add(make_gtin(rng))
    import_catalog(store, [CatalogEntry(g, f"HC{i:06d}", f"331{i:05d}", "一次性使用无菌注射器", "5ml 0.6mm",
                                        "某某医疗器械有限公司", 1234, True, i % 5 == 0)
                           for i, g in enumerate(sorted(gtins))])
    now = time.time()
    records = [CensusRecord(f"ZY2026{i:06d}", PatientState.IN_HOUSE, "张*", f"{i % 40}病区", "心内科", str(i % 50))
               for i in range(in_house)]
    records += [CensusRecord(f"ZY2025{i:06d}", PatientState.DISCHARGED, "李*", "7B", "骨科", "3", None,
                             now - rng.random() * 7 * 86400) for i in range(discharged)]
    import_census(store, records)
    start = time.perf_counter()
    doc = build_device_catalog(store, dept=None)
    elapsed = time.perf_counter() - start
    store.close()
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    census = json.dumps(doc["patients"], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return {"figure": "document", "items": items, "in_house": in_house, "discharged": discharged,
            "bytes": len(raw), "census_bytes": len(census), "zlib_bytes": len(zlib.compress(raw)),
            "build_s": round(elapsed, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.census_bench", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--in-house", type=int, default=2000)
    p.add_argument("--discharged", type=int, default=2100)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(bench_adt(a.messages, Path(d))), flush=True)
        print(json.dumps(bench_document(a.items, a.in_house, a.discharged, Path(d))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
