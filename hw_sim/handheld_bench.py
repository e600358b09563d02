"""Handheld benchmarks: scan → verdict shown, and the resident memory of handheld and cabinet agents.

``python -m hw_sim.handheld_bench [--scans 500] [--screen-scans 100]`` prints one JSON object per figure:

* ``scan_to_verdict_headless``: the real ``spd-device run`` handheld process on a
  pty scanner (no broker: the link state does not change the path); from the
  scanner's last byte written to the verdict line read from the agent's
  standard output — the scanner thread, the loop, the checks, the durable
  commit (SQLite WAL, ``synchronous=FULL``) and the line written;
* ``scan_to_verdict_screen``: the same process in tmux with its console UI;
  from the last byte written to the verdict's text appearing in
  ``tmux capture-pane`` (polled; each capture costs a few milliseconds, which
  are in the figure);
* ``rss``: resident memory (``VmRSS``, and the peak ``VmHWM``) of a handheld
  agent after the scans, and of a cabinet agent (``spd-device run``, sim pins,
  pty R2000 reader) without and with a camera configured, each after it has
  settled; against the targets 40 MB (handheld) and 150 MB (cabinet).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hw_sim.broker import free_port
from hw_sim.cabinet import DEFAULT_STAFF
from hw_sim.nurse import CODE128, NURSE_BADGE, HandheldProcess, item_udi
from hw_sim.rfid_reader import SimR2000Reader
from spd_common.logsetup import setup_logging

HANDHELD_TARGET_MB = 40
CABINET_TARGET_MB = 150


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(name: str, ms: list[float], **extra: Any) -> dict[str, Any]:
    return {"figure": name, "n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(_pct(ms, 0.99), 2), "max_ms": round(max(ms), 2), **extra}


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)


def _login(hh: HandheldProcess) -> None:
    hh.scan(CODE128 + NURSE_BADGE)
    hh.wait_line(" verdict HELLO")
    hh.scan(f"{CODE128}ZY0000012345")
    hh.wait_line(" verdict PATIENT")


def bench_headless(workdir: Path, scans: int) -> tuple[dict[str, Any], tuple[float, float]]:
    hh = HandheldProcess(workdir, device="HB01", broker_port=free_port()).start()
    try:
        _login(hh)
        ms: list[float] = []
        for n in range(1, scans + 1):
            code = item_udi("HB01", n)
            t0 = time.perf_counter()
            hh.scan(code)
            line = hh.wait_line(" verdict ")
            ms.append((time.perf_counter() - t0) * 1000)
            if " CHARGED " not in line:
                raise RuntimeError(f"unexpected verdict: {line}")
            time.sleep(0.02)  # a nurse scans a few items a second, not back to back
        pid = hh.pid()
        assert pid is not None
        memory = rss_mb(pid)
    finally:
        hh.stop()
    return _summary("scan_to_verdict_headless", ms), memory


def bench_screen(workdir: Path, scans: int) -> dict[str, Any] | None:
    if shutil.which("tmux") is None:
        return None
    hh = HandheldProcess(workdir, device="HB02", broker_port=free_port(), tmux=True).start()
    try:
        hh.scan(CODE128 + NURSE_BADGE)
        hh.wait_screen("NURSE N0001")
        hh.scan(f"{CODE128}ZY0000012345")
        hh.wait_screen("PATIENT ZY0000012345")
        ms: list[float] = []
        for n in range(1, scans + 1):
            code = item_udi("HB02", n)
            t0 = time.perf_counter()
            hh.scan(code)
            hh.wait_screen(f"serial HB02S{n:08d}", timeout_s=10)
            ms.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    finally:
        hh.stop()
    return _summary("scan_to_verdict_screen", ms, note="includes tmux capture-pane polling")


def _cabinet_rss(workdir: Path, *, camera: bool) -> tuple[float, float]:
    from spd_common.allowlist import Badge, write_allowlist

    workdir.mkdir(parents=True, exist_ok=True)
    reader = SimR2000Reader(tags_per_s=3000)
    for i in range(50):
        reader.add_tag(f"3035A875440B5E00000F{i:04X}", antennas=(1 + i % 4,))
    write_allowlist(workdir / "allow.json", [Badge(s.badge, s.user, s.role) for s in DEFAULT_STAFF])
    camera_toml = '[cabinet.camera]\nenabled = true\ndevice = "/dev/video-bench-none"\n' if camera else ""
    cfg = workdir / "cabinet.toml"
    cfg.write_text(f"""
[device]
id = "CBBENCH"
site = "H1"
data_dir = "data"
[broker]
port = {free_port()}
[cabinet]
dept = "ICU-2"
pin_factory = "sim"
allowlist_file = "allow.json"
buzzer_pin = 22
led_pin = 23
[[cabinet.doors]]
name = "door"
lock_pin = 17
door_pin = 27
[cabinet.reader]
url = "{reader.url}"
timeout_s = 0.5
poll_s = 0.5
{camera_toml}""", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "stderr.log", "ab"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "data" / "inventory.json").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"cabinet agent did not count: {(workdir / 'stderr.log').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(3.0)  # a few idle polls, the camera thread retrying its device
        return rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        reader.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.handheld_bench", description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=500, help="item scans timed on the headless handheld")
    p.add_argument("--screen-scans", type=int, default=100, help="item scans timed on the console UI (tmux)")
    a = p.parse_args(argv)
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="spd-hh-bench-") as tmp:
        root = Path(tmp)
        headless, handheld_mem = bench_headless(root / "headless", a.scans)
        print(json.dumps(headless), flush=True)
        screen = bench_screen(root / "screen", a.screen_scans) if a.screen_scans else None
        if screen is not None:
            print(json.dumps(screen), flush=True)
        cabinet = _cabinet_rss(root / "cabinet", camera=False)
        cabinet_camera = _cabinet_rss(root / "cabinet-camera", camera=True)
    print(json.dumps({"figure": "rss", "unit": "MB (VmRSS, VmHWM)",
                      "handheld": {"rss": handheld_mem[0], "peak": handheld_mem[1], "target": HANDHELD_TARGET_MB},
                      "cabinet": {"rss": cabinet[0], "peak": cabinet[1], "target": CABINET_TARGET_MB},
                      "cabinet_with_camera": {"rss": cabinet_camera[0], "peak": cabinet_camera[1],
                                              "target": CABINET_TARGET_MB}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
