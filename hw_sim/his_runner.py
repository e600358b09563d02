"""Run a simulated HIS (MLLP or HTTP) as a process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol


class _RunnableHis(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def set_delay(self, seconds: float) -> None: ...
    def reject_charge_codes(self, codes: set[str] | frozenset[str]) -> None: ...
    def stats(self) -> Any: ...
    def credits(self) -> list[Any]: ...


def serve_until_stopped(
    his: _RunnableHis, *, prog: str, address: str, delay_s: float, reject_codes: set[str],
    listening: Callable[[], str],
) -> int:
    """Run a simulated HIS (MLLP or HTTP) until SIGTERM or Ctrl-C; print what it booked."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        his.start()
    except OSError as err:
        his.stop()
        print(f"{prog}: cannot listen on {address}: {err}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        return 2
    his.set_delay(delay_s)
    his.reject_charge_codes(reject_codes)
    print(listening(), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stats = his.stats()
        credits = len(his.credits())
        his.stop()
        signal.signal(signal.SIGTERM, previous)
    print(f"received {stats.received}, charges {stats.unique_charges}, duplicates {stats.duplicates_received}, "
          f"credits {credits}", flush=True)
    return 0
