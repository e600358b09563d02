"""The demo (``make demo``): handhelds and a cabinet work while the broker, the gateway, the HIS and the cabinet's
controller fail; nothing is lost or doubled, and the cabinet's records match its shelves.

Starts a private Mosquitto on a free loopback port, the simulated HIS, the
gateway, several simulated handhelds, a real handheld (``spd-device run``
with ``kind = "handheld"`` on a pty scanner and simulated pins, worked by a
scripted nurse: badge, wristband, items, now and then an expired item or a
return, log-out) and a smart cabinet (the real cabinet
agent on simulated pins with an R2000 reader on a pty, badged into by
scripted nurses and a restocker) as separate processes; part way through it
kills and restarts the broker, kills the gateway with SIGKILL and restarts
it, kills the cabinet's controller and restarts it, makes the HIS drop ACKs
after storing charges and then go down for a while. It then waits for the
system to settle, prints a readable summary, and as its last line one JSON
object counted from the records of the devices, the gateway and the HIS.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from hw_sim import reaper
from hw_sim.chaos_cabinet import read_report, report_mismatches
from hw_sim.harness import SpineHarness, summary_json
from hw_sim.nurse import NurseShift, log_counts, wait_drained
from spd_common.logsetup import setup_logging


def _say(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)


def run_demo(workdir: Path, *, handhelds: int, scans: int, rate: float, seed: int, cabinets: int = 1,
             runtime_handhelds: int = 1) -> int:
    t0 = time.monotonic()
    h = SpineHarness(workdir, seed=seed)
    cabinet_dir = workdir / "cabinets"
    cabinet_ids = [f"CB{i:02d}" for i in range(1, cabinets + 1)]
    runtime_ids = [f"HR{i:02d}" for i in range(1, runtime_handhelds + 1)]
    shifts: dict[str, NurseShift] = {}
    runtime_exit: dict[str, int | None] = {}
    until = 0.0  # wall-clock time the cabinets' staff stop: when the handhelds do

    def start_cabinet(device: str) -> None:
        h.start_cabinet(device, until_wall=until, data_dir=cabinet_dir / f"{device}-data", world_dir=cabinet_dir,
                        extra_args=("--report", str(cabinet_dir / f"{device}-report.json"),
                                    "--corrupt-rate", "0.02", "--garbage-rate", "0.01"))

    try:
        h.start()
        _say(f"broker on 127.0.0.1:{h.broker.port}, simulated HIS on 127.0.0.1:{h.his.port}, gateway started", t0)
        until = time.time() + scans / rate
        for i in range(1, handhelds + 1):
            h.start_handheld(f"HH{i:02d}", scans=scans, rate=rate, garbage_rate=0.02)
        _say(f"{handhelds} handhelds scanning: {scans} scans each at {rate}/s (2% unreadable codes)", t0)
        for device in runtime_ids:
            hh = h.start_handheld_runtime(device, workdir=workdir / device)
            shifts[device] = NurseShift(hh, items=max(1, scans // 2), rate=rate, seed=seed).start()
        if runtime_ids:
            _say(f"{len(runtime_ids)} real handheld(s) (spd-device run, pty scanner, sim pins): a nurse logs in, "
                 f"scans wristbands and {max(1, scans // 2)} items, now and then an expired one or a return", t0)
        for dev in cabinet_ids:
            start_cabinet(dev)
        if cabinet_ids:
            _say(f"{cabinets} cabinet(s) in use: nurses badge in, take items, scan wristband + item; a restocker "
                 "refills (reader: 2% corrupted frames, 1% garbage)", t0)

        time.sleep(4)
        _say("fault: broker killed (SIGKILL); restarting in 2s", t0)
        h.broker.kill()
        time.sleep(2)
        h.broker.start()
        _say("broker back", t0)

        time.sleep(3)
        _say("fault: gateway killed (SIGKILL); restarting in 2s", t0)
        h.kill_gateway()
        time.sleep(2)
        h.start_gateway()
        _say("gateway back", t0)

        if cabinet_ids:
            time.sleep(2)
            _say(f"fault: cabinet controller {cabinet_ids[0]} killed (SIGKILL); restarting", t0)
            h.cabinets[cabinet_ids[0]].kill()
            start_cabinet(cabinet_ids[0])
            _say("cabinet controller back: it recounts its shelves and resends what the gateway has not acked", t0)

        time.sleep(2)
        _say("fault: HIS stores the next 3 charges and drops their ACKs", t0)
        h.his.drop_acks_after_store(3)
        time.sleep(2)
        _say("fault: HIS down for 4s", t0)
        h.his.go_down()
        time.sleep(4)
        h.his.come_up()
        _say("HIS back", t0)

        h.wait_handhelds(timeout_s=300)
        for device, shift in shifts.items():
            if not shift.join(300) or shift.error is not None:
                raise RuntimeError(f"the nurse at {device} could not finish: {shift.error}")
            if not wait_drained(h.runtimes[device].db_path, 180):
                raise RuntimeError(f"handheld {device} did not drain its log: {h.runtimes[device].log_text()[-2000:]}")
            runtime_exit[device] = h.runtimes[device].stop()
        for dev in cabinet_ids:
            h.cabinets[dev].wait(timeout=300)
        _say("devices finished and drained their logs; waiting for charges to settle", t0)
        t = h.wait_settled(timeout_s=180)
        stats = h.his.stats()
    finally:
        h.close()
    cabinet_reports = {dev: read_report(cabinet_dir / f"{dev}-report.json") for dev in cabinet_ids}
    differ = {dev: report_mismatches(dev, r) if r is not None else [f"{dev}: no final report"]
              for dev, r in cabinet_reports.items()}
    cabinets_ok = all(r is not None and r["drained"] and not differ[dev] for dev, r in cabinet_reports.items())

    print()
    print("spd-edge demo summary")
    print("---------------------")
    print(f"scans committed on devices (nurse told 'ok'):   {t.scans}")
    print(f"scans refused at the device with a reason:      {t.refused_at_scan}")
    print(f"stored at the gateway:                          {t.stored}")
    print(f"charged at the HIS (unique charges):            {t.charged}")
    print(f"refused by the charging bridge:                 {t.refused_by_bridge}")
    print(f"parked (HIS said AE/AR):                        {t.parked}")
    print(f"consumption records with patient:               {t.consumption_records}")
    print(f"HIS messages received / resends recognised:     {t.his_messages_received} / {t.his_resends_recognised}")
    print(f"HIS ACKs dropped on purpose:                    {stats.acks_dropped}")
    print(f"hash-chain breaks:                              {t.chain_breaks}")
    for dev, r in cabinet_reports.items():
        if r is None:
            print(f"cabinet {dev}: NO FINAL REPORT (see {workdir / (dev + '.log')})")
            continue
        match = "records match the shelves" if not differ[dev] else "RECORDS DIFFER FROM SHELVES: " + "; ".join(
            differ[dev])
        print(f"cabinet {dev}: {r['sessions']} sessions, {r['used']} items scanned to a patient at it; "
              f"staff took {r['taken']} items, put in {r['added']}; "
              f"the cabinet recorded {r['taken_recorded']} taken, {r['added_recorded']} returned or restocked "
              f"({r['corrupted_frames']} corrupted reader frames): {match}")
    runtime_counts = {dev: log_counts(h.runtimes[dev].db_path) for dev in runtime_ids}
    for dev, c in runtime_counts.items():
        print(f"handheld {dev} (spd-device run): {c.get('consume', 0)} items charged, {c.get('refused_scan', 0)} "
              f"scans refused with a reason, {c.get('return_unused', 0)} returns, {c.get('access', 0)} log-ins/outs; "
              f"backlog {c['backlog']}, exit status {runtime_exit.get(dev)}")
    print(f"LOST: {t.lost}   DUPLICATES: {t.duplicates}   INVENTED: {t.invented}")
    print(f"records kept in {workdir}")
    summary = json.loads(summary_json(t))
    summary["cabinets"] = [{"device": dev, "sessions": r["sessions"] if r else None,
                            "records_match_shelves": not differ[dev]} for dev, r in cabinet_reports.items()]
    summary["runtime_handhelds"] = [{"device": dev, "scans": c.get("consume", 0), "refused": c.get("refused_scan", 0),
                                     "returns": c.get("return_unused", 0), "backlog": c["backlog"],
                                     "exit": runtime_exit.get(dev)} for dev, c in runtime_counts.items()]
    print(json.dumps(summary))
    runtimes_ok = all(runtime_exit.get(dev) == 0 and c["backlog"] == 0 for dev, c in runtime_counts.items())
    return 0 if t.lost == 0 and t.duplicates == 0 and t.invented == 0 and cabinets_ok and runtimes_ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spd-sim demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--handhelds", type=int, default=5)
    p.add_argument("--scans", type=int, default=300, help="scans per handheld")
    p.add_argument("--rate", type=float, default=15.0, help="scans per second per handheld")
    p.add_argument("--cabinets", type=int, default=1, help="smart cabinets in use alongside the handhelds")
    p.add_argument("--runtime-handhelds", type=int, default=1,
                   help="real handhelds (spd-device run) worked by a scripted nurse on a pty scanner")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    setup_logging(quiet=logging.ERROR)
    reaper.exit_on_signals()  # SIGTERM/SIGHUP: unwind, so the broker, gateway and devices are ended
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="spd-demo-"))
    rc = run_demo(workdir, handhelds=a.handhelds, scans=a.scans, rate=a.rate, seed=a.seed, cabinets=a.cabinets,
                  runtime_handhelds=a.runtime_handhelds)
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())



