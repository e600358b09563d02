"""``spd-gateway run --config`` as systemd runs it: READY and WATCHDOG over $NOTIFY_SOCKET, STOPPING on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hw_sim.broker import MosquittoBroker


def test_service_notifies_ready_and_watchdog_and_stops_cleanly(tmp_path: Path, broker: MosquittoBroker) -> None:
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1000000")
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[store]\npath = "gw.db"\n[broker]\nport = {broker.port}\n[his]\nport = 1\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(conf)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ("READY=1" in seen and "WATCHDOG=1" in seen):
            seen += sock.recv(4096).decode().split("\n")
        assert "READY=1" in seen and "WATCHDOG=1" in seen, seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        while "STOPPING=1" not in seen:
            seen += sock.recv(4096).decode().split("\n")
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
