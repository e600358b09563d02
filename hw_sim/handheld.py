"""A simulated handheld scanner: a real device agent fed by a seeded scan generator.

``spd-sim handheld`` runs one as a process (so tests can SIGKILL it); the
:class:`SimHandheld` class runs one in-process (for fleets and benchmarks).
Scan ``n`` of a device is a pure function of ``(seed, device, n)``, so a
handheld restarted after a crash continues the same scenario where its log
ends, and every item serial is unique to its device and scan number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from device.eventlog import EventLog
from device.handheld import Handheld, ScanOutcome
from device.sync import DeviceSync
from hw_sim.catalog import SimCatalogItem, sim_catalog
from hw_sim.udi_gen import make_udi
from spd_common.logsetup import setup_logging
from spd_common.mqtt import MQTT_VERSIONS, parse_address

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScanPair:
    wristband: str
    udi: str
    valid: bool


def scan_for(seed: int, device: str, n: int, catalog: list[SimCatalogItem], *, garbage_rate: float = 0.0) -> ScanPair:
    """The n-th scan pair of a device (deterministic)."""
    rng = random.Random(f"{seed}/{device}/{n}")
    admission = f"ZY{rng.randrange(10**9, 10**10)}"
    if garbage_rate and rng.random() < garbage_rate:
        return ScanPair(admission, rng.choice(["]d2019999", "not a barcode", "]C1(01)123", "]d2\x1d\x1d"]), False)
    item = rng.choice(catalog)
    today = dt.date.today()
    expiry = today + dt.timedelta(days=rng.randrange(200, 1000))
    lot = f"L{rng.randrange(1000, 9999)}"
    serial = f"{device}S{n:08d}"
    return ScanPair(admission, make_udi(gtin=item.gtin, lot=lot, serial=serial, expiry=expiry, symbology="]d2"), True)


class SimHandheld:
    """One handheld: event log + sync + scanner, driven by :func:`scan_for`."""

    def __init__(
        self,
        *,
        device: str,
        site: str,
        data_dir: Path,
        broker_host: str,
        broker_port: int,
        seed: int = 1,
        operator: str = "N0001",
        dept: str = "OR-3",
        garbage_rate: float = 0.0,
        resend_after_s: float = 5.0,
        batch_size: int = 200,
        nurse_journal: Path | None = None,
        clock_jumps: bool = False,
        return_rate: float = 0.0,
        broker_fallbacks: tuple[tuple[str, int], ...] = (),
        mqtt_version: str = "5",
    ) -> None:
        self.device = device
        self.seed = seed
        self.garbage_rate = garbage_rate
        self.catalog = sim_catalog()
        self.clock = JumpingClock(random.Random(f"clock/{seed}/{device}")) if clock_jumps else None
        self.log = EventLog(
            Path(data_dir) / f"{device}.db", device=device, clock=self.clock.now if self.clock else time.time
        )
        # what the nurse was told, kept outside the device's data directory (a power cut there must not erase it)
        self._journal = open(nurse_journal, "a", encoding="ascii") if nurse_journal else None  # noqa: SIM115
        self.sync = DeviceSync(
            self.log, site=site, host=broker_host, port=broker_port, resend_after_s=resend_after_s,
            batch_size=batch_size, fallbacks=broker_fallbacks, mqtt_version=mqtt_version,
        )
        self.scanner = Handheld(self.log, operator=operator, dept=dept, on_committed=lambda ev: self.sync.notify())
        self.commit_latencies_s: list[float] = []
        self.return_rate = return_rate
        self.returns = 0
        self._return_rng = random.Random(f"returns/{seed}/{device}")

    def start(self) -> SimHandheld:
        self.sync.start()
        return self

    def scan(self, n: int) -> ScanOutcome:
        pair = scan_for(self.seed, self.device, n, self.catalog, garbage_rate=self.garbage_rate)
        t0 = time.perf_counter()
        outcome = self.scanner.scan_pair(pair.wristband, pair.udi)
        self.commit_latencies_s.append(time.perf_counter() - t0)
        if self.return_rate and outcome.accepted and self._return_rng.random() < self.return_rate:
            # the nurse brings the item back unused: the gateway must credit the charge
            self.scanner.return_unused(pair.udi, restocked=False, reason="not used in the procedure")
            self.returns += 1
        if self._journal is not None and outcome.accepted and outcome.event is not None:
            self._journal.write(f"{self.device} {outcome.event.seq}\n")
            self._journal.flush()
        if self.clock is not None:
            self.clock.maybe_jump()
        return outcome

    def run(self, scans: int, rate_per_s: float) -> int:
        """Scan until the log holds ``scans`` events (resuming after a restart)."""
        done = self.log.last_seq
        period = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        next_t = time.monotonic()
        while done < scans:
            self.scan(done + 1)
            done += 1
            if period:
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return done

    def wait_drained(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log.backlog() == 0:
                return True
            time.sleep(0.05)
        return self.log.backlog() == 0

    def stop(self) -> None:
        self.sync.stop()
        self.log.close()
        if self._journal is not None:
            self._journal.close()


class JumpingClock:
    """A wall clock that now and then jumps backwards or forwards (NTP step, RTC battery, operator error)."""

    def __init__(self, rng: random.Random, *, jump_probability: float = 0.02) -> None:
        self.rng = rng
        self.offset_s = 0.0
        self.jump_probability = jump_probability
        self.jumps = 0

    def now(self) -> float:
        return time.time() + self.offset_s

    def maybe_jump(self) -> None:
        if self.rng.random() < self.jump_probability:
            self.offset_s = self.rng.choice([-1, 1]) * self.rng.uniform(60, 6 * 3600)
            self.jumps += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spd-sim handheld", description="Run one simulated handheld scanner.")
    p.add_argument("--device", required=True)
    p.add_argument("--site", default="H1")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, required=True)
    p.add_argument("--scans", type=int, default=100)
    p.add_argument("--rate", type=float, default=5.0, help="scans per second")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--garbage-rate", type=float, default=0.0)
    p.add_argument("--resend-after", type=float, default=3.0)
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--linger", type=float, default=0.0, help="stay connected this long after draining")
    p.add_argument("--nurse-journal", type=Path, default=None, help="append 'device seq' per accepted scan")
    p.add_argument("--clock-jumps", action="store_true", help="let the device clock jump now and then")
    p.add_argument("--return-rate", type=float, default=0.0, help="share of items brought back unused")
    p.add_argument("--broker-fallback", type=parse_address, action="append", default=[], metavar="HOST:PORT",
                   help="another node of a broker cluster, tried in turn after a drop (repeatable)")
    p.add_argument("--mqtt-version", choices=sorted(MQTT_VERSIONS), default="5",
                   help="MQTT version to speak (3.1.1 for a NATS cluster)")
    a = p.parse_args(argv)
    setup_logging()
    hh = SimHandheld(
        device=a.device, site=a.site, data_dir=a.data_dir, broker_host=a.broker_host, broker_port=a.broker_port,
        seed=a.seed, garbage_rate=a.garbage_rate, resend_after_s=a.resend_after, nurse_journal=a.nurse_journal,
        clock_jumps=a.clock_jumps, return_rate=a.return_rate, broker_fallbacks=tuple(a.broker_fallback),
        mqtt_version=a.mqtt_version,
    ).start()
    total = hh.run(a.scans, a.rate)
    drained = hh.wait_drained(a.drain_timeout)
    if a.linger:
        time.sleep(a.linger)
    print(json.dumps({"device": a.device, "events": total, "drained": drained, "backlog": hh.log.backlog()}))
    hh.stop()
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
