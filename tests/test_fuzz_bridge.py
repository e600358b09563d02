"""Short runs of the charging bridge's differential fuzzer (hw_sim.fuzz_bridge); the long run is in
docs/reliability.md. The two-thread run is a child process, so that a segfault fails the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hw_sim.fuzz_bridge import Mismatch, compiled_module, run_differential, run_fuzz_input, run_threads

ROOT = Path(__file__).resolve().parent.parent
needs_compiled = pytest.mark.skipif(
    compiled_module() is None, reason="compiled bridge not built (python setup.py build_ext --inplace); "
                                      "nothing to compare the twin with")


@needs_compiled
def test_compiled_and_twin_agree_on_hostile_batches() -> None:
    report = run_differential(20_000, seed=11)
    assert report.mismatches == []
    assert report.events == 20_000


def test_two_threads_sharing_and_mutating_inputs_cannot_crash_the_bridge() -> None:
    # every implementation available: the compiled one (when built) and the twin
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "hw_sim.fuzz_bridge", "--events", "0", "--thread-rounds", "25",
                           "--seed", "5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "0 problems" in proc.stdout


def test_thread_run_reports_what_no_event_could_produce() -> None:
    # the checker itself: in-process with the twin (cannot crash), a clean run has no problems
    report = run_threads(3, seed=2, calls_per_thread=5)
    assert report.problems == [] and report.calls == 3 * 2 * 5


@needs_compiled
def test_fuzz_target_compares_a_batch_built_from_bytes() -> None:
    for data in (b"", b"\xff" * 40, "心内科\udcff".encode("utf-8", "surrogatepass"), (1 << 70).to_bytes(9, "big")):
        try:
            run_fuzz_input(data)
        except Mismatch as exc:  # pragma: no cover - a failure message
            pytest.fail(str(exc))
