"""The spine harness: broker, simulated HIS, gateway and handhelds as real processes, plus the tally.

Used by the demo, the integration tests and the chaos runs. The tally counts
only from the records each party keeps — the device logs (what the nurse was
told), the gateway store and the HIS's own database — never from what the
scenario meant to do.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.catalog import write_catalog_csv
from gateway.parts import SPLIT_PARTS
from hw_sim import reaper
from hw_sim.broker import MosquittoBroker
from hw_sim.catalog import sim_catalog
from hw_sim.his import SimulatedHis
from hw_sim.his_http import SimulatedHttpHis

if TYPE_CHECKING:
    from hw_sim.nurse import HandheldProcess

log = logging.getLogger(__name__)


class HarnessError(RuntimeError):
    """A part of the scenario could not be started or did not settle."""


@dataclass(slots=True)
class Tally:
    """Exact counts from each party's own records."""

    scans: int = 0  # consume events committed on devices (the nurse heard the beep)
    refused_at_scan: int = 0  # scans refused at the device with a reason
    stored: int = 0  # of the scans, how many the gateway holds
    charged: int = 0  # of the scans, how many the HIS booked as a charge
    refused_by_bridge: int = 0  # stored scans the bridge refused (unknown item, expired, re-use ...)
    parked: int = 0  # charges the HIS refused (AE/AR), waiting for a person (not those voided by a return)
    consumption_records: int = 0
    lost: int = 0  # scans missing at the gateway, or stored and chargeable but never charged
    duplicates: int = 0  # extra charges at the HIS for one scan or one item serial, or extra rows
    invented: int = 0  # anything at the gateway or the HIS that no device produced
    events: int = 0  # events of every kind committed on devices (scans, cabinet access, counts, alarms ...)
    events_not_stored: int = 0  # of those, how many the gateway neither stored nor quarantined
    his_messages_received: int = 0
    his_resends_recognised: int = 0
    chain_breaks: int = 0
    returns: int = 0  # items brought back unused (return_unused events on devices)
    credited: int = 0  # credits the HIS booked against an earlier charge, at most one per charge
    returns_recorded: int = 0  # returns the gateway settled (return_unused, and charged items back in a cabinet)
    returns_credited: int = 0  # of those, how many became a credit
    returns_unsettled: int = 0  # return_unused events stored at the gateway without a settled return
    credits_lost: int = 0  # credits the gateway queued that the HIS never booked
    credits_duplicated: int = 0  # a charge credited more than once at the HIS, or a credit booked twice
    credits_invented: int = 0  # credits at the HIS that no return produced, or against another charge
    returned_still_charged: int = 0  # a return voided or found "not charged" whose charge the HIS holds
    lost_keys: list[tuple[str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["lost_keys"] = d["lost_keys"][:20]
        return d


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


class _PgReader:
    """Reads a gateway store on PostgreSQL the way the tally reads a SQLite one (``execute``, ``close``)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        from gateway.data.postgres import to_psycopg

        return self._conn.execute(to_psycopg(sql), params)  # type: ignore[arg-type]

    def close(self) -> None:
        self._conn.close()


def gateway_reader(store: Path | str) -> Any:
    """A read-only connection to a gateway store: a SQLite file, or a ``postgresql://`` URL."""
    return _PgReader(store) if isinstance(store, str) else _ro(store)


def tally(device_dbs: list[Path], gateway_db: Path | str, his_db: Path) -> Tally:
    t = Tally()
    scans: set[tuple[str, int]] = set()
    produced: set[tuple[str, int]] = set()
    for path in device_dbs:
        db = _ro(path)
        (device,) = db.execute("SELECT device FROM head").fetchone()
        for seq, kind in db.execute("SELECT seq, kind FROM events"):
            produced.add((device, seq))
            if kind == "consume":
                scans.add((device, seq))
            elif kind == "refused_scan":
                t.refused_at_scan += 1
            elif kind == "return_unused":
                t.returns += 1
        db.close()
    t.scans = len(scans)

    gw = gateway_reader(gateway_db)
    all_stored: set[tuple[str, int]] = set()
    stored: set[tuple[str, int]] = set()
    for d, s_, kind in gw.execute("SELECT device, seq, kind FROM events"):
        all_stored.add((d, s_))
        if kind == "consume":
            stored.add((d, s_))
    t.stored = len(scans & stored)
    t.invented += len(all_stored - produced)
    quarantined = {(d, s_) for d, s_ in gw.execute("SELECT device, seq FROM quarantine")}
    t.events = len(produced)
    t.events_not_stored = len(produced - all_stored - quarantined)
    rejected = {(d, s_) for d, s_ in gw.execute("SELECT device, seq FROM charge_rejects")}
    t.refused_by_bridge = len(scans & rejected)
    charge_of: dict[str, tuple[str, int]] = {}
    item_of: dict[tuple[str, int], str] = {}
    parked_keys: set[tuple[str, int]] = set()
    for cid, d, s_, item, status in gw.execute("SELECT charge_id, device, seq, item_key, status FROM charges"):
        charge_of[cid] = key = (d, s_)
        item_of[key] = item
        if status == "parked":
            parked_keys.add(key)
    t.parked = len(parked_keys)
    t.consumption_records = gw.execute("SELECT COUNT(*) FROM consumption").fetchone()[0]
    t.chain_breaks = gw.execute("SELECT COUNT(*) FROM chain_breaks").fetchone()[0]

    return_rows = _gateway_returns(gw)
    # a parked charge whose item came back is settled (voided: never booked, nothing to re-send)
    voided = {charge_of[str(r[4])] for r in return_rows if r[3] == "voided" and str(r[4]) in charge_of}
    t.parked = len(parked_keys - voided)
    gateway_credits = {str(r[0]) for r in gw.execute("SELECT charge_id FROM charges WHERE item_key LIKE 'credit:%'")}
    return_events = _stored_return_unused(gw)
    gw.close()

    his = _ro(his_db)
    his_rows = his.execute("SELECT txn_id FROM charges").fetchall()
    t.his_messages_received = his.execute("SELECT COUNT(*) FROM received").fetchone()[0]
    t.his_resends_recognised = his.execute(
        "SELECT COALESCE(SUM(times_received - 1), 0) FROM charges"
    ).fetchone()[0]
    has_credits = his.execute("SELECT 1 FROM sqlite_master WHERE name = 'credits'").fetchone()
    his_credits = his.execute("SELECT txn_id, original_txn_id FROM credits").fetchall() if has_credits else []
    t.credited = len(his_credits)
    his.close()
    _check_credits(t, return_rows, return_events, gateway_credits, his_credits, {str(r[0]) for r in his_rows})
    per_event: Counter[tuple[str, int]] = Counter()
    for (txn,) in his_rows:
        event_key = charge_of.get(txn)
        if event_key is None:
            t.invented += 1
        else:
            per_event[event_key] += 1
    charged = set(per_event)
    t.charged = len(scans & charged)
    t.duplicates = sum(n - 1 for n in per_event.values())
    # one item, one code: the same item serial charged twice under different events
    items = Counter(item_of[k] for k in charged if k in item_of)
    t.duplicates += sum(n - 1 for n in items.values())
    missing = (scans - stored) | (scans & stored) - charged - rejected - parked_keys
    t.lost = len(missing)
    t.lost_keys = sorted(missing)
    return t


def _gateway_returns(gw: Any) -> list[tuple[str, int, str, str, str | None, str | None, bool]]:
    """(device, seq, item key, outcome, charge id, credit id, a charge of the item by that device came first)."""
    try:
        rows = gw.execute(
            "SELECT r.device, r.seq, r.item_key, r.outcome, r.charge_id, r.credit_id, EXISTS (SELECT 1 FROM charges c "
            "WHERE c.device = r.device AND c.seq < r.seq AND c.status != 'parked' AND c.item_key = r.item_key) "
            "FROM returns r"
        ).fetchall()
    except sqlite3.OperationalError:  # a store from before returns existed
        return []
    return [(str(r[0]), int(r[1]), str(r[2]), str(r[3]), r[4], r[5], bool(r[6])) for r in rows]


def _stored_return_unused(gw: Any) -> set[tuple[str, int]]:
    return {(str(d), int(s_)) for d, s_ in gw.execute("SELECT device, seq FROM events WHERE kind = 'return_unused'")}


def _check_credits(
    t: Tally,
    returns: list[tuple[str, int, str, str, str | None, str | None, bool]],
    return_events: set[tuple[str, int]],
    gateway_credits: set[str],
    his_credits: list[tuple[str, str]],
    his_charges: set[str],
) -> None:
    """Every return settled once, every credit the gateway queued booked once at the HIS against its charge,
    no credit the gateway did not queue, and no charge the HIS holds for an item whose return was not credited."""
    t.returns_recorded = len(returns)
    t.returns_unsettled = len(return_events - {(d, s_) for d, s_, *_ in returns})
    booked = Counter(txn for txn, _ in his_credits)
    per_charge = Counter(original for _, original in his_credits)
    against = dict(his_credits)
    t.credits_duplicated = sum(n - 1 for n in booked.values()) + sum(n - 1 for n in per_charge.values())
    t.credits_invented = len(set(booked) - gateway_credits)
    for _device, _seq, _key, outcome, charge_id, credit_id, charged_before in returns:
        if outcome == "credited" and credit_id is not None:
            t.returns_credited += 1
            if credit_id not in booked:
                t.credits_lost += 1
            elif against[credit_id] != charge_id:
                t.credits_invented += 1
        elif (outcome == "voided" and charge_id in his_charges) or (outcome == "not_charged" and charged_before):
            t.returned_still_charged += 1


class ManagedProcess:
    """A child process with its output in a log file; can be killed hard and started again."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> ManagedProcess:
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = reaper.spawn(self.argv, stdout=logf, stderr=subprocess.STDOUT, env=self.env)
        logf.close()
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, *, grace_s: float = 30.0) -> None:
        """Send ``sig`` to its process group; SIGKILL the group if it has not ended within ``grace_s``."""
        if self.proc is not None:
            reaper.stop(self.proc, sig=sig, grace_s=grace_s)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class SpineHarness:
    """Runs the whole spine on this machine: Mosquitto, the simulated HIS, the gateway, handhelds."""

    def __init__(
        self,
        workdir: Path,
        *,
        site: str = "H1",
        seed: int = 1,
        his_backoff_max_s: float = 2.0,
        gateways: int = 1,
        lease_ttl_s: float = 3.0,
        his_http: bool = False,
        his_protocol: str = "mllp",
        store_url: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.site = site
        self.seed = seed
        self.his_backoff_max_s = his_backoff_max_s
        self.broker = MosquittoBroker(workdir=self.workdir / "broker")
        self.his_db = self.workdir / "his.db"
        self.his = SimulatedHis(self.his_db)
        # the same HIS's JSON door (same books): a gateway started with protocol "http" talks to it
        self.his_http = SimulatedHttpHis(self.workdir / "his-http.db", ledger=self.his) if his_http else None
        self.gateway_protocols: dict[int, str] = {}
        self.his_protocol = his_protocol  # of the gateways `start` starts
        # the gateways' store: a SQLite file in the work directory, or a PostgreSQL database (``store_url``)
        self.gateway_db: Path | str = store_url if store_url is not None else self.workdir / "gateway.db"
        self.device_dir = self.workdir / "devices"
        self.device_dir.mkdir(exist_ok=True)
        self.gateway_count = gateways
        self.lease_ttl_s = lease_ttl_s
        self.gateways: dict[int, ManagedProcess] = {}
        self.handhelds: dict[str, ManagedProcess] = {}
        self.cabinets: dict[str, ManagedProcess] = {}
        self.runtimes: dict[str, HandheldProcess] = {}  # spd-device run handhelds
        self.device_db_paths: dict[str, Path] = {}
        self.env = dict(os.environ)
        self.his_lanes: int | None = None  # the gateways' [his] lanes; None: the gateway's default
        # each gateway as three processes, one per part (`run --part`, gateway.parts): gateways[i] is the
        # ingest part, gateway_parts[i] the books and his parts
        self.parts = False
        self.gateway_parts: dict[int, list[ManagedProcess]] = {}

    # ------------------------------------------------------------ parts

    def start(self) -> SpineHarness:
        self.broker.start()
        return self.start_services()

    def start_services(self) -> SpineHarness:
        """Everything but the broker: the simulated HIS, the catalogue import, the gateways."""
        self.his.start()
        if self.his_http is not None:
            self.his_http.start()
        catalog_csv = self.workdir / "catalog.csv"
        catalog_csv.write_text(write_catalog_csv([i.row() for i in sim_catalog()]), encoding="utf-8")
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "catalog-import", "--db", str(self.gateway_db), str(catalog_csv)],
            check=True, capture_output=True, env=self.env,
        )
        for i in range(self.gateway_count):
            self.start_gateway(i, protocol=self.his_protocol)
        return self

    @property
    def gateway(self) -> ManagedProcess | None:
        return self.gateways.get(0)

    def start_gateway(self, instance: int = 0, *, protocol: str = "mllp") -> ManagedProcess:
        """Start (or restart) gateway ``instance``; with several, they share an MQTT 5 subscription and the store.

        ``protocol`` ``"http"`` points it at the HIS's JSON door (needs ``his_http=True``), else HL7 over MLLP.
        The gateway reads a configuration file, as the systemd unit starts it: the tested path is the deployed one.
        """
        if protocol == "http" and self.his_http is None:
            raise HarnessError("a gateway over HTTP needs SpineHarness(his_http=True)")
        conf = self.workdir / f"gateway-{instance}.toml"
        conf.write_text(self.gateway_toml(instance, protocol=protocol), encoding="utf-8")
        argv = [sys.executable, "-m", "gateway.cli", "-v", "run", "--config", str(conf)]
        if self.parts:
            others = self.gateway_parts.setdefault(instance, [
                ManagedProcess(f"gateway-{instance}-{part}", [*argv, "--part", part],
                               self.workdir / f"gateway-{instance}-{part}.log", self.env)
                for part in SPLIT_PARTS if part != "ingest"])
            for proc in others:
                proc.start()
            argv = [*argv, "--part", "ingest"]
        gw = self.gateways.get(instance)
        if gw is None:
            gw = ManagedProcess(f"gateway-{instance}", argv, self.workdir / f"gateway-{instance}.log", self.env)
            self.gateways[instance] = gw
        gw.argv = argv
        self.gateway_protocols[instance] = protocol
        return gw.start()

    def gateway_toml(self, instance: int = 0, *, protocol: str = "mllp") -> str:
        """The configuration file of gateway ``instance`` (the layout of deploy/examples/gateway.toml)."""
        share = '\nshare_group = "spd-gateways"' if self.gateway_count > 1 else ""
        if protocol == "http":
            assert self.his_http is not None
            his = f'[his]\nprotocol = "http"\nurl = {json.dumps(self.his_http.url)}\n'
        else:
            his = f'[his]\nprotocol = "mllp"\nhost = "127.0.0.1"\nport = {self.his.port}\n'
        return (  # a JSON string is a valid TOML basic string
            f"[store]\n{'url' if isinstance(self.gateway_db, str) else 'path'} = {json.dumps(str(self.gateway_db))}\n\n"
            f'[broker]\nhost = "127.0.0.1"\nport = {self.broker.port}\nclient_id = "spd-gateway-{instance}"{share}\n\n'
            f"{his}timeout_s = 2.0\nbackoff_max_s = {float(self.his_backoff_max_s)}\n"
            f"{f'lanes = {self.his_lanes}' if self.his_lanes else ''}\n\n"
            f"[lease]\nttl_s = {float(self.lease_ttl_s)}\n"
        )

    def kill_gateway(self, instance: int = 0) -> None:
        """SIGKILL gateway ``instance``: its one process, or each of its parts."""
        self.gateways[instance].kill()
        for proc in self.gateway_parts.get(instance, ()):
            proc.kill()

    def start_handheld(
        self,
        device: str,
        *,
        scans: int,
        rate: float,
        garbage_rate: float = 0.0,
        return_rate: float = 0.0,
        linger_s: float = 0.0,
        data_dir: Path | None = None,
        broker_port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> ManagedProcess:
        """Start (or restart, with the same arguments) a handheld process."""
        hh = self.handhelds.get(device)
        if hh is None:
            ddir = data_dir or self.device_dir
            self.device_db_paths[device] = ddir / f"{device}.db"
            argv = [
                sys.executable, "-m", "hw_sim.handheld", "--device", device, "--site", self.site,
                "--data-dir", str(ddir), "--broker-port", str(broker_port or self.broker.port),
                "--scans", str(scans), "--rate", str(rate), "--seed", str(self.seed),
                "--garbage-rate", str(garbage_rate), "--return-rate", str(return_rate), "--resend-after", "2",
                "--linger", str(linger_s), *extra_args,
            ]
            hh = ManagedProcess(device, argv, self.workdir / f"{device}.log", self.env)
            self.handhelds[device] = hh
        return hh.start()

    def start_cabinet(
        self,
        device: str,
        *,
        until_wall: float,
        data_dir: Path,
        world_dir: Path,
        broker_port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> ManagedProcess:
        """Start (or restart, with the same arguments) a cabinet process (:mod:`hw_sim.chaos_cabinet`)."""
        cab = self.cabinets.get(device)
        if cab is None:
            self.device_db_paths[device] = data_dir / f"{device}.db"
            argv = [
                sys.executable, "-m", "hw_sim.chaos_cabinet", "--device", device, "--site", self.site,
                "--data-dir", str(data_dir), "--world-dir", str(world_dir),
                "--broker-port", str(broker_port or self.broker.port), "--seed", str(self.seed),
                "--until", f"{until_wall:.3f}", *extra_args,
            ]
            cab = ManagedProcess(device, argv, self.workdir / f"{device}.log", self.env)
            self.cabinets[device] = cab
        return cab.start()

    def start_handheld_runtime(self, device: str, *, workdir: Path, tmux: bool = False) -> HandheldProcess:
        """The real ``spd-device run`` handheld process on a pty scanner (:mod:`hw_sim.nurse`); its log is tallied."""
        from hw_sim.nurse import HandheldProcess

        hh = HandheldProcess(workdir, device=device, site=self.site, broker_port=self.broker.port, tmux=tmux)
        self.device_db_paths[device] = hh.db_path
        self.runtimes[device] = hh
        return hh.start()

    def device_dbs(self) -> list[Path]:
        return [p for p in sorted(self.device_db_paths.values()) if p.exists()]

    # ------------------------------------------------------------ settling and counting

    def tally(self) -> Tally:
        return tally(self.device_dbs(), self.gateway_db, self.his_db)

    def wait_handhelds(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for hh in self.handhelds.values():
            left = max(1.0, deadline - time.monotonic())
            try:
                rc = hh.wait(timeout=left)
            except subprocess.TimeoutExpired as err:
                raise HarnessError(f"handheld {hh.name} did not finish: {hh.output()[-2000:]}") from err
            if rc != 0:
                raise HarnessError(f"handheld {hh.name} exited {rc}: {hh.output()[-2000:]}")

    def wait_settled(self, timeout_s: float = 120.0, *, quiet_s: float = 1.5) -> Tally:
        """Wait until every scan is stored and nothing waits in the outbox."""
        deadline = time.monotonic() + timeout_s
        last: Tally | None = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            t = self.tally()
            pending = self._pending_charges()
            key = (t.stored, t.charged, t.refused_by_bridge, t.parked, pending)
            if last is None or key != (last.stored, last.charged, last.refused_by_bridge, last.parked,
                                       getattr(self, "_last_pending", -1)):
                stable_since = time.monotonic()
            self._last_pending = pending
            last = t
            if t.stored == t.scans and pending == 0 and t.lost == 0 and time.monotonic() - stable_since >= quiet_s:
                return t
            time.sleep(0.25)
        assert last is not None
        return last

    def _pending_charges(self) -> int:
        if isinstance(self.gateway_db, Path) and not self.gateway_db.exists():
            return 0
        db = gateway_reader(self.gateway_db)
        try:
            return int(db.execute("SELECT COUNT(*) FROM charges WHERE status = 'pending'").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()

    def close(self) -> None:
        """End every process it started and the in-process HIS, each step even if an earlier one failed."""
        steps: list[tuple[str, Callable[[], object]]] = [
            *((f"device {name}", dev.kill) for name, dev in (*self.handhelds.items(), *self.cabinets.items())),
            *((f"handheld runtime {name}", rt.stop) for name, rt in self.runtimes.items()),
            *((f"gateway {i}", functools.partial(gw.kill, signal.SIGTERM, grace_s=15.0))
              for i, gw in self.gateways.items()),
            *((f"gateway {proc.name}", functools.partial(proc.kill, signal.SIGTERM, grace_s=15.0))
              for procs in self.gateway_parts.values() for proc in procs),
            *((("simulated HIS (HTTP)", self.his_http.stop),) if self.his_http is not None else ()),
            ("simulated HIS", self.his.stop),
            ("broker", self.broker.close),
        ]
        failed: list[BaseException] = []
        for what, step in steps:
            try:
                step()
            except Exception as err:  # go on: what is left must still be ended
                log.exception("harness: stopping %s failed", what)
                failed.append(err)
        if failed:
            raise HarnessError(f"{len(failed)} part(s) failed to stop cleanly: {failed[0]!r}") from failed[0]

    def __enter__(self) -> SpineHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary_json(t: Tally) -> str:
    return json.dumps(
        {"scans": t.scans, "stored": t.stored, "charged": t.charged, "lost": t.lost, "duplicates": t.duplicates,
         "invented": t.invented, "refused_at_scan": t.refused_at_scan, "refused_by_bridge": t.refused_by_bridge,
         "parked": t.parked, "his_resends_recognised": t.his_resends_recognised, "chain_breaks": t.chain_breaks},
        sort_keys=False,
    )
