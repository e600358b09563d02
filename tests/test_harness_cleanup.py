"""Harnesses end every process they start, on every way out: a worker timing out, an exception, SIGTERM.

Each harness run here gets its own TMPDIR, and every process it starts (broker,
gateway, bench workers) names a path under it on its command line; that is how
the tests find what is left. Whatever they find they end, by pid, so a failing
test leaves nothing behind either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hw_sim import reaper

ROOT = Path(__file__).resolve().parents[1]


def started_under(path: Path) -> dict[int, str]:
    """Live processes (not zombies) whose command line names ``path``: pid -> command line."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(path) in cmd and state != "Z":
            found[int(entry.name)] = cmd.strip()
    return found


def end_leftovers(path: Path) -> dict[int, str]:
    """SIGKILL what is left under ``path`` (each by its pid); what was found."""
    left = started_under(path)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def env_with_tmp(tmp: Path) -> dict[str, str]:
    return dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))


def test_bench_fleet_worker_timeout_ends_workers_gateway_and_broker(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "hw_sim.bench", "fleet", "--devices", "2", "--rate", "1", "--duration", "30",
             "--worker-timeout", "0.5"],
            env=env_with_tmp(run_dir), capture_output=True, text=True, timeout=180, cwd=ROOT)
        assert r.returncode == 1, r.stderr[-2000:]
        assert "did not finish within 0s" in r.stderr and "were stopped" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        left = end_leftovers(run_dir)
    assert left == {}, "left running after the bench returned"


def test_bench_fleet_sigterm_ends_workers_gateway_and_broker(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bench = subprocess.Popen(
        [sys.executable, "-m", "hw_sim.bench", "fleet", "--devices", "2", "--rate", "1", "--duration", "120"],
        env=env_with_tmp(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        # all three kinds up: broker, gateway, workers
        wait_until(lambda: {k for c in started_under(run_dir).values()
                            for k in ("mosquitto", "gateway.cli", "fleet-worker") if k in c}
                   == {"mosquitto", "gateway.cli", "fleet-worker"}, "broker, gateway and workers")
        bench.send_signal(signal.SIGTERM)
        rc = bench.wait(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        assert bench.stderr is not None
        bench.stderr.close()
        left = end_leftovers(run_dir)
    assert left == {}, "left running after the bench was terminated"
    assert rc == 128 + signal.SIGTERM, "the bench unwound (SystemExit) rather than died on the signal"


def test_an_exception_out_of_a_harness_still_ends_its_children(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from hw_sim import reaper
        from hw_sim.broker import MosquittoBroker
        MosquittoBroker(workdir={str(tmp_path / 'broker')!r}).start()
        reaper.spawn([sys.executable, "-c", "import time; time.sleep(300)", {str(tmp_path)!r}])
        raise RuntimeError("the scenario failed")
    """)
    try:
        r = subprocess.run([sys.executable, "-c", script], env=env_with_tmp(tmp_path), capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert "the scenario failed" in r.stderr and "ended 2 child process(es)" in r.stderr
    finally:
        left = end_leftovers(tmp_path)
    assert left == {}


def test_stop_ends_a_child_that_ignores_sigterm_and_what_it_started(tmp_path: Path) -> None:
    marker = str(tmp_path / "grandchild")
    child = reaper.spawn([sys.executable, "-c", textwrap.dedent(f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {marker!r}])
        print("ready", flush=True)
        time.sleep(300)
    """), str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        assert len(started_under(tmp_path)) == 2
        t0 = time.monotonic()
        assert reaper.stop(child, grace_s=0.5) == -signal.SIGKILL
        assert time.monotonic() - t0 < 20
        wait_until(lambda: not started_under(tmp_path), "the group to be gone", timeout_s=10)
        assert child not in reaper.live()
    finally:
        if child.stdout is not None:
            child.stdout.close()
        left = end_leftovers(tmp_path)
    assert left == {}


def test_harness_close_goes_on_when_a_part_fails_to_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hw_sim.harness import HarnessError, SpineHarness

    h = SpineHarness(tmp_path / "h")
    h.broker.start()
    h.his.start()

    def broken_stop() -> None:
        raise OSError("the HIS would not stop")

    monkeypatch.setattr(h.his, "stop", broken_stop)
    try:
        with pytest.raises(HarnessError, match="would not stop"):
            h.close()
        assert not h.broker.running, "the broker was still stopped after the HIS failed to"
    finally:
        monkeypatch.undo()
        h.his.stop()
        left = end_leftovers(tmp_path)
    assert left == {}


def test_a_sigterm_while_a_child_is_being_started_still_ends_that_child(tmp_path: Path) -> None:
    # the signal lands after the fork and before the child is recorded: the exit must wait for the record
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys
        from hw_sim import reaper
        reaper.exit_on_signals()
        real_popen = subprocess.Popen

        def popen_then_sigterm(*a, **kw):
            proc = real_popen(*a, **kw)
            os.kill(os.getpid(), signal.SIGTERM)
            return proc

        subprocess.Popen = popen_then_sigterm
        reaper.spawn([sys.executable, "-c", "import time; time.sleep(300)", {str(tmp_path)!r}])
        print("not reached", flush=True)
    """)
    try:
        r = subprocess.run([sys.executable, "-c", script], env=env_with_tmp(tmp_path), capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 128 + signal.SIGTERM, r.stderr
        assert "not reached" not in r.stdout
        assert "ended 1 child process(es)" in r.stderr
    finally:
        left = end_leftovers(tmp_path)
    assert left == {}
