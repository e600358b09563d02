"""The chaos run: real load, faults on a seeded schedule, then a zero-tolerance check of the history.

Handhelds and cabinets (separate processes) work through a fault-injecting
TCP proxy into a private Mosquitto; each cabinet is the real cabinet agent
with scripted staff and a pty RFID reader that corrupts frames and mixes in
garbage bytes (:mod:`hw_sim.chaos_cabinet`); two gateway instances share the events on an MQTT 5
shared subscription and one store; the simulated HIS answers over MLLP and,
through its JSON door over the same books, over HTTP: the fault phase is cut
into equal epochs that alternate MLLP and HTTP, at each switch the gateways
are restarted on the other protocol (and every gateway restart within an
epoch uses the epoch's), so charges and credits, and resends of messages in
doubt, go both ways. Handhelds give some items back unused (credits), and
cabinet staff bring back some items already charged. Faults come from one
seeded schedule: agent SIGKILLs, simulated power cuts (devices whose data
directory is on :mod:`hw_sim.powerfs`), broker kills,
gateway kills, network cuts, HIS outages, slow answers, AE answers, ACKs with
a wrong control id, ACKs dropped after the charge was stored, device clock
jumps, malformed MQTT payloads and corrupted serial frames.

When the schedule ends every part is brought back, the devices drain, the
parked charges are re-sent as an operator would, and the checker compares:
every scan the nurse was told about is stored once at the gateway and
charged once at the HIS (set equality), every event any device committed
(cabinet access, counts, alarms too) is stored, nothing exists at the gateway
or the HIS that no device produced, every return is settled and every
credit the gateway queued is booked once at the HIS against its charge (no
credit invented, none twice, no patient left charged for an item whose
return was not credited), each cabinet's inventory equals what is
physically on its shelves and it recorded each take and put-in exactly once,
hash chains verify, and
``PRAGMA integrity_check`` passed on every device database after every
crash and on the gateway's after every gateway kill.

``--store postgresql`` runs the gateways on a PostgreSQL database instead of
one SQLite file (a scratch database made on the server of ``SPD_TEST_PG``, by
default 127.0.0.1:5432, and dropped after the run; or ``--store-url``): the
same faults and the same checks, the instances sharing the HIS sending
through claims (:mod:`gateway.data.claims`). The integrity of that database is
PostgreSQL's business (its own recovery after a gateway is killed): the
gateway's integrity checks are of the SQLite variant.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from device.eventlog import EventLog
from hw_sim import reaper
from hw_sim.chaos_cabinet import read_report, report_mismatches
from hw_sim.harness import ManagedProcess, SpineHarness, Tally
from hw_sim.netproxy import FaultProxy
from hw_sim.pgdb import scratch_database
from spd_common.logsetup import setup_logging
from spd_common.mqtt import make_client

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    seed: int = 1
    devices: int = 8
    scans_per_device: int = 1350
    rate: float = 10.0
    power_devices: int = 2  # devices whose data directory is on a power-loss filesystem
    agent_kills: int = 200
    power_cuts: int = 50
    broker_kills: int = 20
    gateway_kills: int = 20
    his_dropped_acks: int = 12
    his_outages: int = 5
    his_long_outage_s: float = 20.0  # one outage this long (0: none); the outbox fills and drains after
    his_slow_periods: int = 3
    his_ae_answers: int = 5
    his_wrong_ids: int = 5
    network_cuts: int = 10
    disk_faults: int = 20  # disk full or I/O errors on a power-loss device's disk for 0.5-2 s
    malformed_per_s: float = 2.0
    gateways: int = 2
    cabinets: int = 2
    cabinet_power: int = 1  # cabinets whose data directory is on a power-loss filesystem
    cabinet_corrupt_rate: float = 0.02  # reader frames with a flipped byte
    cabinet_garbage_rate: float = 0.01  # reader frames after random bytes
    settle_timeout_s: float = 240.0
    his_http_epochs: int = 4  # fault phase in this many epochs, alternately MLLP and HTTP (0: MLLP only)
    return_rate: float = 0.02  # share of a handheld's scanned items given back unused (credits)
    store: str = "sqlite"  # the gateways' store: "sqlite" (one file) or "postgresql"
    store_url: str | None = None  # postgresql: an existing empty database; None: a scratch one for the run


@dataclass(slots=True)
class ChaosReport:
    seed: int
    store: str = "sqlite"
    scans: int = 0
    told_to_nurse: int = 0
    events: int = 0
    events_not_stored: int = 0
    cabinet_scans: int = 0
    cabinet_sessions: int = 0
    corrupted_frames: int = 0
    garbage_bursts: int = 0
    cabinet_inventory_mismatches: list[str] = field(default_factory=list)
    lost: int = 0
    lost_on_device: int = 0
    duplicated: int = 0
    invented: int = 0
    agent_kills: int = 0
    power_cuts: int = 0
    broker_kills: int = 0
    gateway_kills: int = 0
    network_cuts: int = 0
    disk_full: int = 0
    io_errors: int = 0
    his_dropped_acks: int = 0
    his_outages: int = 0
    his_slow_periods: int = 0
    his_ae_answers: int = 0
    his_ar_answers: int = 0
    his_long_outage_s: float = 0.0
    his_wrong_ids: int = 0
    clock_jumps_enabled: bool = True
    malformed_payloads: int = 0
    parked_resent: int = 0
    parked_left: int = 0
    protocol_switches: int = 0
    gateway_starts_mllp: int = 0
    gateway_starts_http: int = 0
    his_messages_mllp: int = 0
    his_messages_http: int = 0
    returns: int = 0  # return_unused events on the handhelds
    returns_credited: int = 0  # returns of every kind (handheld, charged item back in a cabinet) credited
    credits_booked: int = 0
    credits_over_http: int = 0
    credits_lost: int = 0
    credits_duplicated: int = 0
    credits_invented: int = 0
    returned_still_charged: int = 0
    returns_unsettled: int = 0
    integrity_checks: int = 0
    integrity_failures: list[str] = field(default_factory=list)
    chain_breaks: int = 0
    device_chain_breaks: int = 0
    fault_phase_s: float = 0.0
    drain_s: float = 0.0
    tally: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0 and self.lost_on_device == 0 and self.duplicated == 0 and self.invented == 0
            and not self.integrity_failures and self.chain_breaks == 0 and self.device_chain_breaks == 0
            and self.parked_left == 0 and self.events_not_stored == 0 and not self.cabinet_inventory_mismatches
            and self.credits_lost == 0 and self.credits_duplicated == 0 and self.credits_invented == 0
            and self.returned_still_charged == 0 and self.returns_unsettled == 0
            and self.scans > 0
        )

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _integrity(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


class PowerDomain:
    """One device whose data directory lives on a power-loss filesystem."""

    def __init__(self, root: Path, name: str) -> None:
        from hw_sim.powerfs import PowerLossFs

        self.backing = root / f"{name}-backing"
        self.mount_dir = root / f"{name}-mnt"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        self.fs = PowerLossFs(self.backing, self.mount_dir)
        self.fs.mount()

    def power_cut(self) -> None:
        self.fs.power_cut()

    def close(self) -> None:
        self.fs.unmount()


class ChaosRun:
    """Drives one seeded chaos run; :meth:`run` returns the checked report."""

    def __init__(self, workdir: Path, config: ChaosConfig, *, say: Callable[[str], None] = lambda s: None) -> None:
        self.cfg = config
        self.workdir = workdir
        self.say = say
        self.rng = random.Random(config.seed)
        self.report = ChaosReport(seed=config.seed, store=config.store)
        self._resources = ExitStack()  # a scratch PostgreSQL database, dropped at the end of the run
        store_url: str | None = None
        if config.store == "postgresql":
            store_url = config.store_url or self._resources.enter_context(scratch_database(prefix="spd_chaos"))
        elif config.store != "sqlite":
            raise ValueError(f"store must be sqlite or postgresql, not {config.store!r}")
        self.h = SpineHarness(workdir, seed=config.seed, gateways=config.gateways, lease_ttl_s=2.0,
                              his_backoff_max_s=1.0, his_http=config.his_http_epochs > 0, store_url=store_url)
        self._protocol = "mllp"  # of the current epoch
        self.proxy: FaultProxy | None = None
        self.domains: dict[str, PowerDomain] = {}
        self.devices = [f"CH{i:02d}" for i in range(config.devices)]  # handhelds
        self.cabinets = [f"CB{i:02d}" for i in range(config.cabinets)]
        self.all_devices = [*self.devices, *self.cabinets]
        self.cabinet_dir = workdir / "cabinets"
        self._until = 0.0  # wall-clock time the cabinets' staff stop
        self.journals = workdir / "nurse"
        self.journals.mkdir(parents=True, exist_ok=True)
        self._stop_rogue = threading.Event()
        self._faults: list[tuple[float, int, str]] = []
        self._disk_faulted: set[str] = set()
        self._deferred_checks: set[str] = set()

    # ------------------------------------------------------------ parts

    def _proc(self, device: str) -> ManagedProcess:
        return self.h.handhelds.get(device) or self.h.cabinets[device]

    def _start_device(self, device: str) -> None:
        dom = self.domains.get(device)
        assert self.proxy is not None
        if device in self.cabinets:
            c = self.cfg
            self.h.start_cabinet(
                device, until_wall=self._until, broker_port=self.proxy.port, world_dir=self.cabinet_dir,
                data_dir=dom.mount_dir if dom else self.cabinet_dir / f"{device}-data",
                extra_args=("--nurse-journal", str(self.journals / f"{device}.txt"), "--clock-jumps",
                            "--drain-timeout", "900", "--report", str(self.cabinet_dir / f"{device}-report.json"),
                            "--corrupt-rate", str(c.cabinet_corrupt_rate),
                            "--garbage-rate", str(c.cabinet_garbage_rate)),
            )
            return
        self.h.start_handheld(
            device, scans=self.cfg.scans_per_device, rate=self.cfg.rate, garbage_rate=0.005,
            return_rate=self.cfg.return_rate,
            data_dir=dom.mount_dir if dom else None, broker_port=self.proxy.port,
            extra_args=("--nurse-journal", str(self.journals / f"{device}.txt"), "--clock-jumps",
                        "--drain-timeout", "900"),
        )

    def _check_db(self, what: str, path: Path | str) -> None:
        if isinstance(path, str):  # a PostgreSQL database: it recovers on its own (see the module's docstring)
            return
        if not path.exists():
            return
        self.report.integrity_checks += 1
        result = _integrity(path)
        if result != "ok":
            self.report.integrity_failures.append(f"{what}: {result}")

    def _rogue(self) -> None:
        """Malformed payloads mixed into the traffic, on real and unknown devices' topics."""
        client = make_client("rogue", reconnect_min_s=0.2, reconnect_max_s=1.0)
        client.connect_async("127.0.0.1", self.h.broker.port)
        client.loop_start()
        rng = random.Random(self.cfg.seed + 7)
        payloads = [b"{", b"\x00\xff\xfe", b'{"v":9}', b'{"v":1,"site":"H1","device":"X","events":[]}',
                    b'{"v":1,"site":"H1","device":"%s","events":[{"seq":0}]}', b"[]", b"null"]
        while not self._stop_rogue.wait(1.0 / self.cfg.malformed_per_s):
            dev = rng.choice([*self.all_devices, "ROGUE1"])
            p = rng.choice(payloads).replace(b"%s", dev.encode())
            if client.is_connected():
                client.publish(f"spd/v1/{self.h.site}/{dev}/events", p, qos=1)
                self.report.malformed_payloads += 1
        client.loop_stop()
        client.disconnect()

    # ------------------------------------------------------------ the schedule

    def _schedule(self, span_s: float) -> list[tuple[float, int, str]]:
        c, rng = self.cfg, self.rng
        counts = {
            "agent_kill": c.agent_kills,
            "power_cut": c.power_cuts if self.domains else 0,
            "broker_kill": c.broker_kills,
            "gateway_kill": c.gateway_kills,
            "his_drop_ack": c.his_dropped_acks,
            "his_outage": c.his_outages,
            "his_long_outage": 1 if c.his_long_outage_s > 0 else 0,
            "his_slow": c.his_slow_periods,
            "his_ae": c.his_ae_answers,
            "his_wrong_id": c.his_wrong_ids,
            "network_cut": c.network_cuts,
            "disk_fault": c.disk_faults if self.domains else 0,
        }
        events: list[tuple[float, int, str]] = []
        n = 0
        for kind, count in counts.items():
            for _ in range(count):
                events.append((rng.uniform(0.5, span_s), n, kind))
                n += 1
        for k in range(1, c.his_http_epochs):  # at fixed times: equal shares of the run on each protocol
            events.append((span_s * k / c.his_http_epochs, n, "his_switch"))
            n += 1
        heapq.heapify(events)
        return events

    def _fault(self, kind: str, restore: list[tuple[float, int, str]], now: float, seq: int) -> None:
        r, rng, h = self.report, self.rng, self.h
        if kind == "agent_kill":
            running = [d for d in self.all_devices if self._proc(d).running]
            if not running:
                return
            dev = rng.choice(running)
            self._proc(dev).kill(signal.SIGKILL)
            if dev in self._disk_faulted:  # the disk fails every write: check when it is healthy again
                self._deferred_checks.add(dev)
            else:
                self._check_db(f"{dev} after SIGKILL", h.device_db_paths[dev])
            self._start_device(dev)
            r.agent_kills += 1
        elif kind == "power_cut":
            dev = rng.choice(list(self.domains))
            self._proc(dev).kill(signal.SIGKILL)
            self.domains[dev].power_cut()  # a cut also ends a disk fault: the disk comes back fresh
            self._disk_faulted.discard(dev)
            self._deferred_checks.discard(dev)
            self._check_db(f"{dev} after power cut", h.device_db_paths[dev])
            self._start_device(dev)
            r.power_cuts += 1
        elif kind == "broker_kill":
            if not h.broker.running:
                self._later(kind, now, seq)
                return
            h.broker.kill()
            r.broker_kills += 1
            heapq.heappush(restore, (now + rng.uniform(0.2, 1.5), seq, "broker_up"))
        elif kind == "gateway_kill":
            live = [i for i, g in h.gateways.items() if g.running]
            if not live:
                self._later(kind, now, seq)
                return
            i = rng.choice(live)
            h.kill_gateway(i)
            self._check_db(f"gateway after kill of instance {i}", h.gateway_db)
            r.gateway_kills += 1
            heapq.heappush(restore, (now + rng.uniform(0.2, 2.0), seq, f"gateway_up:{i}"))
        elif kind == "his_switch":  # the HIS interface changes: every gateway restarts on the other one
            self._protocol = "http" if self._protocol == "mllp" else "mllp"
            r.protocol_switches += 1
            for i, gw in h.gateways.items():
                if gw.running:
                    gw.kill(signal.SIGTERM)
                    self._start_gateway(i)
        elif kind == "his_drop_ack":  # one-shot HIS faults are armed at both doors: whichever is in use gets it
            h.his.drop_acks_after_store(1)
            if h.his_http is not None:
                h.his_http.drop_responses_after_store(1)
            r.his_dropped_acks += 1
        elif kind == "his_outage":
            if not h.his.is_up:
                self._later(kind, now, seq)
                return
            self._his_down()
            r.his_outages += 1
            heapq.heappush(restore, (now + rng.uniform(1.0, 4.0), seq, "his_up"))
        elif kind == "his_long_outage":
            if not h.his.is_up:
                self._later(kind, now, seq)
                return
            self._his_down()
            r.his_long_outage_s = self.cfg.his_long_outage_s
            heapq.heappush(restore, (now + self.cfg.his_long_outage_s, seq, "his_up"))
        elif kind == "his_slow":
            self._his_delay(2.5)  # beyond the gateway's 2 s timeout
            r.his_slow_periods += 1
            heapq.heappush(restore, (now + rng.uniform(1.0, 3.0), seq, "his_fast"))
        elif kind == "his_ae":
            if rng.random() < 0.5:
                h.his.answer_next("AE", 1, "charge code under review")
                if h.his_http is not None:
                    h.his_http.answer_next(422, error="under_review", message="charge code under review")
                r.his_ae_answers += 1
            else:
                h.his.answer_next("AR", 1, "message rejected")
                if h.his_http is not None:
                    h.his_http.answer_next(400, error="rejected", message="message rejected")
                r.his_ar_answers += 1
        elif kind == "his_wrong_id":
            h.his.wrong_control_id_next(1)
            if h.his_http is not None:
                h.his_http.wrong_charge_id_next(1)
            r.his_wrong_ids += 1
        elif kind == "disk_fault":
            dev = rng.choice(list(self.domains))
            self._disk_faulted.add(dev)
            if rng.random() < 0.5:
                self.domains[dev].fs.disk_full()
                r.disk_full += 1
            else:
                self.domains[dev].fs.io_errors()
                r.io_errors += 1
            heapq.heappush(restore, (now + rng.uniform(0.5, 2.0), seq, f"disk_ok:{dev}"))
        elif kind == "network_cut":
            assert self.proxy is not None
            self.proxy.cut(blackhole=rng.random() < 0.5)
            r.network_cuts += 1
            heapq.heappush(restore, (now + rng.uniform(0.5, 3.0), seq, "network_up"))

    def _his_down(self) -> None:
        self.h.his.go_down()
        if self.h.his_http is not None:
            self.h.his_http.go_down()

    def _his_up(self) -> None:
        for door in (self.h.his, self.h.his_http):
            if door is not None and not door.is_up:
                door.come_up()

    def _his_delay(self, seconds: float) -> None:
        self.h.his.set_delay(seconds)
        if self.h.his_http is not None:
            self.h.his_http.set_delay(seconds)

    def _start_gateway(self, i: int) -> None:
        """(Re)start gateway instance ``i`` on the current epoch's HIS protocol."""
        protocol = self._protocol
        self.h.start_gateway(i, protocol=protocol)
        if protocol == "http":
            self.report.gateway_starts_http += 1
        else:
            self.report.gateway_starts_mllp += 1

    def _later(self, kind: str, now: float, seq: int) -> None:
        """A fault that cannot happen now (its target is already down) happens a little later."""
        heapq.heappush(self._faults, (now + self.rng.uniform(1.0, 3.0), seq, kind))

    def _restore(self, kind: str) -> None:
        h = self.h
        if kind == "broker_up":
            if not h.broker.running:
                h.broker.start()
        elif kind.startswith("gateway_up:"):
            i = int(kind.split(":")[1])
            if not h.gateways[i].running:
                self._start_gateway(i)
        elif kind == "his_up":
            self._his_up()
        elif kind == "his_fast":
            self._his_delay(0.0)
        elif kind.startswith("disk_ok:"):
            dev = kind.split(":", 1)[1]
            self.domains[dev].fs.heal()
            self._disk_faulted.discard(dev)
            if dev in self._deferred_checks:
                self._deferred_checks.discard(dev)
                self._check_db(f"{dev} after SIGKILL during a disk fault", self.h.device_db_paths[dev])
        elif kind == "network_up":
            assert self.proxy is not None
            self.proxy.restore()

    # ------------------------------------------------------------ run and check

    def run(self) -> ChaosReport:
        cfg, h = self.cfg, self.h
        try:
            h.start()
            for protocol in h.gateway_protocols.values():
                if protocol == "http":
                    self.report.gateway_starts_http += 1
                else:
                    self.report.gateway_starts_mllp += 1
            self.proxy = FaultProxy("127.0.0.1", h.broker.port).start()
            for dev in [*self.devices[: cfg.power_devices], *self.cabinets[: cfg.cabinet_power]]:
                self.domains[dev] = PowerDomain(self.workdir / "power", dev)
            self._until = time.time() + cfg.scans_per_device / cfg.rate
            for dev in self.all_devices:
                self._start_device(dev)
            rogue = threading.Thread(target=self._rogue, daemon=True)
            rogue.start()
            span = cfg.scans_per_device / cfg.rate
            self.say(f"chaos seed {cfg.seed}: {cfg.devices} handhelds x {cfg.scans_per_device} scans at "
                     f"{cfg.rate}/s and {cfg.cabinets} cabinets, faults over {span:.0f}s")
            faults = self._faults = self._schedule(span)
            restore: list[tuple[float, int, str]] = []
            t0 = time.monotonic()
            while faults or restore:
                now = time.monotonic() - t0
                nxt_f = faults[0][0] if faults else float("inf")
                nxt_r = restore[0][0] if restore else float("inf")
                nxt = min(nxt_f, nxt_r)
                if nxt > now:
                    time.sleep(min(nxt - now, 0.5))
                    continue
                if nxt_r <= nxt_f:
                    _, _, kind = heapq.heappop(restore)
                    self._restore(kind)
                else:
                    _, seq, kind = heapq.heappop(faults)
                    try:
                        self._fault(kind, restore, now, seq)
                    except Exception:
                        log.exception("fault %s failed", kind)
                        raise
            self.report.fault_phase_s = round(time.monotonic() - t0, 1)
            self._stop_rogue.set()
            rogue.join(timeout=5)
            # everything back up; devices finish their scans and drain
            self._bring_back()
            t1 = time.monotonic()
            self.say(f"faults over after {self.report.fault_phase_s}s; waiting for the devices to drain")
            self._wait_devices(cfg.settle_timeout_s)
            self._resend_parked()
            t = h.wait_settled(timeout_s=cfg.settle_timeout_s, quiet_s=2.0)
            self.report.drain_s = round(time.monotonic() - t1, 1)
            self._check(t)
        finally:
            self._stop_rogue.set()
            try:
                h.close()  # every process it started, even if one of them fails to stop
            finally:
                if self.proxy is not None:
                    self.proxy.close()
                for dom in self.domains.values():
                    try:
                        dom.close()
                    except Exception:
                        log.exception("unmount failed")
                self._resources.close()
        return self.report

    def _bring_back(self) -> None:
        h = self.h
        assert self.proxy is not None
        self.proxy.restore()
        for dev, dom in self.domains.items():
            dom.fs.heal()
            self._disk_faulted.discard(dev)
            if dev in self._deferred_checks:
                self._check_db(f"{dev} after SIGKILL during a disk fault", h.device_db_paths[dev])
        self._deferred_checks.clear()
        if not h.broker.running:
            h.broker.start()
        for i, gw in h.gateways.items():
            if not gw.running:
                self._start_gateway(i)
        self._his_up()
        h.his.clear_faults()
        if h.his_http is not None:
            h.his_http.clear_faults()

    def _wait_devices(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.all_devices)
        while pending and time.monotonic() < deadline:
            for dev in list(pending):
                proc = self._proc(dev)
                rc = proc.proc.poll() if proc.proc else None
                if rc == 0:
                    pending.discard(dev)
                elif rc is not None:  # exited with an error (e.g. killed, or drain timed out): start it again
                    self._start_device(dev)
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"devices did not drain: {sorted(pending)}")

    def _resend_parked(self) -> None:
        """What the billing office does with charges the HIS refused for a while: re-send them."""
        from gateway.store import GatewayStore

        store = GatewayStore(self.h.gateway_db)
        try:
            for parked in store.charges.listing(status="parked", limit=1_000_000):
                if store.requeue_parked(parked.charge_id):
                    self.report.parked_resent += 1
        finally:
            store.close()

    def _check(self, t: Tally) -> None:
        r, h = self.report, self.h
        told: set[tuple[str, int]] = set()
        for dev in self.all_devices:
            jf = self.journals / f"{dev}.txt"
            if jf.exists():
                for line in jf.read_text().split("\n"):
                    parts = line.split()
                    if len(parts) == 2:
                        told.add((parts[0], int(parts[1])))
        r.told_to_nurse = len(told)
        on_device: set[tuple[str, int]] = set()
        for dev in self.all_devices:
            path = h.device_db_paths[dev]
            self._check_db(f"{dev} at the end", path)
            elog = EventLog(path, device=dev)
            r.device_chain_breaks += len(elog.verify_chain())
            on_device |= {(dev, e.seq) for e in elog.events(limit=10**9) if e.kind == "consume"}
            elog.close()
        self._check_db("gateway at the end", h.gateway_db)
        for dev in self.cabinets:
            cab = read_report(self.cabinet_dir / f"{dev}-report.json")
            if cab is None:
                r.cabinet_inventory_mismatches.append(f"{dev}: no final report")
                continue
            r.cabinet_sessions += int(cab["sessions"])
            r.corrupted_frames += int(cab["corrupted_frames"])
            r.garbage_bursts += int(cab["garbage_bursts"])
            r.cabinet_inventory_mismatches += report_mismatches(dev, cab)
        r.cabinet_scans = sum(1 for d, _ in on_device if d in self.cabinets)
        r.events = t.events
        r.events_not_stored = t.events_not_stored
        r.lost_on_device = len(told - on_device)
        r.scans = t.scans
        r.lost = t.lost + len(told - on_device)
        r.duplicated = t.duplicates
        r.invented = t.invented
        r.chain_breaks = t.chain_breaks
        r.parked_left = t.parked
        stats = h.his.stats()
        r.his_dropped_acks = stats.acks_dropped
        r.his_wrong_ids = stats.wrong_control_ids_sent
        if h.his_http is not None:
            http_stats = h.his_http.stats()
            r.his_dropped_acks += http_stats.responses_dropped
            r.his_wrong_ids += http_stats.wrong_charge_ids_sent
            r.his_messages_http = http_stats.received
        his = sqlite3.connect(f"file:{h.his_db}?mode=ro", uri=True, timeout=30)
        try:
            r.his_messages_mllp = int(his.execute("SELECT COUNT(*) FROM received WHERE raw LIKE 'MSH%'").fetchone()[0])
            r.credits_over_http = int(his.execute(
                "SELECT COUNT(DISTINCT txn_id) FROM received WHERE raw LIKE '{%' AND answer = 'AA' "
                "AND txn_id IN (SELECT txn_id FROM credits)").fetchone()[0])
        finally:
            his.close()
        r.returns = t.returns
        r.returns_credited = t.returns_credited
        r.credits_booked = t.credited
        r.credits_lost = t.credits_lost
        r.credits_duplicated = t.credits_duplicated
        r.credits_invented = t.credits_invented
        r.returned_still_charged = t.returned_still_charged
        r.returns_unsettled = t.returns_unsettled
        r.tally = t.as_dict()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spd-sim chaos", description="seeded fault-injection run with a strict checker")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--scans-per-device", type=int, default=1350)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--power-devices", type=int, default=2)
    p.add_argument("--agent-kills", type=int, default=200)
    p.add_argument("--power-cuts", type=int, default=50)
    p.add_argument("--broker-kills", type=int, default=20)
    p.add_argument("--gateway-kills", type=int, default=20)
    p.add_argument("--his-dropped-acks", type=int, default=12)
    p.add_argument("--network-cuts", type=int, default=10)
    p.add_argument("--his-long-outage", type=float, default=20.0, help="seconds of one long HIS outage (0: none)")
    p.add_argument("--cabinets", type=int, default=2)
    p.add_argument("--cabinet-power", type=int, default=1, help="cabinets whose data directory can lose power")
    p.add_argument("--his-fault-scale", type=int, default=1,
                   help="multiply HIS outages, slow periods, AE answers and wrong-id ACKs (for soak runs)")
    p.add_argument("--his-http-epochs", type=int, default=4,
                   help="fault phase in this many equal epochs, alternately HIS over MLLP and over HTTP (0: MLLP only)")
    p.add_argument("--return-rate", type=float, default=0.02, help="share of handheld items given back unused")
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the gateways' store: one SQLite file, or a PostgreSQL database (a scratch one on the server "
                        "of SPD_TEST_PG, default 127.0.0.1:5432, dropped after the run)")
    p.add_argument("--store-url", default=None,
                   help="with --store postgresql: an existing empty database (postgresql://user@host/db) to use")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    setup_logging()
    reaper.exit_on_signals()  # SIGTERM/SIGHUP: unwind, so broker, gateways, devices and mounts are ended
    cfg = ChaosConfig(
        seed=a.seed, devices=a.devices, scans_per_device=a.scans_per_device, rate=a.rate,
        power_devices=a.power_devices, agent_kills=a.agent_kills, power_cuts=a.power_cuts,
        broker_kills=a.broker_kills, gateway_kills=a.gateway_kills, his_dropped_acks=a.his_dropped_acks,
        network_cuts=a.network_cuts, his_long_outage_s=a.his_long_outage, cabinets=a.cabinets,
        cabinet_power=a.cabinet_power, his_http_epochs=a.his_http_epochs, return_rate=a.return_rate,
        his_outages=5 * a.his_fault_scale, his_slow_periods=3 * a.his_fault_scale,
        his_ae_answers=5 * a.his_fault_scale, his_wrong_ids=5 * a.his_fault_scale,
        settle_timeout_s=600.0 if a.scans_per_device > 5000 else 240.0, store=a.store, store_url=a.store_url,
    )
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="spd-chaos-"))
    t0 = time.monotonic()
    report = ChaosRun(workdir, cfg, say=lambda s: print(s, flush=True)).run()
    d = report.as_dict()
    d["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(d))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
