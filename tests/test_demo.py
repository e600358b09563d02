"""The README's main job, smaller: the demo runs end to end and its last line says nothing was lost or doubled.

Its scans include those of a real handheld (``spd-device run``) worked by a scripted nurse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_loses_nothing_doubles_nothing_and_the_cabinet_matches_its_shelves(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hw_sim.demo", "--handhelds", "2", "--scans", "150", "--rate", "10",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().split("\n")
    summary = json.loads(lines[-1])
    assert (summary["lost"], summary["duplicates"], summary["invented"], summary["chain_breaks"]) == (0, 0, 0, 0)
    assert summary["scans"] > 2 * 100  # both handhelds' committed scans, and the cabinet's
    assert summary["charged"] + summary["refused_by_bridge"] == summary["scans"]
    [cabinet] = summary["cabinets"]
    assert cabinet["device"] == "CB01" and cabinet["sessions"] > 0 and cabinet["records_match_shelves"] is True
    assert any("cabinet controller CB01 killed" in line for line in lines)
    assert any(line.startswith("cabinet CB01:") and "records match the shelves" in line for line in lines)
    [runtime] = summary["runtime_handhelds"]  # the real spd-device run handheld, counted in the tally above
    assert runtime["device"] == "HR01" and runtime["scans"] > 0 and runtime["exit"] == 0 and runtime["backlog"] == 0
