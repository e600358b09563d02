"""Spine benchmarks: scan → commit, scan → stored / HIS ACK for a fleet, and draining a large backlog.

``python -m hw_sim.bench {commit,fleet,backlog,all}`` prints one JSON object per
figure; docs/benchmarks.md records the results with the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

from device.eventlog import EventLog
from device.sync import DeviceSync
from gateway.ingest import IngestService
from gateway.store import GatewayStore
from hw_sim import reaper
from hw_sim.broker import MosquittoBroker
from hw_sim.handheld import SimHandheld, scan_for
from hw_sim.harness import SpineHarness
from spd_common.logsetup import setup_logging


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 50) * 1000, 2),
        "p99_ms": round(pct(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2) if values else float("nan"),
    }


def bench_commit(n: int) -> dict[str, object]:
    """Scan → event committed on the device (WAL, synchronous=FULL), on this machine's disk."""
    with tempfile.TemporaryDirectory() as d:
        hh = SimHandheld(device="BENCH1", site="H1", data_dir=Path(d), broker_host="127.0.0.1", broker_port=1)
        for i in range(1, n + 1):
            hh.scan(i)
        lat = hh.commit_latencies_s
        hh.log.close()
    return {"figure": "scan_to_commit", **_ms(lat)}


def run_fleet_worker(*, first: int, count: int, site: str, data_dir: Path, broker_port: int, rate: float,
                     duration_s: float) -> list[float]:
    """Run ``count`` in-process handhelds scanning at ``rate``/s each; returns their commit latencies."""
    fleet = [
        SimHandheld(device=f"F{i:03d}", site=site, data_dir=data_dir, broker_host="127.0.0.1",
                    broker_port=broker_port, seed=i, batch_size=50).start()
        for i in range(first, first + count)
    ]
    stop = threading.Event()

    def scanner(hh: SimHandheld) -> None:
        rng = random.Random(hh.device)
        time.sleep(rng.random() / rate)  # spread the phases
        n = 0
        next_t = time.monotonic()
        while not stop.is_set():
            n += 1
            hh.scan(n)
            next_t += 1.0 / rate
            stop.wait(max(0.0, next_t - time.monotonic()))

    threads = [threading.Thread(target=scanner, args=(hh,), daemon=True) for hh in fleet]
    for t in threads:
        t.start()
    time.sleep(duration_s)
    stop.set()
    for t in threads:
        t.join()
    for hh in fleet:
        hh.wait_drained(60)
    lat = [x for hh in fleet for x in hh.commit_latencies_s]
    for hh in fleet:
        hh.stop()
    return lat


class BenchError(RuntimeError):
    """A benchmark could not finish (a worker timed out or failed); everything it started has been ended."""


def _collect_worker(p: subprocess.Popen[bytes], timeout_s: float) -> list[float]:
    try:
        out, _ = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"fleet worker pid {p.pid} did not finish within {timeout_s:.0f}s") from None
    if p.returncode != 0:
        raise BenchError(f"fleet worker pid {p.pid} exited with {p.returncode}")
    return list(json.loads(out))


def bench_fleet(devices: int, rate: float, duration_s: float, workers: int = 4, *,
                worker_timeout_s: float | None = None) -> dict[str, object]:
    """Scan → stored at gateway and scan → HIS ACK, with ``devices`` handhelds scanning at ``rate``/s each.

    The handhelds run in ``workers`` child processes (as real handhelds are separate machines), the
    gateway in its own process, the simulated HIS in this one. Workers, gateway and broker are ended
    on every way out: a worker that times out or fails, an exception, SIGTERM (see :mod:`hw_sim.reaper`).
    """
    timeout_s = duration_s + 180 if worker_timeout_s is None else worker_timeout_s
    with tempfile.TemporaryDirectory() as d:
        h = SpineHarness(Path(d))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            h.start()
            per = -(-devices // workers)
            t0 = time.time()
            for w in range(workers):
                first, count = w * per, min(per, devices - w * per)
                if count <= 0:
                    break
                procs.append(reaper.spawn(
                    [sys.executable, "-m", "hw_sim.bench", "fleet-worker", "--first", str(first), "--count",
                     str(count), "--site", h.site, "--data-dir", str(h.device_dir), "--broker-port",
                     str(h.broker.port), "--rate", str(rate), "--duration", str(duration_s)],
                    stdout=subprocess.PIPE,
                ))
            commit: list[float] = []
            deadline = time.monotonic() + timeout_s
            for p in procs:
                commit += _collect_worker(p, max(0.0, deadline - time.monotonic()))
            for path in h.device_dir.glob("*.db"):  # the workers' handhelds: count their logs in the tally
                h.device_db_paths[path.stem] = path
            settled = h.wait_settled(timeout_s=120)
            db = sqlite3.connect(h.gateway_db)
            stored = [r[0] for r in db.execute(
                "SELECT stored_at - ts_ms / 1000.0 FROM events WHERE kind = 'consume' AND ts_ms >= ?", (t0 * 1000,))]
            acked = [r[0] for r in db.execute(
                "SELECT c.finished_at - e.ts_ms / 1000.0 FROM charges c JOIN events e ON e.device = c.device "
                "AND e.seq = c.seq WHERE c.status = 'accepted'")]
            db.close()
        finally:
            for p in procs:
                reaper.stop(p, sig=signal.SIGKILL)
                if p.stdout is not None:
                    p.stdout.close()
            h.close()
    return {
        "figure": "fleet",
        "devices": devices,
        "rate_per_device": rate,
        "duration_s": duration_s,
        "scans": settled.scans,
        "stored": settled.stored,
        "charged": settled.charged,
        "lost": settled.lost,
        "duplicates": settled.duplicates,
        "scan_to_commit": _ms(commit),
        "scan_to_stored": _ms(stored),
        "scan_to_his_ack": _ms(acked),
    }


def bench_backlog(events: int) -> dict[str, object]:
    """``events`` queued on one offline device: time from the broker's return until all are acknowledged."""
    with tempfile.TemporaryDirectory() as d:
        broker = MosquittoBroker(workdir=Path(d) / "broker")
        log = EventLog(Path(d) / "BIG.db", device="BIG")
        catalog = SimHandheld(device="X", site="H1", data_dir=Path(d), broker_host="127.0.0.1", broker_port=1).catalog
        t_fill = time.monotonic()
        for n in range(1, events + 1):
            pair = scan_for(1, "BIG", n, catalog)
            log.append("consume", {"admission": pair.wristband, "udi": pair.udi, "operator": "N1", "dept": "OR"})
        fill_s = time.monotonic() - t_fill
        store = GatewayStore(Path(d) / "gw.db")
        sync = DeviceSync(log, site="H1", host=broker.host, port=broker.port, batch_size=500, window=8,
                          reconnect_min_s=0.2, reconnect_max_s=0.5, resend_after_s=10)
        gw = IngestService(store, host=broker.host, port=broker.port)
        try:
            sync.start()
            time.sleep(1.0)  # the device is trying to connect; the broker is down
            t0 = time.monotonic()
            broker.start()
            gw.start()
            while log.backlog() > 0:
                time.sleep(0.05)
            drain_s = time.monotonic() - t0
            stored = store.counts()["events"]
        finally:
            sync.stop()
            gw.stop()
            broker.close()
            store.close()
            log.close()
    return {"figure": "backlog_drain", "events": events, "fill_s": round(fill_s, 1), "drain_s": round(drain_s, 2),
            "events_per_s": round(events / drain_s), "stored": stored}


ACK_AA = "MSH|^~\\&|HIS|HOSP|SPD|H1|20250101105320||ACK^P03^ACK|A0001234|P|2.5\rMSA|AA|C20250101-000001\r"
ACK_AE = ("MSH|^~\\&|HIS|HOSP|SPD|H1|20250101105320||ACK^P03^ACK|A0001234|P|2.5\r"
          "MSA|AE|C20250101-000001|Charge refused\\F\\duplicate\r"
          "ERR|||207^Application internal error^HL70357|E||||duplicate charge \\T\\ lot\r")


def bench_ack(n: int) -> dict[str, object]:
    """Parse time of a typical HIS acknowledgement (gateway.his.ack.parse_ack), best of five rounds."""
    from gateway.his.ack import parse_ack

    figures: dict[str, object] = {"figure": "ack_parse", "parses": n}
    for name, ack in (("aa_us", ACK_AA), ("ae_with_err_us", ACK_AE)):
        best = min(timeit.repeat(lambda ack=ack: parse_ack(ack), number=n, repeat=5)) / n  # type: ignore[misc]
        figures[name] = round(best * 1e6, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.bench", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("which", choices=["commit", "fleet", "backlog", "ack", "all", "fleet-worker"])
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--site", default="H1", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--broker-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--commits", type=int, default=2000)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--acks", type=int, default=20_000, help="ACK parses per round (ack)")
    p.add_argument("--worker-timeout", type=float, default=None,
                   help="seconds to wait for the fleet workers (default: duration + 180)")
    a = p.parse_args(argv)
    setup_logging(quiet=logging.ERROR)
    reaper.exit_on_signals()  # SIGTERM/SIGHUP: unwind, so the broker, gateway and workers are ended
    if a.which == "fleet-worker":
        lat = run_fleet_worker(first=a.first, count=a.count, site=a.site, data_dir=a.data_dir,
                               broker_port=a.broker_port, rate=a.rate, duration_s=a.duration)
        print(json.dumps(lat))
        return 0
    if a.which in ("commit", "all"):
        print(json.dumps(bench_commit(a.commits)), flush=True)
    if a.which in ("fleet", "all"):
        try:
            print(json.dumps(bench_fleet(a.devices, a.rate, a.duration, worker_timeout_s=a.worker_timeout)),
                  flush=True)
        except BenchError as err:
            print(f"bench fleet: {err}; its gateway, broker and workers were stopped", file=sys.stderr)
            return 1
    if a.which in ("backlog", "all"):
        print(json.dumps(bench_backlog(a.events)), flush=True)
    if a.which in ("ack", "all"):
        print(json.dumps(bench_ack(a.acks)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


