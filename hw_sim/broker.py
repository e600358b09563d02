"""A private Mosquitto broker on a free loopback port, for tests, demos and chaos runs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from hw_sim import reaper

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """Mosquitto could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto not found: install the Debian package 'mosquitto' (make deps does it)")


class MosquittoBroker:
    """Runs ``mosquitto`` with a generated config bound to 127.0.0.1 on a free port.

    ``kill()`` is a hard SIGKILL (no persistence flush); ``restart()`` starts it
    again on the same port, as a crashed broker coming back would.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: str | Path | None = None,
        extra_config: str = "",
        persistence: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="spd-broker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.persistence = persistence
        self._proc: subprocess.Popen[bytes] | None = None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            self.extra_config,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        if self.running:
            return self
        self._write_config()
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._proc = reaper.spawn([find_mosquitto(), "-c", str(self.conf_path)], stdout=logf, stderr=logf)
        logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                log.debug("mosquitto up on %s:%d", self.host, self.port)
                return self
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s}s")

    @property
    def pid(self) -> int | None:
        """The Mosquitto process id while it runs (for CPU accounting)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """Hard-kill the broker (SIGKILL): in-memory queues and in-flight messages are lost."""
        if self._proc is not None:
            reaper.stop(self._proc, sig=signal.SIGKILL)
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            reaper.stop(self._proc, sig=signal.SIGTERM, grace_s=5.0)
        self._proc = None

    def restart(self, *, down_s: float = 0.0) -> None:
        self.kill()
        if down_s:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
