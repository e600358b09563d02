"""Every process a harness starts is ended when the harness ends, however it ends.

Harness children (Mosquitto, gateways, handhelds, cabinets, bench workers)
each start in a session of their own (``start_new_session``), so a Ctrl-C in
the terminal does not hit them mid-step and a test can kill one hard; the
price is that nothing ends them when the harness dies. So:

* :func:`spawn` starts a child in its own process group and records it;
  :func:`stop` ends the whole group (SIGTERM, then SIGKILL after a grace
  period) and forgets it;
* an ``atexit`` hook kills every group still recorded, for the paths no
  ``finally`` covers (an exception out of ``main``, ``sys.exit`` anywhere);
* :func:`exit_on_signals` turns SIGTERM and SIGHUP into ``SystemExit`` in a
  harness's ``main``, so ``finally`` blocks and the hook run then too. A signal
  that lands while the main thread is in :func:`spawn` waits until the child is
  recorded: raised between the fork and the record, the exit would leave that
  child running with nothing to end it.

A SIGKILL of the harness itself cannot be caught; its children then outlive
it (they hold their work directory path in their command line, see the tests).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_live: dict[int, subprocess.Popen[Any]] = {}
_spawning_in_main = False  # the main thread is between fork and record: a signal's exit waits
_held_signal: int | None = None


def spawn(argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` in a new session (its own process group), recorded until :func:`stop` reaps it.

    In the main thread, a SIGTERM or SIGHUP that arrives meanwhile (see :func:`exit_on_signals`) is
    raised once the child is recorded, so the unwinding ends it too.
    """
    global _spawning_in_main, _held_signal
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        _spawning_in_main = True
    try:
        proc: subprocess.Popen[Any] = subprocess.Popen(list(argv), start_new_session=True, **popen_kw)
        track(proc)
    finally:
        if in_main:
            _spawning_in_main = False
            if _held_signal is not None:  # the exit asked for wins over a failed start
                signum, _held_signal = _held_signal, None
                raise SystemExit(128 + signum)
    return proc


def track(proc: subprocess.Popen[Any]) -> None:
    """Record a child started elsewhere (it must lead its own process group: ``start_new_session=True``)."""
    with _lock:
        _live[proc.pid] = proc


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal the child's process group, only while its leader is unreaped (alive or a zombie).

    Once reaped, the leader's pid, which is the group id, may belong to someone else.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _exited(proc: subprocess.Popen[Any], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the leader to exit, leaving it unreaped (``WNOWAIT``) so its group id holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return True
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop(proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> int | None:
    """Send ``sig`` to the child's process group, SIGKILL the group after ``grace_s``; the child's exit code."""
    try:
        if sig != signal.SIGKILL:
            _signal_group(proc, sig)
            if not _exited(proc, grace_s):
                log.warning("pid %d did not end on signal %d within %.0fs: killing its group", proc.pid, sig, grace_s)
        _signal_group(proc, signal.SIGKILL)  # the leader if still there, and whatever it started in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        return proc.returncode
    finally:
        with _lock:
            _live.pop(proc.pid, None)


def live() -> list[subprocess.Popen[Any]]:
    """Children recorded and not yet reaped."""
    with _lock:
        return list(_live.values())


def reap_all() -> int:
    """SIGKILL every recorded child's group; how many were recorded."""
    procs = live()
    for proc in procs:
        stop(proc, sig=signal.SIGKILL)
    return len(procs)


@atexit.register
def _reap_at_exit() -> None:
    n = reap_all()
    if n:
        print(f"hw_sim: ended {n} child process(es) left running at exit", file=sys.stderr)


def exit_on_signals(*signals: int) -> None:
    """In a harness's main thread: SIGTERM and SIGHUP (or ``signals``) raise ``SystemExit(128 + signum)``."""

    def _exit(signum: int, frame: FrameType | None) -> None:
        global _held_signal
        if _spawning_in_main:  # raised once the child is recorded: see spawn()
            _held_signal = signum
            return
        raise SystemExit(128 + signum)

    for sig in signals or (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)
