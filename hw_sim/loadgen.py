"""The load generator: a thousand devices at the wire, in one process, without a thousand devices' cost.

``spd-sim load --devices 1000 --rate 1 --duration 60`` stands in for a fleet of
handhelds as the gateway sees them: one MQTT connection per device (MQTT 5,
client id, retained online state and offline last will as :mod:`device.sync`
sets them), publishing hash-chained ``consume`` events encoded with
:mod:`device.wire`, one item per scan from :func:`hw_sim.handheld.scan_for`
over :func:`hw_sim.catalog.sim_catalog`, so the gateway stores them and the
bridge charges them. Delivery follows the device rules (docs/wire.md): at most
``window`` batches ahead of the last gateway ack, rewind to the last ack after
every (re)connect and whenever no ack progress comes for ``resend_after_s``.

What it does not do is what makes the fleet benchmark expensive: no SQLite
log per device (events live in memory: the outbox is not what is measured),
no thread per device. All devices share one asyncio loop; each connection is a
``gmqtt`` client (pure asyncio, about 20 KiB and 40 µs of CPU per QoS 1
message, measured in docs/scale.md).

By default it starts its own private Mosquitto, simulated HIS and a real
``spd-gateway run`` subprocess (:class:`hw_sim.harness.SpineHarness`, with
:mod:`hw_sim.reaper` ending them on every way out); ``--broker host:port``
attaches to a broker with a gateway run separately instead, and
``--gateway-db``/``--his-db`` let it count from their records.

It reports, from each party's own records:

* scan → stored: from the scan's wall time to the device receiving the
  gateway's ack covering it (the gateway acks only after its commit);
* scan → committed: from the scan to the gateway's ``stored_at`` for the event;
* scan → HIS ACK: from the scan to the simulated HIS's ``first_received_at``
  of its charge (matched by charge id, docs/wire.md), the HIS answers at once;
* the tally: lost, duplicated, invented, quarantined, as :func:`hw_sim.harness.tally`
  counts them, over the events this run produced;
* the CPU share of the generator's loop thread (to show it is not the
  bottleneck), of its whole process (with the in-process HIS), of the gateway
  and of the broker.

``--backlog N`` is the burst mode: every device holds N events when it
connects (as after an outage) and sends them as fast as acks allow; it
reports events/s acknowledged, committed and charged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import heapq
import json
import logging
import os
import random
import resource
import socket
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gmqtt import Client as MqttClient
from gmqtt import Message

from device import __version__
from gateway.catalog import write_catalog_csv
from gateway.parts import SPLIT_PARTS
from hw_sim import reaper
from hw_sim.broker import free_port
from hw_sim.catalog import SimCatalogItem, sim_catalog
from hw_sim.handheld import scan_for
from hw_sim.harness import SpineHarness, gateway_reader
from hw_sim.pgdb import scratch_database
from spd_common.wire import (
    GENESIS_HASH,
    Channel,
    DeviceState,
    DeviceStatus,
    Event,
    EventKind,
    WireError,
    decode_ack,
    encode_batch,
    encode_state,
    event_hash,
    topic,
)

log = logging.getLogger(__name__)

MAX_DEVICE_ID = 11
"""Device ids stay this short: the simulated item serial is ``{device}S{n:08d}`` and GS1 AI 21 allows 20."""


@dataclass(slots=True)
class LoadConfig:
    devices: int = 100
    rate: float = 1.0  # scans per second per device
    duration_s: float = 60.0
    backlog: int = 0  # burst mode: events each device holds when it connects
    site: str = "H1"
    seed: int = 1
    tag: str = ""  # device ids are f"L{tag}{i:05d}"; default: a fresh tag per run
    batch_size: int = 200
    window: int = 4
    resend_after_s: float = 5.0
    reconnect_delay_s: float = 1.0
    keepalive_s: int = 60
    drop_acks: float = 0.0  # fault injection: share of gateway acks the devices ignore, as if lost
    connect_concurrency: int = 100
    settle_timeout_s: float = 180.0
    operator: str = "N0001"
    dept: str = "OR-3"

    def device_ids(self) -> list[str]:
        tag = self.tag or new_tag()
        ids = [f"L{tag}{i:05d}" for i in range(1, self.devices + 1)]
        if len(ids[-1]) > MAX_DEVICE_ID:
            raise ValueError(f"device ids must be at most {MAX_DEVICE_ID} characters; shorten the tag {tag!r}")
        return ids


def new_tag() -> str:
    """Five characters from the clock (one a second, repeating after two years), so runs against the same
    gateway do not reuse a device id."""
    alphabet = string.digits + string.ascii_uppercase
    n, out = int(time.time()), ""
    for _ in range(5):
        n, r = divmod(n, 36)
        out = alphabet[r] + out
    return out


def charge_id(device: str, seq: int) -> str:
    """The charge id the gateway gives the charge of ``(device, seq)`` (docs/wire.md)."""
    return hashlib.sha256(device.encode()).hexdigest()[:10].upper() + f"{seq:010d}"


@dataclass(slots=True)
class DeviceCounters:
    batches_sent: int = 0
    events_sent: int = 0
    acks: int = 0
    acks_dropped: int = 0
    bad_acks: int = 0
    rewinds: int = 0
    connects: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


class SimDevice:
    """One device at the wire: an in-memory hash-chained log, an MQTT connection, the sync rules."""

    def __init__(self, device: str, cfg: LoadConfig, catalog: list[SimCatalogItem], host: str, port: int) -> None:
        self.device = device
        self.cfg = cfg
        self.catalog = catalog
        self.host, self.port = host, port
        self.events: list[Event] = []
        self.scan_at: list[float] = []  # wall time of each scan (index seq - 1)
        self.stored_at: list[float] = []  # wall time its ack arrived (index seq - 1), 0 while unacked
        self.acked = 0
        self.sent_upto = 0
        self.connected = False
        self.last_progress = time.monotonic()
        self.counters = DeviceCounters()
        self._rng = random.Random(f"acks/{cfg.seed}/{device}")
        self._head = GENESIS_HASH
        self._bodies: list[dict[str, Any]] = []  # prepared scan bodies (index seq - 1)
        self._t_events = topic(cfg.site, device, Channel.EVENTS)
        self._t_ack = topic(cfg.site, device, Channel.ACK)
        self._t_state = topic(cfg.site, device, Channel.STATE)
        self.client = self.make_client(
            f"dev-{cfg.site}-{device}",
            will_message=Message(self._t_state, self._state(DeviceStatus.OFFLINE), qos=1, retain=True),
        )
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": cfg.reconnect_delay_s})
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    @property
    def last_seq(self) -> int:
        return len(self.events)

    # ------------------------------------------------------------ the log

    def prepare(self, scans: int) -> None:
        """Work out the wristband and item of the next ``scans`` scans now, so scanning later costs only the
        timestamp, the hash and the send (the generator's CPU belongs to the wire, not to making barcodes)."""
        first = len(self._bodies) + 1
        self._bodies.extend(self._body(seq) for seq in range(first, first + scans))

    def _body(self, seq: int) -> dict[str, Any]:
        pair = scan_for(self.cfg.seed, self.device, seq, self.catalog)
        return {"admission": pair.wristband, "udi": pair.udi, "operator": self.cfg.operator, "dept": self.cfg.dept}

    def scan(self) -> Event:
        """Record the next scan (a consume event chained to the last one) and send it if the window allows."""
        seq = len(self.events) + 1
        body = self._bodies[seq - 1] if seq <= len(self._bodies) else self._body(seq)
        now = time.time()
        ts_ms = int(now * 1000)
        kind = EventKind.CONSUME.value
        digest = event_hash(self.device, seq, ts_ms, kind, body, self._head)
        ev = Event(self.device, seq, ts_ms, kind, body, self._head, digest)
        self._head = digest
        self.events.append(ev)
        self.scan_at.append(now)
        self.stored_at.append(0.0)
        self.send_some()
        return ev

    # ------------------------------------------------------------ MQTT

    def make_client(self, client_id: str, *, will_message: Message) -> MqttClient:
        """The device's gmqtt client (a broker cluster's variant: :mod:`hw_sim.cluster_load`)."""
        return MqttClient(client_id, will_message=will_message)

    async def connect(self) -> None:
        await self.client.connect(self.host, self.port, keepalive=self.cfg.keepalive_s)

    async def disconnect(self) -> None:
        if self.connected:
            self.client.publish(self._t_state, self._state(DeviceStatus.OFFLINE), qos=1, retain=True)
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    def _on_connect(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        client.subscribe(self._t_ack, qos=1)
        client.publish(self._t_state, self._state(DeviceStatus.ONLINE), qos=1, retain=True)
        self.connected = True
        self.counters.connects += 1
        self.sent_upto = self.acked  # resend everything not yet acknowledged
        self.last_progress = time.monotonic()
        self.send_some()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self.connected = False

    def _on_message(self, client: Any, topic_text: str, payload: bytes, qos: int, properties: Any) -> int:
        if topic_text != self._t_ack:
            return 0
        try:
            ack = decode_ack(self.device, payload)
        except WireError as err:
            self.counters.bad_acks += 1
            log.warning("device %s: ignored ack: %s", self.device, err)
            return 0
        if self.cfg.drop_acks and self._rng.random() < self.cfg.drop_acks:
            self.counters.acks_dropped += 1
            return 0
        if ack.acked > self.last_seq:
            self.counters.bad_acks += 1
            log.error("device %s: refused ack %d beyond its last sequence %d", self.device, ack.acked, self.last_seq)
            return 0
        self.counters.acks += 1
        self.counters.rejected.extend((r.seq, r.reason) for r in ack.rejected)
        if ack.acked > self.acked:
            now = time.time()
            for i in range(self.acked, ack.acked):
                self.stored_at[i] = now
            self.acked = ack.acked
            self.last_progress = time.monotonic()
            self.send_some()
        return 0

    def send_some(self) -> None:
        """Publish unacknowledged events in batches while fewer than ``window`` batches are in flight."""
        if not self.connected:
            return
        if self.sent_upto < self.acked:
            self.sent_upto = self.acked
        limit = self.cfg.window * self.cfg.batch_size
        while self.sent_upto < self.last_seq and self.sent_upto - self.acked < limit:
            start = self.sent_upto
            batch = self.events[start:start + self.cfg.batch_size]
            self.client.publish(self._t_events, encode_batch(self.cfg.site, self.device, batch), qos=1)
            if start == self.acked:
                self.last_progress = time.monotonic()
            self.sent_upto = batch[-1].seq
            self.counters.batches_sent += 1
            self.counters.events_sent += len(batch)

    def check_stalled(self, now: float) -> None:
        """No ack progress for ``resend_after_s`` with events in flight: rewind to the last ack and resend."""
        if self.connected and self.sent_upto > self.acked and now - self.last_progress > self.cfg.resend_after_s:
            self.counters.rewinds += 1
            self.sent_upto = self.acked
            self.last_progress = now
            self.send_some()

    def _state(self, status: DeviceStatus) -> bytes:
        return encode_state(DeviceState(self.device, status, backlog=self.last_seq - self.acked if self.events else 0,
                                        version=__version__, ts_ms=int(time.time() * 1000), extra={"loadgen": True}))


# ---------------------------------------------------------------- the run


@dataclass(slots=True)
class RunTimes:
    started: float = 0.0  # wall time the first scan (or, in burst mode, the first connect) began
    scanning_ended: float = 0.0
    all_acked: float = 0.0
    loop_cpu_s: float = 0.0  # CPU of the event loop thread over the active phase
    process_cpu_s: float = 0.0
    gave_up: bool = False


class LoadGenerator:
    """Runs ``cfg.devices`` simulated devices against a broker on one asyncio loop."""

    def __init__(self, cfg: LoadConfig, host: str, port: int) -> None:
        self.cfg = cfg
        catalog = sim_catalog()
        self.devices = [SimDevice(d, cfg, catalog, host, port) for d in cfg.device_ids()]
        self.times = RunTimes()

    def run(self, *, during: Callable[[], None] | None = None, during_at_s: float = 0.0) -> RunTimes:
        """Connect, scan for ``duration_s`` (or send the backlog), wait for every ack; ``during`` runs in a
        thread ``during_at_s`` into the scanning (fault injection, e.g. a broker restart)."""
        return asyncio.run(self._run(during, during_at_s))

    async def _run(self, during: Callable[[], None] | None, during_at_s: float) -> RunTimes:
        cfg = self.cfg
        for dev in self.devices:
            dev.prepare(cfg.backlog or int(cfg.duration_s * cfg.rate) + 2)
        if cfg.backlog:
            for dev in self.devices:
                for _ in range(cfg.backlog):
                    dev.scan()  # not connected: only recorded
        cpu0, pcpu0 = time.thread_time(), time.process_time()
        self.times.started = time.time()
        await self._connect_all()
        ticker = asyncio.create_task(self._resend_ticker())
        fault: asyncio.Future[None] | None = None
        try:
            if not cfg.backlog:
                if during is not None:
                    loop = asyncio.get_running_loop()
                    fault = asyncio.ensure_future(self._later(during_at_s, lambda: loop.run_in_executor(None, during)))
                await self._scan_for(cfg.duration_s)
                self.times.scanning_ended = time.time()
                if fault is not None:
                    await fault
            self.times.gave_up = not await self._wait_acked(cfg.settle_timeout_s)
            self.times.all_acked = time.time()
            self.times.loop_cpu_s = time.thread_time() - cpu0
            self.times.process_cpu_s = time.process_time() - pcpu0
        finally:
            ticker.cancel()
            if fault is not None and not fault.done():
                fault.cancel()
            await asyncio.gather(*(d.disconnect() for d in self.devices), return_exceptions=True)
        return self.times

    @staticmethod
    async def _later(delay_s: float, fn: Callable[[], Any]) -> None:
        await asyncio.sleep(delay_s)
        await fn()

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(self.cfg.connect_concurrency)

        async def one(dev: SimDevice) -> None:
            async with gate:
                await dev.connect()

        await asyncio.gather(*(one(d) for d in self.devices))

    async def _scan_for(self, duration_s: float) -> None:
        """Every device scans at ``rate``/s, phases spread at random, until ``duration_s`` has passed."""
        period = 1.0 / self.cfg.rate
        rng = random.Random(self.cfg.seed)
        t0 = time.monotonic()
        end = t0 + duration_s
        due = [(t0 + rng.random() * period, i) for i in range(len(self.devices))]
        heapq.heapify(due)
        while due:
            at, i = due[0]
            if at >= end:
                break
            now = time.monotonic()
            if at > now:
                await asyncio.sleep(at - now)
                continue
            heapq.heapreplace(due, (at + period, i))
            self.devices[i].scan()

    async def _resend_ticker(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for dev in self.devices:
                dev.check_stalled(now)

    async def _wait_acked(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(d.acked == d.last_seq for d in self.devices):
                return True
            await asyncio.sleep(0.05)
        return False

    # ------------------------------------------------------------ what the devices saw

    def produced(self) -> dict[tuple[str, int], Event]:
        return {(d.device, e.seq): e for d in self.devices for e in d.events}

    def scan_times(self) -> dict[str, float]:
        """charge id → wall time of its scan."""
        return {charge_id(d.device, i + 1): t for d in self.devices for i, t in enumerate(d.scan_at)}

    def stored_latencies(self) -> list[float]:
        return [s - t for d in self.devices for t, s in zip(d.scan_at, d.stored_at, strict=True) if s]

    def counters(self) -> DeviceCounters:
        total = DeviceCounters()
        for d in self.devices:
            c = d.counters
            total.batches_sent += c.batches_sent
            total.events_sent += c.events_sent
            total.acks += c.acks
            total.acks_dropped += c.acks_dropped
            total.bad_acks += c.bad_acks
            total.rewinds += c.rewinds
            total.connects += c.connects
            total.rejected += c.rejected
        return total


# ---------------------------------------------------------------- counting from the gateway's and the HIS's records


@dataclass(slots=True)
class LoadTally:
    """Exact counts over the events this run produced, from the gateway store and the HIS database."""

    events: int = 0
    stored: int = 0
    stored_twice: int = 0  # rows for one (device, seq) beyond the first
    quarantined: int = 0
    charged: int = 0
    refused_by_bridge: int = 0
    parked: int = 0
    pending: int = 0
    lost: int = 0  # not stored, or stored and chargeable but never charged
    duplicates: int = 0  # extra charges at the HIS for one event or one item serial
    invented: int = 0  # rows at the gateway or charges at the HIS for these devices that no device produced
    his_resends_recognised: int = 0
    lost_keys: list[tuple[str, int]] = field(default_factory=list)


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def count(produced: set[tuple[str, int]], devices: set[str], gateway_db: Path | str, his_db: Path | None
          ) -> tuple[LoadTally, dict[str, float], dict[str, float]]:
    """The tally, the gateway's stored_at per charge id, and the HIS's first_received_at per charge id."""
    t = LoadTally(events=len(produced))
    gw = gateway_reader(gateway_db)  # a SQLite file, or a postgresql:// URL
    try:
        rows = Counter((d, s) for d, s in gw.execute("SELECT device, seq FROM events") if d in devices)
        stored = set(rows)
        t.stored = len(produced & stored)
        t.stored_twice = sum(n - 1 for n in rows.values())
        t.invented += len(stored - produced)
        quarantined = {(d, s) for d, s in gw.execute("SELECT device, seq FROM quarantine") if d in devices}
        t.quarantined = len(quarantined)
        rejected = {(d, s) for d, s in gw.execute("SELECT device, seq FROM charge_rejects") if d in devices}
        t.refused_by_bridge = len(produced & rejected)
        charge_of: dict[str, tuple[str, int]] = {}
        item_of: dict[tuple[str, int], str] = {}
        parked: set[tuple[str, int]] = set()
        for cid, d, s, item, status in gw.execute("SELECT charge_id, device, seq, item_key, status FROM charges"):
            if d not in devices:
                continue
            charge_of[cid] = (d, s)
            item_of[(d, s)] = item
            if status == "parked":
                parked.add((d, s))
            elif status == "pending":
                t.pending += 1
        t.parked = len(parked)
        stored_at = {charge_id(d, s): at for d, s, at in gw.execute("SELECT device, seq, stored_at FROM events")
                     if d in devices}
    finally:
        gw.close()
    his_at: dict[str, float] = {}
    charged: Counter[tuple[str, int]] = Counter()
    if his_db is not None:
        prefixes = {charge_id(d, 0)[:10] for d in devices}
        his = _ro(his_db)
        try:
            for txn, first, times in his.execute("SELECT txn_id, first_received_at, times_received FROM charges"):
                if txn[:10] not in prefixes:
                    continue  # another run's devices
                key = charge_of.get(txn)
                if key is None or key not in produced:
                    t.invented += 1
                    continue
                charged[key] += 1
                t.his_resends_recognised += times - 1
                his_at[txn] = dt.datetime.fromisoformat(first).timestamp()
        finally:
            his.close()
        t.charged = len(produced & set(charged))
        t.duplicates = sum(n - 1 for n in charged.values())
        items = Counter(item_of[k] for k in charged if k in item_of)
        t.duplicates += sum(n - 1 for n in items.values())
        missing = (produced - stored) | ((produced & stored) - set(charged) - rejected - parked)
    else:
        missing = produced - stored - quarantined
    t.lost = len(missing)
    t.lost_keys = sorted(missing)[:20]
    return t, stored_at, his_at


# ---------------------------------------------------------------- figures


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def latency_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(pct(values, 50) * 1000, 1),
        "p95_ms": round(pct(values, 95) * 1000, 1),
        "p99_ms": round(pct(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1) if values else float("nan"),
    }


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(need: int) -> int:
    """Lift this process's open-file limit (inherited by the broker and gateway it starts) towards ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("open-file limit %d is below the %d this run needs", soft, need)
    return int(soft)


@dataclass(slots=True)
class Target:
    """Where the devices connect and whose records are counted."""

    host: str
    port: int
    gateway_db: Path | str | None = None
    his_db: Path | None = None
    gateway_pid: int | None = None
    broker_pid: int | None = None
    more_gateway_pids: dict[str, int] = field(default_factory=dict)  # further instances, by name


def run_load(cfg: LoadConfig, target: Target, *, during: Callable[[], None] | None = None,
             during_at_s: float = 0.0, generator: LoadGenerator | None = None) -> dict[str, Any]:
    """Run the generator (by default one on ``target``'s broker) and return the figures (one JSON-able dict)."""
    gen = generator or LoadGenerator(cfg, target.host, target.port)
    pids = {"gateway": target.gateway_pid, "broker": target.broker_pid, **target.more_gateway_pids}
    cpu0 = {k: _proc_cpu_s(p) for k, p in pids.items() if p}
    times = gen.run(during=during, during_at_s=during_at_s)
    cpu1 = {k: _proc_cpu_s(p) for k, p in pids.items() if p}
    active_s = max(1e-9, times.all_acked - times.started)
    counters = gen.counters()
    out: dict[str, Any] = {
        "figure": "load_backlog" if cfg.backlog else "load",
        "devices": cfg.devices,
        "rate_per_device": None if cfg.backlog else cfg.rate,
        "duration_s": None if cfg.backlog else cfg.duration_s,
        "backlog_per_device": cfg.backlog or None,
        "events": sum(d.last_seq for d in gen.devices),
        "acked": sum(d.acked for d in gen.devices),
        "gave_up_waiting_for_acks": times.gave_up,
        # burst mode: the scans happened before the run (as during an outage); what counts is the drain
        **({"drain_s": round(times.all_acked - times.started, 2)} if cfg.backlog else
           {"scan_to_stored": latency_ms(gen.stored_latencies())}),
        "cpu_pct": {
            "generator_loop": round(100 * times.loop_cpu_s / active_s, 1),
            "generator_process": round(100 * times.process_cpu_s / active_s, 1),
            **{k: round(100 * (cpu1[k] - cpu0[k]) / active_s, 1) for k in cpu0},
        },
        "wire": {"batches_sent": counters.batches_sent, "events_sent": counters.events_sent, "acks": counters.acks,
                 "acks_dropped": counters.acks_dropped, "bad_acks": counters.bad_acks,
                 "rewinds": counters.rewinds, "connects": counters.connects,
                 "quarantined_by_gateway": len(counters.rejected)},
    }
    if cfg.backlog:
        out["events_per_s_acked"] = round(out["acked"] / active_s)
    if target.gateway_db is not None:
        produced = set(gen.produced())
        ids = {d.device for d in gen.devices}
        deadline = time.monotonic() + cfg.settle_timeout_s
        while True:  # until every stored event is charged (or refused, or parked) at the HIS
            tally, stored_at, his_at = count(produced, ids, target.gateway_db, target.his_db)
            settled = tally.lost == 0 and tally.pending == 0
            if settled or times.gave_up or target.his_db is None or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        out["tally"] = asdict(tally)
        scan_at = gen.scan_times()
        if not cfg.backlog:
            out["scan_to_committed"] = latency_ms([stored_at[c] - scan_at[c] for c in stored_at if c in scan_at])
            if his_at:
                out["scan_to_his_ack"] = latency_ms([his_at[c] - scan_at[c] for c in his_at if c in scan_at])
        elif his_at:
            out["his_drain_s"] = round(max(his_at.values()) - times.started, 2)
        if stored_at:  # over the time from the first scan (burst: the first connect) to the last commit
            out["events_per_s_stored"] = round(len(stored_at) / max(1e-9, max(stored_at.values()) - times.started))
        if his_at:
            out["charges_per_s_his"] = round(len(his_at) / max(1e-9, max(his_at.values()) - times.started))
    return out


class HisProcess:
    """The simulated HIS as a process of its own (``python -m hw_sim.his``), as a real HIS is a system of its own.

    In the generator's process the HIS's connection threads wait for the interpreter lock behind the event
    loop of a thousand devices, and the HIS leg measures that wait (about 3 ms a charge); in its own
    process it answers at its own pace. The same SQLite books, so the tally reads them as before.
    """

    def __init__(self, db: Path, log_path: Path) -> None:
        self.db, self.log_path = db, log_path
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> HisProcess:
        with open(self.log_path, "ab") as logf:
            self._proc = reaper.spawn([sys.executable, "-m", "hw_sim.his", "--port", str(self.port), "--db",
                                       str(self.db)], stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the simulated HIS did not listen on {self.port}: {self.log_path.read_text()[-1000:]}")

    def stop(self) -> None:
        if self._proc is not None:
            reaper.stop(self._proc)


def run_private(cfg: LoadConfig, workdir: Path, *, during: Callable[[SpineHarness], None] | None = None,
                during_at_s: float = 0.0, store_url: str | None = None, gateways: int = 1,
                kill_every_s: float = 0.0, his_process: bool = False, gateway_code: Path | None = None,
                his_lanes: int | None = None, parts: bool = False) -> dict[str, Any]:
    """Start a private broker, simulated HIS and gateway(s), run the load against them, end them all.

    ``store_url``: the gateways' store is that PostgreSQL database (else a SQLite file); ``gateways``: instances
    on one shared subscription and store; ``kill_every_s``: SIGKILL one instance that often (in turn) and start
    it again at once.
    ``his_process``: the simulated HIS runs as its own process (:class:`HisProcess`), not in this one.
    ``gateway_code``: a source tree whose ``gateway`` package the gateway process runs instead of this
    one's (another version of the gateway, for a before/after comparison on the same load).
    ``his_lanes``: the gateway's HIS lanes (``[his] lanes``; default its own, 4).
    ``parts``: each gateway runs as three processes, one per part (``run --part``, :mod:`gateway.parts`).
    """
    raise_fd_limit(2 * cfg.devices + 1024)
    h = SpineHarness(workdir, site=cfg.site, store_url=store_url, gateways=gateways, lease_ttl_s=2.0)
    h.his_lanes = his_lanes
    h.parts = parts
    if his_process:
        h.his = HisProcess(h.his_db, workdir / "his.log")  # type: ignore[assignment]
    if gateway_code is not None:
        h.env["PYTHONPATH"] = os.pathsep.join([str(gateway_code), h.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        h.env["PYTHONSAFEPATH"] = "1"  # `python -m` must not put the working directory (this tree) first
    killer_stop = threading.Event()
    kills: list[int] = []

    def kill_in_turn() -> None:
        while not killer_stop.wait(kill_every_s):
            instance = len(kills) % gateways
            h.kill_gateway(instance)
            kills.append(instance)
            h.start_gateway(instance)

    killer = threading.Thread(target=kill_in_turn, name="gateway-killer", daemon=True)
    try:
        h.start()
        wait_gateway_connected(h)
        assert h.broker.pid is not None and h.gateway is not None and h.gateway.proc is not None
        more = {f"gateway-{i}": g.proc.pid for i, g in h.gateways.items() if i and g.proc is not None}
        more.update({p.name: p.proc.pid for procs in h.gateway_parts.values() for p in procs if p.proc is not None})
        # the CPU of instances that are killed and started again is not measured (their processes change)
        target = Target(h.broker.host, h.broker.port, h.gateway_db, h.his_db,
                        gateway_pid=None if kill_every_s else h.gateway.proc.pid, broker_pid=h.broker.pid,
                        more_gateway_pids={} if kill_every_s else more)
        if kill_every_s:
            killer.start()
        out = run_load(cfg, target, during=(lambda: during(h)) if during else None, during_at_s=during_at_s)
        killer_stop.set()
        out["store"] = "postgresql" if store_url else "sqlite"
        out["gateways"] = gateways
        if parts:
            out["gateway_parts"] = list(SPLIT_PARTS)
        if kill_every_s:
            out["gateway_kills"] = len(kills)
        out["gateway_broker_disconnects"] = h.gateway.output().count("gateway: disconnected from broker")
        return out
    finally:
        killer_stop.set()
        h.close()


def wait_gateway_connected(h: SpineHarness, timeout_s: float = 30.0) -> None:
    """Wait for the gateway's log line saying it is connected and subscribed (it runs with ``-v``)."""
    assert h.gateway is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "gateway: connected to" in h.gateway.output():
            return
        if not h.gateway.running:
            raise RuntimeError(f"gateway exited: {h.gateway.output()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not connect within {timeout_s:.0f}s")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spd-sim load", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--rate", type=float, default=1.0, help="scans per second per device")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of scanning")
    p.add_argument("--backlog", type=int, default=0,
                   help="burst mode: each device connects holding this many events and sends them as fast as "
                        "acks allow (no scanning)")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--window", type=int, default=4, help="batches in flight beyond the last ack")
    p.add_argument("--resend-after", type=float, default=5.0, help="seconds without ack progress before a resend")
    p.add_argument("--drop-acks", type=float, default=0.0, help="share of acks the devices ignore (fault)")
    p.add_argument("--site", default="H1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tag", default="", help="device ids are L{tag}{n:05d} (default: a fresh tag from the clock)")
    p.add_argument("--settle-timeout", type=float, default=180.0)
    p.add_argument("--broker", type=_host_port, default=None,
                   help="host:port of a broker with a gateway already on it (default: start a private one)")
    p.add_argument("--gateway-db", type=Path, default=None, help="with --broker: the gateway's store, to count from")
    p.add_argument("--his-db", type=Path, default=None, help="with --broker: the simulated HIS's database")
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the private gateway's store: a SQLite file, or a scratch PostgreSQL database on the server "
                        "of SPD_TEST_PG (default 127.0.0.1:5432), dropped afterwards")
    p.add_argument("--gateways", type=int, default=1,
                   help="private gateway instances on one shared subscription and store (several: use PostgreSQL)")
    p.add_argument("--kill-gateway-every", type=float, default=0.0, metavar="S",
                   help="SIGKILL one private gateway instance every S seconds, in turn, and start it again (0: never)")
    p.add_argument("--his-process", action="store_true",
                   help="run the simulated HIS as a process of its own, not in the generator's (which shares "
                        "the interpreter lock with the devices' event loop)")
    p.add_argument("--gateway-code", type=Path, default=None, metavar="DIR",
                   help="run the private gateway from the source tree DIR (e.g. a checkout of an earlier "
                        "version) instead of this one, to compare two versions under the same load")
    p.add_argument("--his-lanes", type=int, default=None, metavar="N",
                   help="the private gateway's HIS lanes ([his] lanes; default the gateway's own, 4)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="run in DIR (made if missing) and keep it: the gateway's SQLite store, the HIS's database and "
                        "every process's log, to look at afterwards (a PostgreSQL store is dropped all the same)")
    p.add_argument("--parts", action="store_true",
                   help="run each private gateway as three processes, one per part (spd-gateway run --part "
                        "ingest|books|his, as the spd-gateway@ units do), not as one")
    p.add_argument("--write-catalog", type=Path, default=None, metavar="CSV",
                   help="write the items the devices scan as a CSV for spd-gateway catalog-import, and exit")
    a = p.parse_args(argv)
    if not 1 <= a.devices <= 99_999:
        p.error("--devices must be 1 to 99,999")
    if not a.backlog and (a.rate <= 0 or a.duration <= 0):
        p.error("--rate and --duration must be positive (or give --backlog)")
    if a.write_catalog is not None:
        a.write_catalog.write_text(write_catalog_csv([i.row() for i in sim_catalog()]), encoding="utf-8")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    reaper.exit_on_signals()  # SIGTERM/SIGHUP: unwind, so the private broker and gateway are ended
    cfg = LoadConfig(devices=a.devices, rate=a.rate, duration_s=a.duration, backlog=a.backlog, site=a.site,
                     seed=a.seed, tag=a.tag, batch_size=a.batch_size, window=a.window, resend_after_s=a.resend_after,
                     drop_acks=a.drop_acks, settle_timeout_s=a.settle_timeout)
    if a.broker is None:
        with contextlib.ExitStack() as stack:
            d = str(a.keep) if a.keep is not None else stack.enter_context(
                tempfile.TemporaryDirectory(prefix="spd-load-"))
            url = stack.enter_context(scratch_database(prefix="spd_load")) if a.store == "postgresql" else None
            out = run_private(cfg, Path(d), store_url=url, gateways=a.gateways, kill_every_s=a.kill_gateway_every,
                              his_process=a.his_process, gateway_code=a.gateway_code, his_lanes=a.his_lanes,
                              parts=a.parts)
    else:
        raise_fd_limit(a.devices + 1024)
        out = run_load(cfg, Target(a.broker[0], a.broker[1], a.gateway_db, a.his_db))
    print(json.dumps(out), flush=True)
    tally = out.get("tally", {})
    bad = out["gave_up_waiting_for_acks"] or tally.get("lost") or tally.get("duplicates") or tally.get("invented")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

