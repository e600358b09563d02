"""A cabinet process killed mid-session comes back to the same shelves: nothing lost, doubled or invented."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from hw_sim.harness import SpineHarness

pytestmark = pytest.mark.slow


def test_killed_cabinet_records_every_take_once_and_charges_every_scan_once(tmp_path: Path) -> None:
    h = SpineHarness(tmp_path / "spine", seed=11).start()
    world = tmp_path / "world"
    journal = tmp_path / "nurse.txt"
    report = world / "CB07-report.json"
    try:
        cab = h.start_cabinet("CB07", until_wall=time.time() + 20, data_dir=tmp_path / "data", world_dir=world,
                              extra_args=("--nurse-journal", str(journal), "--report", str(report),
                                          "--corrupt-rate", "0.03", "--garbage-rate", "0.02"))
        for pause in (5.0, 6.0):  # SIGKILL twice, wherever the staff are, and start it again (same arguments)
            time.sleep(pause)
            cab.kill(signal.SIGKILL)
            cab.start()
        assert cab.wait(timeout=300) == 0, cab.output()[-3000:]
        t = h.wait_settled(timeout_s=120)
    finally:
        h.close()
    result = json.loads(report.read_text())
    told = {int(line.split()[1]) for line in journal.read_text().split("\n") if line.strip()}
    assert told and t.scans >= len(told)
    assert (t.lost, t.duplicates, t.invented, t.events_not_stored) == (0, 0, 0, 0)
    assert t.charged + t.refused_by_bridge == t.scans
    assert result["inventory_missing"] == [] and result["inventory_extra"] == []
    assert (result["taken"], result["added"]) == (result["taken_recorded"], result["added_recorded"])
    assert result["corrupted_frames"] > 0 and result["sessions"] > 5
