"""Signed unlocks and desired-state pushes from the gateway to a running cabinet agent over a TLS broker with ACL."""

from __future__ import annotations

import datetime as dt
import json
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.catalog_cache import CatalogCache
from device.commands.run import run
from device.remote_wiring import catalog_cache_path, load_effective_config
from device.scan_policy import ConsumedSerials, ScanPolicy, ScanRefusal
from device.udi import parse_udi
from gateway.app import Gateway, GatewayConfig
from gateway.broker_acl import GATEWAY_CLI_IDENTITY, fleet_identity
from gateway.catalog import CatalogEntry, RecalledLot, import_catalog, import_recalled_lots
from gateway.catalog_export import build_device_catalog
from gateway.cli import build_parser
from gateway.commands import CommandSigner, generate_signing_key, public_key_pem
from gateway.fleet import Fleet
from gateway.pki import GATEWAY_IDENTITY, SiteCA
from hw_sim.pins import SimCabinetDoor, SimPin, SimPinFactory
from hw_sim.pty_serial import PtyPort
from hw_sim.rfid_reader import SimR2000Reader
from hw_sim.secure_broker import MqttProbe, SecureBroker
from hw_sim.udi_gen import make_gtin, make_udi
from spd_common.allowlist import Badge, Role, write_allowlist
from spd_common.command_schema import CommandKind, Component
from spd_common.mqtt import TlsSettings

from conftest import LogWatch, wait_for

SITE, DEPT = "H1", "ICU-2"
LOCK_PIN, DOOR_PIN = 5, 6
MAX_ENERGISED_S = 1.0
_rng = random.Random(11)
STENT, GAUZE, UNLISTED = make_gtin(_rng), make_gtin(_rng), make_gtin(_rng)
PATIENT = "ZY2026001234"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningCabinet:
    """``spd-device run`` in a thread on simulated pins, a pty badge reader and a simulated RFID reader."""

    def __init__(self, root: Path, broker: SecureBroker, name: str, command_key: Path) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.factory = SimPinFactory()
        self.door = SimCabinetDoor(self.factory, lock_pin=LOCK_PIN, sensor_pin=DOOR_PIN)
        self.reader = SimR2000Reader(tags_per_s=3000)
        self.reader.add_tag("3035A875440B5E00000F4247", antennas=(1,))
        self.scanner = PtyPort(name=f"ttyBadge{name}")
        self.allowlist = self.dir / "allow.json"
        write_allowlist(self.allowlist, [Badge("04A1B2C3", "N0001", Role.NURSE)])
        tls = broker.client_tls(name)
        self.config = self.dir / "cabinet.toml"
        self.config.write_text(f"""
[device]
id = "{name}"
site = "{SITE}"
data_dir = "data"
[broker]
host = "{broker.host}"
port = {broker.port}
[broker.tls]
ca_file = "{tls.ca_file}"
cert_file = "{tls.cert_file}"
key_file = "{tls.key_file}"
[remote]
command_key_file = "{command_key}"
[cabinet]
dept = "{DEPT}"
pin_factory = "sim"
allowlist_file = "allow.json"
unlock_s = 0.3
[[cabinet.doors]]
name = "door"
lock_pin = {LOCK_PIN}
door_pin = {DOOR_PIN}
max_energised_s = {MAX_ENERGISED_S}
debounce_s = 0.01
[cabinet.reader]
url = "{self.reader.url}"
timeout_s = 0.3
poll_s = 0.5
[cabinet.scanners]
badge_port = "{self.scanner.url}"
""", encoding="utf-8")
        self.data = self.dir / "data"
        self.catalog_cache = catalog_cache_path(load_effective_config(self.config).config)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=run, args=(self.config,),
                                       kwargs={"stop": self.stop_event, "pin_factory": self.factory}, daemon=True)

    @property
    def lock(self) -> SimPin:
        return self.factory.pin(LOCK_PIN)

    def start(self) -> RunningCabinet:
        with LogWatch("device.hal.scanner") as scanners:
            self.thread.start()
            wait_for(lambda: (self.data / "inventory.json").exists(), message="the baseline count")
            scanners.wait(f"scanner {self.scanner.url} online")  # the badge reader has opened its port
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        assert not self.thread.is_alive()
        self.scanner.close()
        self.reader.close()

    def events(self, kind: str, *, after: int = 0) -> list[dict[str, Any]]:
        db = sqlite3.connect(f"file:{self.data / 'events.db'}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT body FROM events WHERE kind = ? AND seq > ? ORDER BY seq",
                              (kind, after)).fetchall()
        finally:
            db.close()
        return [json.loads(r[0]) for r in rows]

    def mark(self) -> int:
        """The last event's sequence: pass it as ``after`` to see only what happens from now on."""
        db = sqlite3.connect(f"file:{self.data / 'events.db'}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        finally:
            db.close()

    def wait_events(self, kind: str, pred: Callable[[dict[str, Any]], bool], what: str, *, after: int,
                    n: int = 1) -> list[dict[str, Any]]:
        def matching() -> list[dict[str, Any]] | None:
            found = [b for b in self.events(kind, after=after) if pred(b)]
            return found if len(found) >= n else None

        return list(wait_for(matching, message=what))

    def badge(self, text: str) -> None:
        self.scanner.write(text.encode() + b"\r")


@dataclass
class Site:
    broker: SecureBroker
    gateway: Gateway
    fleet: Fleet
    key: Ed25519PrivateKey
    command_key: Path
    gw_tls: TlsSettings
    db: Path
    cab: RunningCabinet
    root: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("remote")
    ca = SiteCA.create(root / "ca", site=SITE)
    broker = SecureBroker(ca, sites=(SITE,), workdir=root / "broker").start()
    key = generate_signing_key(root / "command-signing.key")
    command_key = root / "command-key.pem"
    command_key.write_bytes(public_key_pem(key))
    gw_tls = broker.gateway_tls(GATEWAY_CLI_IDENTITY)  # the tests' own probes: the gateway's connections have theirs
    db = root / "gateway.db"
    gateway = Gateway(GatewayConfig(db_path=db, broker_host=broker.host, broker_port=broker.port,
                                    tls=broker.gateway_tls(),
                                    fleet_tls=broker.gateway_tls(fleet_identity(GATEWAY_IDENTITY)),
                                    signing_key=root / "command-signing.key", his_port=free_port())).start()
    assert gateway.fleet_link is not None and gateway.fleet_link.wait_connected()
    fleet = gateway.fleet
    assert fleet is not None
    cab = RunningCabinet(root, broker, "CAB01", command_key).start()
    wait_for(lambda: (SITE, "CAB01") in fleet.known(), message="CAB01 reporting its state")
    yield Site(broker, gateway, fleet, key, command_key, gw_tls, db, cab, root)
    cab.stop()
    gateway.stop()
    broker.close()
    ca.close()


def high_spans(pin: SimPin, since: float) -> list[tuple[float, float | None]]:
    """(energised at, released at) of the relay since ``since``."""
    spans: list[tuple[float, float | None]] = []
    for when, level in pin.timeline:
        if when < since:
            continue
        if level:
            spans.append((when, None))
        elif spans and spans[-1][1] is None:
            spans[-1] = (spans[-1][0], when)
    return spans


def devices_listing(db: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    a = build_parser().parse_args(["devices", "--db", str(db)])
    capsys.readouterr()
    assert a.func(a) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    return {line.split()[0]: line.split() for line in lines}


def test_gateway_unlock_energises_the_relay_and_the_door_opens_authorised(site: Site) -> None:
    cab = site.cab
    t0, m = cab.factory.clock.now(), cab.mark()
    seq = site.fleet.unlock(SITE, "CAB01", seconds=30, requested_by="nurse.li")
    wait_for(lambda: cab.lock.level, message="the lock relay energised")
    assert cab.door.hand.try_open()
    cab.wait_events("access", lambda b: b.get("result") == "door_opened", "door opened", after=m)
    before = (cab.data / "inventory.json").stat().st_mtime_ns
    cab.door.close()
    cab.wait_events("access", lambda b: b.get("result") == "door_closed", "door closed", after=m)
    access = cab.events("access", after=m)
    session = access[1].pop("session")
    assert access[1] == {"result": "granted", "dept": DEPT, "via": "remote", "seq": seq, "user": "nurse.li",
                         "seconds": MAX_ENERGISED_S}
    assert access[0] == {"type": "remote_command", "cmd": "unlock", "seq": seq, "by": "nurse.li",
                         "outcome": "accepted"}
    assert [(b["result"], b["session"], b["user"]) for b in access[2:]] == [
        ("door_opened", session, "nurse.li"), ("door_closed", session, "nurse.li")]
    assert cab.events("alarm", after=m) == []  # no door_forced
    spans = high_spans(cab.lock, t0)
    assert len(spans) == 1 and spans[0][1] is not None  # relocked as soon as the door opened
    wait_for(lambda: (cab.data / "inventory.json").stat().st_mtime_ns != before, message="the count after closing")


def test_unlock_longer_than_the_locks_allow_is_capped_at_their_max_energised_time(site: Site) -> None:
    cab = site.cab
    t0, m = cab.factory.clock.now(), cab.mark()
    seq = site.fleet.unlock(SITE, "CAB01", seconds=60, requested_by="nurse.li")
    cab.wait_events("access", lambda b: b.get("result") == "expired", "the unlock to run out", after=m)
    spans = high_spans(cab.lock, t0)
    assert len(spans) == 1
    start, end = spans[0]
    assert end is not None and MAX_ENERGISED_S - 0.05 <= end - start <= MAX_ENERGISED_S + 0.3
    granted = [b for b in cab.events("access", after=m) if b.get("result") == "granted"]
    assert [(b["seq"], b["seconds"]) for b in granted] == [(seq, MAX_ENERGISED_S)]
    assert cab.events("access", after=m)[-1]["reason"] == "door_not_opened"


def test_forged_expired_and_misaddressed_unlocks_leave_the_relay_alone_and_are_recorded(site: Site) -> None:
    cab = site.cab
    probe = MqttProbe(site.broker.host, site.broker.port, tls=site.gw_tls, client_id="gw-probe")
    assert probe.connected
    t0, m = cab.factory.clock.now(), cab.mark()
    genuine, rogue = CommandSigner(site.key), CommandSigner(Ed25519PrivateKey.generate())
    seq = 1_000_000
    payloads = [
        rogue.sign(CommandKind.UNLOCK, device="CAB01", site=SITE, seq=seq, requested_by="intruder"),
        genuine.sign(CommandKind.UNLOCK, device="CAB01", site=SITE, seq=seq, requested_by="nurse.li",
                     lifetime_ms=60_000, now_ms=int(time.time() * 1000) - 300_000),
        genuine.sign(CommandKind.UNLOCK, device="CAB02", site=SITE, seq=seq, requested_by="nurse.li"),
    ]
    for p in payloads:
        assert not probe.publish("spd/v1/H1/CAB01/cmd", p).is_failure
    probe.close()
    refused = cab.wait_events("alarm", lambda b: True, "three refusals", after=m, n=3)
    assert [(b["type"], b["reason"], b["cmd"], b["seq"]) for b in refused] == [
        ("command_refused", "bad_signature", "unlock", seq), ("command_refused", "expired", "unlock", seq),
        ("command_refused", "wrong_device", "unlock", seq)]
    time.sleep(0.3)
    assert high_spans(cab.lock, t0) == []
    assert cab.events("access", after=m) == []
    stored = wait_for(lambda: (lambda rows: rows if len(rows) >= 3 else None)(site.gateway.store._engine.query(
        "SELECT body FROM events WHERE device = 'CAB01' AND kind = 'alarm' AND seq > ? ORDER BY seq", (m,))),
        message="the refusals delivered to the gateway")
    assert [json.loads(r[0])["reason"] for r in stored] == ["bad_signature", "expired", "wrong_device"]


def column(listing: dict[str, list[str]], device: str, component: str) -> str:
    return next(c for c in listing[device] if c.startswith(f"{component}:"))


def test_allowlist_push_admits_a_new_badge_and_refuses_a_removed_one(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    cab = site.cab
    m = cab.mark()
    pushed = {"badges": [{"badge": "04b0b0b0", "user": "N0009", "role": "nurse"}]}
    version = site.fleet.push(Component.ALLOWLIST, pushed, requested_by="head.nurse",
                              devices=[(SITE, "CAB01")])["CAB01"]
    wait_for(lambda: site.fleet.applied("CAB01").get("allowlist") == version, message="allow-list applied and reported")
    assert json.loads(cab.allowlist.read_text(encoding="utf-8")) == {
        "version": version, "badges": [{"badge": "04B0B0B0", "user": "N0009", "role": "nurse"}]}
    cab.badge("04B0B0B0")
    cab.wait_events("access", lambda b: b.get("result") == "expired", "the new badge's unlock to run out", after=m)
    cab.badge("04A1B2C3")
    cab.wait_events("access", lambda b: b.get("result") == "refused", "the removed badge refused", after=m)
    access = [b for b in cab.events("access", after=m) if "result" in b]
    assert [(b["result"], b.get("user"), b.get("reason"), b.get("badge")) for b in access] == [
        ("granted", "N0009", None, "04B0B0B0"), ("expired", "N0009", "door_not_opened", None),
        ("refused", None, "unknown_badge", "04A1B2C3")]
    assert column(devices_listing(site.db, capsys), "CAB01", "allowlist") == f"allowlist:{version}/{version}"


def test_a_bad_allowlist_is_refused_and_the_list_in_force_stays(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    cab = site.cab
    m = cab.mark()
    before = cab.allowlist.read_bytes()
    applied = site.fleet.applied("CAB01").get("allowlist", 0)
    in_force = json.loads(before)["badges"][0]["badge"]
    bad = {"badges": [{"badge": "04C0C0C0", "user": "X0001", "role": "surgeon"}]}
    version = site.fleet.push(Component.ALLOWLIST, bad, requested_by="head.nurse", devices=[(SITE, "CAB01")])["CAB01"]
    alarm = cab.wait_events("alarm", lambda b: b.get("version") == version, "the refusal recorded", after=m)[0]
    assert {k: alarm[k] for k in ("type", "component", "version", "reason")} == {
        "type": "component_refused", "component": "allowlist", "version": version, "reason": "bad_entry"}
    assert "role 'surgeon' is not one of nurse, restocker, technician" in alarm["detail"]
    assert cab.allowlist.read_bytes() == before
    time.sleep(0.5)
    assert site.fleet.applied("CAB01").get("allowlist", 0) == applied
    assert column(devices_listing(site.db, capsys), "CAB01", "allowlist") == f"allowlist:{applied}/{version}"
    cab.badge(in_force)  # the list in force still admits its badges
    cab.wait_events("access", lambda b: b.get("result") == "expired", "the badge's unlock to run out", after=m)
    assert [b["result"] for b in cab.events("access", after=m) if "result" in b] == ["granted", "expired"]
    m = cab.mark()  # the bad list is still desired: the next desired state refuses it again, and says so
    site.fleet.push(Component.CONFIG, {"cabinet": {"unlock_s": 0.3}}, requested_by="ops", devices=[(SITE, "CAB01")])
    again = cab.wait_events("alarm", lambda b: True, "the refusal repeated", after=m)
    assert [(b["component"], b["version"], b["reason"]) for b in again] == [("allowlist", version, "bad_entry")]


def test_catalog_push_lands_in_the_catalog_cache_and_changes_the_scan_verdict(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cab = site.cab
    store = site.gateway.store
    import_catalog(store, [
        CatalogEntry(STENT, "HC00001", "33100001", "Coronary stent", "3.0x18mm", "Maker", 589000, True, True),
        CatalogEntry(GAUZE, "HC00007", "33100007", "Haemostatic gauze", "5x7.5cm", "Maker", 21800, True, False)])
    import_recalled_lots(store, [RecalledLot(STENT, "L9999", "sterility")])
    doc = build_device_catalog(store, dept=DEPT)
    expiry = dt.date.today() + dt.timedelta(days=365)

    def verdict(gtin: str, lot: str) -> ScanRefusal | None:
        policy = ScanPolicy(CatalogCache(cab.catalog_cache), ConsumedSerials(tmp_path / "consumed.db"))
        refusal = policy.check(admission=PATIENT, dept=DEPT,
                               udi=parse_udi(make_udi(gtin=gtin, lot=lot, serial="SN1", expiry=expiry)))
        policy.consumed.close()
        return refusal.reason if refusal else None

    assert [verdict(UNLISTED, "L1"), verdict(STENT, "L9999")] == [None, None]  # no catalog cached yet
    version = site.fleet.push(Component.CATALOG, doc, requested_by="spd.desk", devices=[(SITE, "CAB01")])["CAB01"]
    wait_for(lambda: site.fleet.applied("CAB01").get("catalog") == version, message="catalog applied and reported")
    assert CatalogCache(cab.catalog_cache).digest == doc["digest"]
    assert [verdict(UNLISTED, "L1"), verdict(STENT, "L9999"), verdict(STENT, "L1")] == [
        ScanRefusal.UNKNOWN_ITEM, ScanRefusal.RECALLED_LOT, None]
    assert column(devices_listing(site.db, capsys), "CAB01", "catalog") == f"catalog:{version}/{version}"


def test_config_push_is_stored_reported_as_restart_required_and_used_at_the_next_start(site: Site) -> None:
    cab = site.cab
    m = cab.mark()
    probe = MqttProbe(site.broker.host, site.broker.port, tls=site.gw_tls, client_id="gw-state-probe")
    assert probe.subscribe("spd/v1/H1/CAB01/state").value == 1

    def state() -> dict[str, Any]:
        msgs = probe.messages
        return dict(json.loads(msgs[-1][1])["extra"]) if msgs else {}

    version = site.fleet.push(Component.CONFIG, {"cabinet": {"unlock_s": 0.4}}, requested_by="ops",
                              devices=[(SITE, "CAB01")])["CAB01"]
    extra = wait_for(lambda: state().get("applied", {}).get("config") == version and state(), message="config applied")
    assert extra["restart_required"] is True
    effective = load_effective_config(cab.config)
    assert (effective.config_version, effective.config.extra["cabinet"].unlock_s) == (version, 0.4)

    site.fleet.push(Component.CONFIG, {"broker": {"port": 1}}, requested_by="ops", devices=[(SITE, "CAB01")])
    alarm = cab.wait_events("alarm", lambda b: b.get("component") == "config", "protected section refused",
                            after=m)[0]
    assert (alarm["reason"], alarm["detail"]) == ("protected_section", "a pushed config may not change [broker]")
    assert load_effective_config(cab.config).config_version == version
    probe.close()


def test_a_cabinet_offline_during_the_pushes_catches_up_when_it_connects(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.fleet.register(SITE, "CAB02")
    target = [(SITE, "CAB02")]
    site.fleet.push(Component.ALLOWLIST, [{"badge": "04D0D0D0", "user": "N0042", "role": "nurse"}],
                    requested_by="head.nurse", devices=target)
    doc = build_device_catalog(site.gateway.store, dept=DEPT)
    site.fleet.push(Component.CATALOG, doc, requested_by="spd.desk", devices=target)
    cab2 = RunningCabinet(site.root, site.broker, "CAB02", site.command_key).start()
    try:
        wait_for(lambda: site.fleet.applied("CAB02") == {"allowlist": 1, "catalog": 1},
                 message="applied after connecting")
        assert json.loads(cab2.allowlist.read_text(encoding="utf-8"))["badges"] == [
            {"badge": "04D0D0D0", "user": "N0042", "role": "nurse"}]
        assert CatalogCache(cab2.catalog_cache).digest == doc["digest"]
        accepted = [b for b in cab2.events("access") if b.get("type") == "remote_command"]
        assert [(b["cmd"], b["outcome"]) for b in accepted] == [("desired_state", "accepted")]  # one retained push
        m = cab2.mark()
        cab2.badge("04D0D0D0")
        granted = cab2.wait_events("access", lambda b: b.get("result") == "granted", "the pushed badge", after=m)
        assert granted[0]["user"] == "N0042"
        listing = devices_listing(site.db, capsys)
        assert (listing["CAB02"][2], column(listing, "CAB02", "allowlist"), column(listing, "CAB02", "catalog")) \
            == ("online", "allowlist:1/1", "catalog:1/1")
        probe = MqttProbe(site.broker.host, site.broker.port, tls=site.gw_tls, client_id="gw-cab02-probe")
        probe.subscribe("spd/v1/H1/CAB02/state")
        retained = probe.wait_messages(1)[0]
        probe.close()
        assert (retained[2], json.loads(retained[1])["extra"]) == (
            True, {"applied": {"allowlist": 1, "catalog": 1}, "restart_required": False})
    finally:
        cab2.stop()
        site.fleet.publish("spd/v1/H1/CAB02/cmd", b"", True)
