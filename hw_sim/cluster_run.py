"""``spd-sim cluster-run``: devices and the real gateway on a three-node NATS cluster, one node killed mid-run.

The spine harness (:class:`hw_sim.harness.SpineHarness`) with its broker
replaced by :class:`hw_sim.broker_cluster.NatsCluster`:

* the simulated HIS and a real ``spd-gateway run`` process, whose
  configuration file names the cluster (``[broker] hosts = [...]``,
  ``mqtt_version = "3.1.1"``), first node first;
* simulated handhelds (:mod:`hw_sim.handheld`: the device's own event log and
  ``DeviceSync``, unchanged), each on its own node first (device *i* on node
  *i* mod 3) with the other nodes as fallbacks;
* once every device has events stored at the gateway and ``kill_after_s``
  more, the node the gateway is connected to is SIGKILLed (or the node
  ``--kill`` names); it is started again after ``down_s`` (0: it stays down);
* the handhelds finish their scans and drain; then the tally, from the device
  logs, the gateway store and the HIS database (:func:`hw_sim.harness.tally`):
  every scan stored once and charged once, nothing lost or doubled.

It prints one JSON object: the tally, what the killed node led (JetStream's
metadata, the MQTT streams: leaders are elected again after the kill), the
gateway's reconnect time after the kill, how long the devices on the killed
node took to have events stored again, the longest pause in the gateway's
commits, and the node restart time.
The exit status is 1 if anything was lost, doubled or invented, or the run did
not settle.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import re
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hw_sim import reaper
from hw_sim.broker_cluster import MQTT_VERSION, NatsCluster, find_nats_server
from hw_sim.harness import SpineHarness
from hw_sim.loadgen import LoadConfig, wait_gateway_connected

log = logging.getLogger(__name__)

_CONNECTED = re.compile(r"gateway: connected to ([0-9.]+):(\d+)")


@dataclass(slots=True)
class ClusterRunConfig:
    devices: int = 6
    scans: int = 60  # per device
    rate: float = 5.0  # scans per second per device
    kill_after_s: float = 2.0  # after every device has events stored at the gateway
    kill: int | None = None  # node index to kill; None: the node the gateway is connected to
    down_s: float = 5.0  # then the killed node is started again; 0: it stays down
    settle_timeout_s: float = 90.0
    seed: int = 1


class ClusterHarness(SpineHarness):
    """The spine on a NATS cluster: the gateway's file names every node; devices are spread over them."""

    def __init__(self, workdir: Path, cluster: NatsCluster, **kw: Any) -> None:
        super().__init__(workdir, **kw)
        self.cluster = cluster

    def start(self) -> ClusterHarness:
        self.cluster.start()
        self.start_services()
        return self

    def gateway_toml(self, instance: int = 0, *, protocol: str = "mllp") -> str:
        text = super().gateway_toml(instance, protocol=protocol)
        single = f'host = "127.0.0.1"\nport = {self.broker.port}\n'
        if single not in text:
            raise AssertionError("the harness's gateway file changed its [broker] layout")
        nodes = ", ".join(f'"{h}:{p}"' for h, p in self.cluster.addresses)
        return text.replace(single, f'hosts = [{nodes}]\nmqtt_version = "{MQTT_VERSION}"\n')

    def start_cluster_handheld(self, device: str, node: int, *, scans: int, rate: float) -> None:
        first, *others = self.cluster.addresses_from(node)
        extra: list[str] = ["--mqtt-version", MQTT_VERSION]
        for host, port in others:
            extra += ["--broker-fallback", f"{host}:{port}"]
        self.start_handheld(device, scans=scans, rate=rate, broker_port=first[1], extra_args=tuple(extra))

    def gateway_node(self) -> int:
        """The node the gateway last said it connected to."""
        assert self.gateway is not None
        found = _CONNECTED.findall(self.gateway.output())
        if not found:
            raise RuntimeError("the gateway has not connected")
        return self.cluster.node_of_port(int(found[-1][1]))

    def gateway_connects(self) -> int:
        assert self.gateway is not None
        return len(_CONNECTED.findall(self.gateway.output()))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.cluster.close()


def _gateway_rows(db_path: Path) -> list[tuple[str, int, float]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return [(str(d), int(s), float(t)) for d, s, t in db.execute("SELECT device, seq, stored_at FROM events")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def _wait(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Poll until ``predicate()`` is true; the wall time it became so."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


def run_cluster(cfg: ClusterRunConfig, workdir: Path) -> dict[str, Any]:
    """Run the scenario in ``workdir`` and return its figures (one JSON-able dict)."""
    cluster = NatsCluster(workdir=workdir / "nats")
    h = ClusterHarness(workdir, cluster, seed=cfg.seed)
    try:
        t0 = time.time()
        h.start()
        wait_gateway_connected(h)
        started_s = time.time() - t0
        names = [f"HC{i + 1:03d}" for i in range(cfg.devices)]
        for i, name in enumerate(names):
            h.start_cluster_handheld(name, i % len(cluster.nodes), scans=cfg.scans, rate=cfg.rate)
        _wait(lambda: {d for d, _, _ in _gateway_rows(h.gateway_db)} >= set(names), 60.0,
              "every device to have events stored")
        time.sleep(cfg.kill_after_s)

        victim = h.gateway_node() if cfg.kill is None else cfg.kill
        connects = h.gateway_connects()
        gateway_on_victim = h.gateway_node() == victim
        led = sorted(k for k, v in cluster.leaders(victim).items() if v == cluster.nodes[victim].name)
        on_victim = [n for i, n in enumerate(names) if i % len(cluster.nodes) == victim]
        t_kill = time.time()
        cluster.kill(victim)
        log.info("cluster-run: killed node %s", cluster.nodes[victim].name)
        if gateway_on_victim:
            t_gw = _wait(lambda: h.gateway_connects() > connects, 60.0, "the gateway to reconnect")
            gateway_reconnect_s: float | None = round(t_gw - t_kill, 2)
        else:
            gateway_reconnect_s = None  # the gateway was on another node and kept its connection
        _wait(lambda: {d for d, _, t in _gateway_rows(h.gateway_db) if t > t_kill} >= set(on_victim), 60.0,
              "the killed node's devices to have events stored again")
        restart_s: float | None = None
        if cfg.down_s > 0:
            time.sleep(max(0.0, t_kill + cfg.down_s - time.time()))
            t_restart = time.time()
            restart_s = round(time.time() - t_restart, 2) if cluster.start_node(victim) else None

        h.wait_handhelds(cfg.settle_timeout_s + cfg.scans / cfg.rate)
        tally = h.wait_settled(cfg.settle_timeout_s)
        rows = _gateway_rows(h.gateway_db)
        keys = [(d, s) for d, s, _ in rows]
        first_after = {d: min(t for dd, _, t in rows if dd == d and t > t_kill) for d in on_victim}
        commits = sorted(t for _, _, t in rows)
        gaps = [b - a for a, b in itertools.pairwise(commits)]
        return {
            "figure": "broker_cluster",
            "engine": "nats-server",
            "nodes": len(cluster.nodes),
            "mqtt_version": MQTT_VERSION,
            "devices": cfg.devices,
            "scans_per_device": cfg.scans,
            "rate_per_device": cfg.rate,
            "cluster_and_gateway_start_s": round(started_s, 2),
            "killed": {"node": cluster.nodes[victim].name, "gateway_was_on_it": gateway_on_victim,
                       "devices_on_it": len(on_victim), "it_led": led, "down_s": cfg.down_s or None,
                       "restart_s": restart_s},
            "kills": 1,
            "gateway_reconnect_s": gateway_reconnect_s,
            "devices_on_killed_node_stored_again_s": round(max(first_after.values()) - t_kill, 2),
            "longest_commit_pause_s": round(max(gaps), 2) if gaps else None,
            "gateway_broker_connects": h.gateway_connects(),
            "events": tally.events,
            "scans": tally.scans,
            "stored": tally.stored,
            "stored_twice": len(keys) - len(set(keys)),
            "charged": tally.charged,
            "lost": tally.lost,
            "duplicates": tally.duplicates,
            "invented": tally.invented,
            "events_not_stored": tally.events_not_stored,
            "chain_breaks": tally.chain_breaks,
            "his_resends_recognised": tally.his_resends_recognised,
            "lost_keys": tally.lost_keys[:20],
        }
    finally:
        h.close()


def failed(out: dict[str, Any]) -> bool:
    """Anything lost, doubled or invented, or a scan neither stored nor charged."""
    return bool(out["lost"] or out["duplicates"] or out["invented"] or out["stored_twice"]
                or out["events_not_stored"] or out["stored"] != out["scans"] or out["charged"] != out["scans"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spd-sim cluster-run", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--devices", type=int, default=6, help="simulated handhelds, spread over the nodes")
    p.add_argument("--scans", type=int, default=60, help="scans per device")
    p.add_argument("--rate", type=float, default=5.0, help="scans per second per device")
    p.add_argument("--kill-after", type=float, default=2.0,
                   help="seconds after every device has events stored before the kill (--loadgen: after the "
                        "scanning starts)")
    p.add_argument("--kill", type=int, default=None, choices=(1, 2, 3), metavar="NODE",
                   help="node to SIGKILL, 1-3 (default: the one the gateway is connected to)")
    p.add_argument("--down", type=float, default=5.0, help="seconds before the killed node is started again "
                                                           "(0: it stays down)")
    p.add_argument("--settle-timeout", type=float, default=90.0, help="seconds to wait for every charge")
    p.add_argument("--seed", type=int, default=1, help="seed of the scans' items and wristbands")
    p.add_argument("--workdir", type=Path, default=None, help="keep the run's files here (default: a temp dir)")
    p.add_argument("--loadgen", action="store_true",
                   help="devices from the load generator (one process, gmqtt) instead of handhelds; with --duration")
    p.add_argument("--duration", type=float, default=30.0,
                   help="--loadgen: seconds of scanning (the kill comes --kill-after seconds in)")
    a = p.parse_args(argv)
    if find_nats_server() is None:
        print("nats-server not found: install the Debian package 'nats-server'", file=sys.stderr)
        return 2
    if a.devices < 1 or a.scans < 1 or a.rate <= 0:
        p.error("--devices, --scans and --rate must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.ERROR)  # --loadgen: a write to a killed node's socket, per device
    reaper.exit_on_signals()
    cfg = ClusterRunConfig(devices=a.devices, scans=a.scans, rate=a.rate, kill_after_s=a.kill_after,
                           kill=None if a.kill is None else a.kill - 1, down_s=a.down,
                           settle_timeout_s=a.settle_timeout, seed=a.seed)
    with contextlib.ExitStack() as stack:
        workdir = a.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spd-cluster-")))
        workdir.mkdir(parents=True, exist_ok=True)
        if a.loadgen:
            from hw_sim.cluster_load import run_cluster_load

            load = LoadConfig(devices=a.devices, rate=a.rate, duration_s=a.duration, seed=a.seed,
                              settle_timeout_s=a.settle_timeout)
            out = run_cluster_load(load, workdir, kill_at_s=a.kill_after, down_s=a.down, kill=cfg.kill)
            print(json.dumps(out), flush=True)
            tally = out.get("tally", {})
            return 1 if out["gave_up_waiting_for_acks"] or tally.get("lost") or tally.get("duplicates") \
                or tally.get("invented") or tally.get("stored_twice") else 0
        out = run_cluster(cfg, workdir)
    print(json.dumps(out), flush=True)
    return 1 if failed(out) else 0


if __name__ == "__main__":
    sys.exit(main())
