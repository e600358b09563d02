"""Power cuts at random points while a writer appends to the event log on the power-loss filesystem.

A child process appends events and prints each seq only after ``append``
returned (the nurse's beep). The power is cut at a random moment (SIGKILL the
writer, drop every unsynced byte), the log is reopened and every acknowledged
event must still be there, unchanged, with a sound database and hash chain.

With ``synchronous=NORMAL`` (WAL) acknowledged events are lost, which shows
the check can see a loss; with the product's settings none may be.

``SPD_POWER_CUTS`` (default 20) and ``SPD_POWER_SEED`` (default 20250601)
change the number of cuts and the seed of the FULL drill, e.g.
``SPD_POWER_CUTS=50 pytest tests/test_power_loss_eventlog.py``; the drill also
runs alone and prints its figures:
``python tests/test_power_loss_eventlog.py drill FULL 50 20250601``.
"""

from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from device.eventlog import EventLog
from hw_sim.powerfs import fuse_unavailable

DEVICE = "cab-01"
REPO = Path(__file__).resolve().parent.parent
FULL_CUTS = int(os.environ.get("SPD_POWER_CUTS", "20"))
FULL_SEED = int(os.environ.get("SPD_POWER_SEED", "20250601"))


pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


class NormalSyncEventLog(EventLog):
    """The product's log with the one setting that breaks invariant 1: commits are not fsynced."""

    def __init__(self, path: str | Path, *, device: str, **kwargs: Any) -> None:
        super().__init__(path, device=device, **kwargs)
        self._db.execute("PRAGMA synchronous=NORMAL")


def _writer(db_path: str, synchronous: str) -> None:
    """Child: append forever, printing ``seq hash`` after each append has returned."""
    cls = EventLog if synchronous == "FULL" else NormalSyncEventLog
    log = cls(db_path, device=DEVICE)
    n = 0
    while True:
        n += 1
        ev = log.append("consume", {"admission": "ZY0001234567", "gtin": "09506000134352", "serial": f"S{n}"})
        sys.stdout.write(f"{ev.seq} {ev.hash}\n")
        sys.stdout.flush()


@dataclass
class DrillResult:
    cuts: int = 0
    acknowledged: int = 0
    lost: list[int] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    chain_breaks: int = 0
    bytes_dropped: int = 0


def _acks(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in text.split("\n")[:-1]:  # a line cut short by the kill was never a beep
        seq, digest = line.split()
        out[int(seq)] = digest
    return out


def power_cut_drill(workdir: Path, *, synchronous: str, cuts: int, seed: int) -> DrillResult:
    from hw_sim.powerfs import PowerLossFs

    rng = random.Random(seed)
    result = DrillResult()
    acked: dict[int, str] = {}
    db_path = workdir / "mnt" / "events.db"
    with PowerLossFs(workdir / "disk", workdir / "mnt") as fs:
        for _ in range(cuts):
            writer = subprocess.Popen(
                [sys.executable, __file__, "writer", str(db_path), synchronous],
                stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert writer.stdout is not None
            fd = writer.stdout.fileno()
            want, seen, buf = rng.randint(1, 30), 0, b""
            deadline = time.monotonic() + 20
            while seen < want and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    buf += chunk
                    seen = buf.count(b"\n")
            time.sleep(rng.uniform(0, 0.005))  # cut somewhere inside the next append
            dropped = fs.power_cut(kill=[writer.pid])
            writer.wait()
            buf += writer.stdout.read()
            writer.stdout.close()
            acked.update(_acks(buf.decode()))
            result.cuts += 1
            result.bytes_dropped += dropped.bytes_dropped

            log = EventLog(db_path, device=DEVICE)
            try:
                present = {ev.seq: ev.hash for ev in log.events(limit=1_000_000)}
                result.integrity.append(log.integrity_check())
                result.chain_breaks += len(log.verify_chain())
            finally:
                log.close()
            lost = sorted(seq for seq, digest in acked.items() if present.get(seq) != digest)
            result.lost += lost
            for seq in lost:  # the writer reuses those seqs after the loss
                del acked[seq]
        result.acknowledged = len(acked) + len(result.lost)
    return result


def test_synchronous_normal_loses_acknowledged_events_on_power_cut(tmp_path: Path) -> None:
    result = power_cut_drill(tmp_path, synchronous="NORMAL", cuts=4, seed=7)
    assert result.lost, "the drill did not see the loss that synchronous=NORMAL allows"
    assert result.bytes_dropped > 0
    assert set(result.integrity) == {"ok"}  # WAL NORMAL loses commits but never corrupts
    assert result.chain_breaks == 0


def test_product_event_log_loses_no_acknowledged_event_over_random_power_cuts(tmp_path: Path) -> None:
    result = power_cut_drill(tmp_path, synchronous="FULL", cuts=FULL_CUTS, seed=FULL_SEED)
    assert result.cuts == FULL_CUTS
    assert result.acknowledged >= FULL_CUTS
    assert result.lost == []
    assert result.integrity == ["ok"] * FULL_CUTS
    assert result.chain_breaks == 0


def _drill_main(argv: list[str]) -> int:
    """``python tests/test_power_loss_eventlog.py drill [FULL|NORMAL] [CUTS] [SEED]``: run a drill, print figures."""
    import tempfile

    synchronous = argv[0] if argv else "FULL"
    cuts = int(argv[1]) if len(argv) > 1 else 50
    seed = int(argv[2]) if len(argv) > 2 else FULL_SEED
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="power-drill-") as tmp:
        r = power_cut_drill(Path(tmp), synchronous=synchronous, cuts=cuts, seed=seed)
    print(f"synchronous={synchronous} seed={seed}: {r.cuts} cuts, {r.acknowledged} acknowledged events, "
          f"{len(r.lost)} lost, integrity {sorted(set(r.integrity))}, {r.chain_breaks} chain breaks, "
          f"{r.bytes_dropped} unsynced bytes dropped, {time.monotonic() - started:.1f} s")
    return 1 if r.lost or set(r.integrity) != {"ok"} or r.chain_breaks else 0


if __name__ == "__main__":
    if sys.argv[1] == "drill":
        sys.exit(_drill_main(sys.argv[2:]))
    _writer(sys.argv[2], sys.argv[3])
