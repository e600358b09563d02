"""``spd-sim ward``: several simulated cabinets with scripted nurses and restockers against a broker and gateway.

Each cabinet is the real cabinet agent on simulated pins and a pty reader,
with its own event log and sync to the broker. A nurse badges in, takes one
to three items, closes the door, then scans a patient's wristband and each
item's UDI at the cabinet (the charge); now and then an item goes back unused
in a later session, and a restocker refills. ``--gateway local`` brings up a
private broker, simulated HIS and gateway (:class:`hw_sim.harness.SpineHarness`);
``--gateway HOST:PORT`` uses the broker in front of a running gateway. The last
line printed is one JSON object of counts taken from the records.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from device.eventlog import EventLog
from device.sync import DeviceSync
from hw_sim.cabinet import SimCabinet, SimTaggedItem, make_items
from hw_sim.harness import SpineHarness, summary_json
from spd_common.logsetup import setup_logging

log = logging.getLogger(__name__)


def nurse_script(cab: SimCabinet, *, sessions: int, seed: int, counts: Counter[str]) -> None:
    """Scripted staff at one cabinet (runs on its own thread)."""
    rng = random.Random(seed)
    unused: list[SimTaggedItem] = []
    next_serial = int(cab.items[-1].serial) + 1
    for n in range(sessions):
        if n % 6 == 5:
            new = make_items(rng.randint(2, 4), first_serial=next_serial, antennas=(1, 2, 3, 4), seed=rng.random())
            next_serial += len(new)
            cab.badge("R0001")
            if cab.open_door():
                cab.add_new(new)
                cab.close_door()
                counts["restock_sessions"] += 1
            continue
        cab.badge(rng.choice(["N0001", "N0002"]))
        if not cab.open_door():
            counts["door_not_opened"] += 1
            continue
        if unused and rng.random() < 0.5:
            back = [unused.pop()]
            cab.put_back(back)
            counts["put_back"] += 1
        taken = cab.take(min(rng.randint(1, 3), len(cab.inside))) if cab.inside else []
        cab.close_door()
        counts["nurse_sessions"] += 1
        for item in taken:
            if rng.random() < 0.2:
                unused.append(item)  # not used on the patient: comes back later
                continue
            cab.scan_pair(item)
            counts["linked"] += 1
        time.sleep(rng.uniform(0.0, 0.1))


def run_ward(workdir: Path, *, cabinets: int, sessions: int, gateway: str, seed: int, settle_s: float) -> int:
    harness: SpineHarness | None = None
    if gateway == "local":
        harness = SpineHarness(workdir / "spine", seed=seed).start()
        host, port = "127.0.0.1", harness.broker.port
        device_dir = harness.device_dir
        site = harness.site
    else:
        host, _, port_text = gateway.rpartition(":")
        host, port = host or "127.0.0.1", int(port_text)
        device_dir = workdir / "devices"
        device_dir.mkdir(parents=True, exist_ok=True)
        site = "H1"
    cabs: list[SimCabinet] = []
    syncs: list[DeviceSync] = []
    counts: Counter[str] = Counter()
    try:
        for i in range(1, cabinets + 1):
            device = f"CAB{i:02d}"
            elog = EventLog(device_dir / f"{device}.db", device=device)
            if harness is not None and hasattr(harness, "device_db_paths"):
                harness.device_db_paths[device] = elog.path  # counted in the tally
            sync = DeviceSync(elog, site=site, host=host, port=port, resend_after_s=2.0)
            syncs.append(sync.start())
            cab = SimCabinet(workdir / device, device=device, site=site, items=30, first_serial=i * 10**7 + 1,
                             seed=seed * 1000 + i, sim_miss_rate=0.02, eventlog=elog,
                             on_committed=lambda ev, s=sync: s.notify())
            cabs.append(cab.start())
        print(f"{cabinets} cabinets up, broker {host}:{port}; {sessions} sessions each", flush=True)
        threads = [threading.Thread(target=nurse_script, args=(c,), name=f"staff-{c.device}",
                                    kwargs={"sessions": sessions, "seed": seed * 7919 + k, "counts": counts})
                   for k, c in enumerate(cabs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline and any(c.log.backlog() for c in cabs):
            time.sleep(0.2)
        kinds: Counter[str] = Counter()
        alarms: Counter[str] = Counter()
        for c in cabs:
            for e in c.events():
                kinds[e.kind] += 1
                if e.kind == "alarm":
                    alarms[str(e.body.get("alarm"))] += 1
        backlog = sum(c.log.backlog() for c in cabs)
        print(f"staff: {dict(counts)}", flush=True)
        print(f"events: {dict(kinds)}; alarms: {dict(alarms)}; not yet acknowledged: {backlog}", flush=True)
        result: dict[str, object] = {"cabinets": cabinets, "events": dict(kinds), "alarms": dict(alarms),
                                     "backlog": backlog}
        if harness is not None:
            t = harness.wait_settled(timeout_s=settle_s)
            result["spine"] = json.loads(summary_json(t))
        print(json.dumps(result), flush=True)
        ok = backlog == 0 and (harness is None or (result["spine"]["lost"] == 0  # type: ignore[index]
                                                   and result["spine"]["duplicates"] == 0))  # type: ignore[index]
        return 0 if ok else 1
    finally:
        for c in cabs:
            c.stop()
        for s in syncs:
            s.stop()
        for c in cabs:
            c.log.close()
        if harness is not None:
            harness.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spd-sim ward", description="A ward of simulated cabinets against a gateway.")
    p.add_argument("--cabinets", type=int, default=3)
    p.add_argument("--sessions", type=int, default=10, help="sessions per cabinet")
    p.add_argument("--gateway", default="local", help="'local' (start broker, HIS, gateway) or the broker HOST:PORT")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--settle", type=float, default=60.0, help="seconds to wait for acks and charges")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    setup_logging(int(a.verbose))
    if a.workdir is not None:
        return run_ward(a.workdir, cabinets=a.cabinets, sessions=a.sessions, gateway=a.gateway, seed=a.seed,
                        settle_s=a.settle)
    with tempfile.TemporaryDirectory(prefix="spd-ward-") as d:
        return run_ward(Path(d), cabinets=a.cabinets, sessions=a.sessions, gateway=a.gateway, seed=a.seed,
                        settle_s=a.settle)


if __name__ == "__main__":
    sys.exit(main())
