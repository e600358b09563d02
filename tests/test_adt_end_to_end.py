"""ADT end to end: the HIS admits and discharges over MLLP, the gateway keeps the census and pushes the catalog
document (signed, over the TLS broker) to a handheld, whose scans then follow the census and the grace period."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device.catalog_cache import CatalogCache, PatientStatus
from device.eventlog import EventLog
from device.handheld import Handheld
from device.remote import CommandVerifier, DesiredState, RemoteCommands, ReplayGuard, SignedCommand, load_public_key
from device.scan_policy import ConsumedSerials, ScanPolicy
from device.sync import DeviceSync
from gateway.app import Gateway, GatewayConfig
from gateway.broker_acl import fleet_identity
from gateway.catalog import CatalogEntry, import_catalog
from gateway.census import mark_census_complete
from gateway.commands import generate_signing_key, public_key_pem
from gateway.pki import GATEWAY_IDENTITY, SiteCA
from hw_sim.adt import AdtSender, Patient, adt_message
from hw_sim.secure_broker import SecureBroker
from hw_sim.udi_gen import make_gtin, make_udi
from spd_common.command_schema import CommandKind, Component

from conftest import wait_for

SITE, DEPT, HANDHELD = "H1", "CARD", "HH01"
ADMITTED, LONG_GONE, JUST_LEFT = "ZY2026001234", "ZY2026000042", "ZY2026000043"
GRACE_S = 6 * 3600.0
GAUZE = make_gtin(random.Random(5))


class SimHandheldDevice:
    """A handheld's device side: event log and sync over TLS, signed desired state into its catalog cache."""

    def __init__(self, root: Path, broker: SecureBroker, command_key: Path) -> None:
        d = root / HANDHELD
        d.mkdir()
        self.log = EventLog(d / "events.db", device=HANDHELD)
        self.cache = CatalogCache(d / "catalog-cache.json")
        self.desired = DesiredState(d / "desired")
        self.replay = ReplayGuard(d / "commands.db")
        self.remote = RemoteCommands(CommandVerifier(load_public_key(command_key), device=HANDHELD, site=SITE),
                                     self.replay, self.log, handlers={CommandKind.DESIRED_STATE: self._desired})
        self.consumed = ConsumedSerials(d / "events.db")
        self.handheld = Handheld(self.log, operator="N0001", dept=DEPT,
                                 policy=ScanPolicy(self.cache, self.consumed))
        self.sync = DeviceSync(self.log, site=SITE, host=broker.host, port=broker.port,
                               tls=broker.client_tls(HANDHELD), state_every_s=0.3,
                               on_command=lambda p, r: self.remote.handle(p, retained=r),
                               state_extra=lambda: {"applied": self.desired.applied()})

    def _desired(self, cmd: SignedCommand) -> None:
        entry = cmd.args["components"].get(Component.CATALOG.value)
        if entry is not None and entry["version"] > self.desired.applied().get(Component.CATALOG.value, 0):
            self.cache.apply(entry["doc"])  # validated whole before it replaces the cached copy
        self.desired.apply(cmd)

    def scan(self, admission: str, serial: str) -> tuple[bool, str, str]:
        code = make_udi(gtin=GAUZE, lot="L1", serial=serial, expiry=dt.date.today() + dt.timedelta(days=200))
        out = self.handheld.scan_pair(admission, code)
        return out.accepted, out.reason, out.detail

    def stop(self) -> None:
        self.sync.stop()
        self.replay.close()
        self.consumed.close()
        self.log.close()


@dataclass
class Site:
    gateway: Gateway
    handheld: SimHandheldDevice

    def adt(self, trigger: str, patient: Patient, when: dt.datetime | None = None) -> str:
        assert self.gateway.adt is not None
        with AdtSender("127.0.0.1", self.gateway.adt.port) as sender:
            ack = sender.send(adt_message(trigger, patient, when=when))
        return ack.code.value


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = SiteCA.create(tmp_path / "ca", site=SITE)
    broker = SecureBroker(ca, sites=(SITE,), workdir=tmp_path / "broker").start()
    key = generate_signing_key(tmp_path / "command-signing.key")
    command_key = tmp_path / "command-key.pem"
    command_key.write_bytes(public_key_pem(key))
    gateway = Gateway(GatewayConfig(db_path=tmp_path / "gateway.db", broker_host=broker.host, broker_port=broker.port,
                                    tls=broker.gateway_tls(),
                                    fleet_tls=broker.gateway_tls(fleet_identity(GATEWAY_IDENTITY)),
                                    signing_key=tmp_path / "command-signing.key",
                                    his_port=1, his_backoff_max_s=60.0, adt_port=0, discharge_grace_s=GRACE_S))
    import_catalog(gateway.store, [CatalogEntry(GAUZE, "HC00007", "33100007", "Haemostatic gauze", "5x7.5cm", "Maker",
                                                21800, True, False)])
    mark_census_complete(gateway.store, by="go-live")  # the HIS's initial load is done (here: nobody in house)
    assert gateway.publisher is not None
    gateway.publisher.min_interval_s = 0.0  # the site default (one push a minute at most) would only slow the test
    gateway.start()
    assert gateway.fleet_link is not None and gateway.fleet_link.wait_connected()
    handheld = SimHandheldDevice(tmp_path, broker, command_key)
    handheld.sync.start()
    fleet = gateway.fleet
    assert fleet is not None
    wait_for(lambda: (SITE, HANDHELD) in fleet.known(), message="the handheld reporting its state", timeout=20)
    yield Site(gateway, handheld)
    handheld.stop()
    gateway.stop()
    broker.close()
    ca.close()


def test_an_admission_over_adt_reaches_the_handheld_and_discharges_follow_the_grace_period(site: Site) -> None:
    hh = site.handheld
    assert hh.cache.patient_status(ADMITTED) is PatientStatus.NO_CENSUS
    assert site.adt("A01", Patient(ADMITTED, "Zhang^San", ward="5A", bed="12", dept=DEPT)) == "AA"
    wait_for(lambda: hh.cache.patient_status(ADMITTED) is PatientStatus.IN_HOUSE,
             message="the admission on the handheld", timeout=20)
    info = hh.cache.patient(ADMITTED)
    assert info is not None and (info.initials, info.ward, info.bed, info.dept) == ("Z.S.", "5A", "12", DEPT)
    assert hh.scan(ADMITTED, "S1")[:2] == (True, "")
    assert hh.scan(LONG_GONE, "S2")[:2] == (False, "patient_unknown")  # a census is cached, and lacks them

    fleet = site.gateway.fleet
    assert fleet is not None
    pushed = fleet.desired(HANDHELD)[Component.CATALOG.value]
    wait_for(lambda: fleet.applied(HANDHELD).get(Component.CATALOG.value) == pushed,
             message="the handheld reporting it", timeout=20)

    now = dt.datetime.now().replace(microsecond=0)
    for admission in (LONG_GONE, JUST_LEFT):
        assert site.adt("A01", Patient(admission, "Li^Si", ward="7B"), when=now - dt.timedelta(days=5)) == "AA"
    assert site.adt("A03", Patient(LONG_GONE), when=now - dt.timedelta(seconds=GRACE_S + 3600)) == "AA"
    assert site.adt("A03", Patient(JUST_LEFT), when=now - dt.timedelta(hours=1)) == "AA"
    wait_for(lambda: hh.cache.patient_status(JUST_LEFT) is PatientStatus.RECENTLY_DISCHARGED,
             message="the discharges", timeout=20)
    assert hh.cache.patient_status(LONG_GONE) is PatientStatus.DISCHARGED
    accepted, reason, detail = hh.scan(LONG_GONE, "S3")
    assert (accepted, reason) == (False, "patient_discharged")
    gone_at = (now - dt.timedelta(seconds=GRACE_S + 3600)).strftime("%Y-%m-%d %H:%M")
    assert detail == f"Patient {LONG_GONE} has been discharged on {gone_at}: check the wristband."
    refusal = [e for e in hh.log.events() if e.kind == "refused_scan"][-1]
    assert (refusal.body["reason"], refusal.body["wristband"]) == ("patient_discharged", LONG_GONE)
    assert hh.scan(JUST_LEFT, "S4")[:2] == (True, "")  # within the grace period: the day's last items are charged
    info = hh.cache.patient(JUST_LEFT)
    assert info is not None and info.chargeable_until == (now - dt.timedelta(hours=1)).timestamp() + GRACE_S
    publisher = site.gateway.publisher
    assert publisher is not None and publisher.published <= 3  # debounced: no push per message
