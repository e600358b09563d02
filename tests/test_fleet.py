"""Fleet: versioned pushes as retained signed commands over TLS, applied versions, the device listing, audit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.eventlog import EventLog
from device.remote import CommandVerifier, DesiredState, RemoteCommands, ReplayGuard
from device.sync import DeviceSync
from gateway.audit import AuditAction, AuditLog, chain_break_alarms
from gateway.commands import CommandSigner
from gateway.fleet import DeviceRow, Fleet, FleetLink, format_devices
from gateway.ingest import IngestService
from gateway.pki import SiteCA
from gateway.store import GatewayStore
from hw_sim.secure_broker import SecureBroker
from spd_common.command_schema import CommandKind, Component
from spd_common.mqtt import TlsSettings
from spd_common.wire import Channel, DeviceState, DeviceStatus, topic

from conftest import wait_for

SITE = "H1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    d = tmp_path_factory.mktemp("fleet")
    ca = SiteCA.create(d / "ca", site=SITE)
    b = SecureBroker(ca, sites=(SITE,), workdir=d / "broker").start()
    yield b
    b.close()
    ca.close()


class Cabinet:
    def __init__(self, tmp: Path, broker: SecureBroker, name: str, key: Ed25519PrivateKey, tls: TlsSettings) -> None:
        self.log = EventLog(tmp / f"{name}.db", device=name)
        self.replay = ReplayGuard(tmp / f"{name}-cmd.db")
        self.desired = DesiredState(tmp / f"{name}-desired")
        self.remote = RemoteCommands(CommandVerifier(key.public_key(), device=name, site=SITE), self.replay,
                                     self.log, handlers={CommandKind.DESIRED_STATE: self.desired.apply})
        self.sync = DeviceSync(self.log, site=SITE, host=broker.host, port=broker.port, tls=tls, state_every_s=0.3,
                               on_command=lambda p, r: self.remote.handle(p, retained=r),
                               state_extra=lambda: {"applied": self.desired.applied()})

    def start(self) -> Cabinet:
        self.sync.start()
        return self

    def stop(self) -> None:
        self.sync.stop()
        self.replay.close()
        self.log.close()


@pytest.fixture
def gateway(tmp_path: Path, broker: SecureBroker) -> Iterator[tuple[Fleet, FleetLink, Ed25519PrivateKey]]:
    store = GatewayStore(tmp_path / "gw.db")
    key = Ed25519PrivateKey.generate()
    link = FleetLink(store, host=broker.host, port=broker.port, tls=broker.gateway_tls(),
                     client_id=f"fleet-{time.monotonic_ns()}")
    fleet = Fleet(store, CommandSigner(key), link.publish)
    link.fleet = fleet
    link.start()
    assert link.wait_connected()
    yield fleet, link, key
    link.stop()
    store.close()


def test_pushed_versions_are_applied_and_reported_back(tmp_path: Path, broker: SecureBroker,
                                                       gateway: tuple[Fleet, FleetLink, Ed25519PrivateKey]) -> None:
    fleet, _, key = gateway
    cab = Cabinet(tmp_path, broker, "CAB01", key, broker.client_tls("CAB01")).start()
    wait_for(lambda: fleet.known() == [(SITE, "CAB01")], message="device known")
    assert fleet.push(Component.ALLOWLIST, [{"badge": "B1", "role": "nurse"}], requested_by="head.nurse") \
        == {"CAB01": 1}
    assert fleet.push(Component.ALLOWLIST, [{"badge": "B2", "role": "nurse"}], requested_by="head.nurse") \
        == {"CAB01": 2}
    wait_for(lambda: fleet.applied("CAB01") == {"allowlist": 2}, message="applied v2 reported")
    assert cab.desired.document(Component.ALLOWLIST) == [{"badge": "B2", "role": "nurse"}]
    row = fleet.devices()[0]
    assert (row.device, row.status, row.desired, row.applied, row.in_sync) == \
        ("CAB01", "online", {"allowlist": 2}, {"allowlist": 2}, True)
    sent = [(e.actor, e.action, e.device, e.detail["seq"]) for e in fleet.audit.entries()]
    assert sent == [("head.nurse", "command_sent", "CAB01", 2), ("head.nurse", "command_sent", "CAB01", 1)]
    cab.stop()
    wait_for(lambda: fleet.devices()[0].status == "offline", message="offline after the device stopped")


def test_a_device_offline_during_the_push_gets_it_when_it_reconnects(
        tmp_path: Path, broker: SecureBroker, gateway: tuple[Fleet, FleetLink, Ed25519PrivateKey]) -> None:
    fleet, _, key = gateway
    fleet.register(SITE, "CAB02")
    fleet.push(Component.CATALOG, {"items": ["06901234567892"]}, requested_by="ops", devices=[(SITE, "CAB02")])
    fleet.push(Component.CONFIG, {"unlock_s": 8}, requested_by="ops", devices=[(SITE, "CAB02")])
    cab = Cabinet(tmp_path, broker, "CAB02", key, broker.client_tls("CAB02")).start()
    wait_for(lambda: fleet.applied("CAB02") == {"catalog": 1, "config": 1}, message="applied after reconnect")
    assert cab.remote.stats.accepted == 1  # one retained desired state carried both components
    cab.stop()
    fleet.publish("spd/v1/H1/CAB02/cmd", b"", True)


def test_an_unlock_is_signed_short_lived_and_audited(gateway: tuple[Fleet, FleetLink, Ed25519PrivateKey]) -> None:
    fleet, _, _ = gateway
    fleet.register(SITE, "CAB03")
    assert fleet.unlock(SITE, "CAB03", seconds=5, requested_by="nurse.wang") == 1
    assert fleet.unlock(SITE, "CAB03", seconds=5, requested_by="nurse.wang") == 2
    e = fleet.audit.entries(device="CAB03")[0]
    assert (e.actor, e.detail) == ("nurse.wang", {"cmd": "unlock", "seconds": 5, "seq": 2})


def test_listing_shows_status_last_seen_version_backlog_and_alarms(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    fleet = Fleet(store, CommandSigner(Ed25519PrivateKey.generate()), lambda t, p, r: None)
    store.update_device_state(SITE, DeviceState("CAB07", DeviceStatus.ONLINE, backlog=12, version="0.1.0"))
    store.update_device_state(SITE, DeviceState("CAB08", DeviceStatus.OFFLINE, backlog=3, version="0.1.0"))
    with store._engine.transaction() as db:
        db.executemany("INSERT INTO chain_breaks (device, seq, detail, detected_at) VALUES (?, ?, ?, ?)",
                       [("CAB07", 40, "prev does not match the stored predecessor", 1.0),
                        ("CAB07", 41, "prev does not match the stored predecessor", 1.0),
                        ("CAB07", 42, "hash does not match content", 1.0),
                        ("CAB07", 50, "prev does not match the stored predecessor", 2.0)])
    alarms = [str(a) for a in chain_break_alarms(store)]
    assert alarms == [
        "hash chain break on CAB07, seq 40..42: prev does not match the stored predecessor; "
        "hash does not match content",
        "hash chain break on CAB07, seq 50: prev does not match the stored predecessor"]
    now = time.time()
    rows = fleet.devices(now=now)
    assert [(r.device, r.status, r.backlog, r.alarms) for r in rows] == [("CAB07", "online", 12, 2),
                                                                       ("CAB08", "offline", 3, 0)]
    later = fleet.devices(now=now + 3600)
    assert [r.status for r in later] == ["offline", "offline"]  # online but silent for an hour
    text = format_devices([DeviceRow("CAB07", "H1", "online", now - 5, "0.1.0", 12, 2, {"catalog": 3},
                                     {"catalog": 2})], now=now).splitlines()
    assert text[1].split() == ["CAB07", "H1", "online", "5s", "ago", "0.1.0", "12", "2", "catalog:2/3"]
    AuditLog(store).record("ops", AuditAction.CERT_REVOKED, device="CAB08", serial="ab12")
    with pytest.raises(Exception, match="append-only"), store._engine.transaction() as db:
        db.execute("DELETE FROM audit_log")
    store.close()


def test_a_state_the_broker_replays_at_subscription_does_not_make_the_device_seen_now(tmp_path: Path) -> None:
    """After a gateway restart the broker replays every device's retained state (often its will: offline)."""
    from spd_common.wire import encode_state

    store = GatewayStore(tmp_path / "gw.db")
    ingest = IngestService(store, host="127.0.0.1", port=1, publish=lambda t, p: None)  # never connected
    state = encode_state(DeviceState("CAB07", DeviceStatus.OFFLINE, backlog=0, version="0.1.0", ts_ms=1_000_000))
    ingest.handle(topic(SITE, "CAB07", Channel.STATE), state, retained=True)  # never seen: the device's own time
    assert [(d, s, seen) for d, _site, seen, s, *_ in store.devices.states()] == [("CAB07", "offline", 1000.0)]
    ingest.handle(topic(SITE, "CAB07", Channel.STATE),
                  encode_state(DeviceState("CAB07", DeviceStatus.ONLINE, ts_ms=2_000_000)))  # live: seen now
    seen_live = store.devices.states()[0][2]
    assert seen_live is not None and seen_live > 1_700_000_000
    ingest.handle(topic(SITE, "CAB07", Channel.STATE), state, retained=True)  # replayed again after a restart
    assert [(d, s, seen) for d, _site, seen, s, *_ in store.devices.states()] == [("CAB07", "offline", seen_live)]
    store.close()
