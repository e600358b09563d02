"""Enrolment under a hostile crowd: how long a device takes to enrol while idle and slow connections are held open.

Run ``python -m hw_sim.enrol_bench`` (``--help`` for options). A real
enrolment service (own site CA, tokens) runs on loopback; ``--idle``
connections that never start TLS and ``--slow`` TLS connections sending a
request one byte a second come from their own loopback addresses
(127.0.1.x), as a port scanner or stuck devices on the ward network would;
then ``--devices`` devices are provisioned one after another from
127.0.0.1 with the real ``spd-device provision`` code, each timed from the
first byte to a written config. The same is measured with no crowd first.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.commands.provision import provision
from gateway.commands import public_key_pem
from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
from gateway.pki import SiteCA

SLOW_REQUEST = b"POST /v1/enrol HTTP/1.1\r\nHost: enrol\r\nContent-Length: 200\r\n\r\n" + b"x" * 200


class Crowd:
    """Idle TCP and one-byte-a-second TLS connections from their own loopback addresses."""

    def __init__(self, svc: EnrolmentService, ca_pem: bytes, *, idle: int, slow: int) -> None:
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        addresses = (f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(idle + slow))
        self.slow = [ctx.wrap_socket(self._connect(svc, next(addresses)), server_hostname=svc.host)
                     for _ in range(slow)]
        self.idle = [self._connect(svc, next(addresses)) for _ in range(idle)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    @staticmethod
    def _connect(svc: EnrolmentService, source: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.connect((svc.host, svc.port))
        return sock

    def _trickle(self) -> None:
        i = 0
        while not self._stop.wait(1.0):
            for s in self.slow:
                try:
                    s.send(SLOW_REQUEST[i % len(SLOW_REQUEST):][:1])
                except OSError:
                    pass
            i += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in [*self.slow, *self.idle]:
            s.close()


def _enrol_times(svc: EnrolmentService, ca: SiteCA, tokens: EnrolmentTokens, root: Path, prefix: str,
                 devices: int) -> list[float]:
    times = []
    for i in range(devices):
        name = f"{prefix}{i:03d}"
        token = tokens.issue(site="H1", device=name).text
        start = time.perf_counter()
        provision(root / name / "device.toml", url=svc.url, token=token, ca_fingerprint=ca.fingerprint,
                  data_dir=root / name / "data", timeout_s=10.0)
        times.append(time.perf_counter() - start)
    return times


def _line(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"{label}: {len(times)} devices, p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw_sim.enrol_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--slow", type=int, default=20)
    a = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="enrol-bench-") as tmp:
        root = Path(tmp)
        ca = SiteCA.create(root / "ca", site="H1")
        tokens = EnrolmentTokens(root / "ca" / "tokens.db")
        settings = EnrolmentSettings("127.0.0.1", 8883, public_key_pem(Ed25519PrivateKey.generate()))
        svc = EnrolmentService(ca, tokens, settings).start()
        try:
            print(_line("no crowd", _enrol_times(svc, ca, tokens, root, "Q", a.devices)), flush=True)
            crowd = Crowd(svc, ca.cert_pem, idle=a.idle, slow=a.slow)
            try:
                deadline = time.monotonic() + 30
                while svc.server.open_connections() < a.idle + a.slow and time.monotonic() < deadline:
                    time.sleep(0.05)  # the server accepts them on its own loop
                held = svc.server.open_connections()
                times = _enrol_times(svc, ca, tokens, root, "C", a.devices)
                print(_line(f"{a.idle} idle + {a.slow} slow connections ({held} held by the server)", times))
            finally:
                crowd.close()
        finally:
            svc.stop()
            tokens.close()
            ca.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
