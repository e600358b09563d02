"""``spd-gateway push --build``: the catalog document and the allow-list built from the gateway's tables and pushed
signed to a device; the debounced re-publication after census changes."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.catalog_cache import CatalogCache
from device.eventlog import EventLog
from device.remote import CommandVerifier, DesiredState, RemoteCommands, ReplayGuard, load_public_key
from device.sync import DeviceSync
from gateway.catalog import CatalogEntry, RecalledLot, import_catalog, import_recalled_lots
from gateway.catalog_publish import CatalogPublisher
from gateway.census import AdtEvent, AdtUpdate, apply_adt, mark_census_complete
from gateway.cli import main as gateway_main
from gateway.commands import generate_signing_key, public_key_pem
from gateway.pki import SiteCA
from gateway.staff import import_staff, parse_staff_table
from gateway.store import GatewayStore
from hw_sim.secure_broker import SecureBroker
from hw_sim.udi_gen import make_gtin
from spd_common.allowlist import parse_allowlist
from spd_common.command_schema import CommandKind, Component

from conftest import wait_for

SITE = "H1"
GAUZE = make_gtin(random.Random(9))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Path, SecureBroker, list[str], DesiredState]]:
    ca = SiteCA.create(tmp_path / "ca", site=SITE)
    broker = SecureBroker(ca, sites=(SITE,), workdir=tmp_path / "broker").start()
    key = generate_signing_key(tmp_path / "signing.key")
    (tmp_path / "cmd.pem").write_bytes(public_key_pem(key))
    log = EventLog(tmp_path / "dev.db", device="CAB01")
    desired = DesiredState(tmp_path / "desired")
    replay = ReplayGuard(tmp_path / "cmd.db")
    remote = RemoteCommands(CommandVerifier(load_public_key(tmp_path / "cmd.pem"), device="CAB01", site=SITE), replay,
                            log, handlers={CommandKind.DESIRED_STATE: desired.apply})
    sync = DeviceSync(log, site=SITE, host=broker.host, port=broker.port, tls=broker.client_tls("CAB01"),
                      state_every_s=0.3, on_command=lambda p, r: remote.handle(p, retained=r))
    sync.start()
    tls = broker.gateway_tls()
    args = ["--db", str(tmp_path / "gw.db"), "--signing-key", str(tmp_path / "signing.key"), "--broker-host",
            broker.host, "--broker-port", str(broker.port), "--tls-ca", tls.ca_file, "--tls-cert", tls.cert_file,
            "--tls-key", tls.key_file, "--site", SITE, "--device", "CAB01", "--by", "spd.desk"]
    yield tmp_path / "gw.db", broker, args, desired
    sync.stop()
    replay.close()
    log.close()
    broker.close()
    ca.close()


def test_push_build_publishes_the_catalog_document_and_a_departments_allow_list(
        rig: tuple[Path, SecureBroker, list[str], DesiredState], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    db, _, args, desired = rig
    store = GatewayStore(db)
    import_catalog(store, [CatalogEntry(GAUZE, "HC00007", "33100007", "Gauze", "5x7.5cm", "Maker", 21800, True,
                                        False)])
    import_recalled_lots(store, [RecalledLot(GAUZE, "L9", "recall")])
    apply_adt(store, AdtUpdate(AdtEvent.ADMIT, "ZY1", initials="Z.S.", ward="5A"), control_id="M1")
    mark_census_complete(store)
    members, _ = parse_staff_table(_staff_table("staff_id,badge,role,dept\nN1,04000001,nurse,CARD\n"
                                                "N2,04000002,nurse,ICU\nR1,04000009,restocker,*\n"))
    import_staff(store, members)
    store.close()

    assert gateway_main(["push", *args, "--component", "catalog", "--build"]) == 0
    out = capsys.readouterr().out
    assert "catalog document version 1 (sha256:" in out
    assert "1 items, 1 recalled lots, 0 consumed serials, 1 patients in house" in out
    assert "CAB01: catalog version 1 published" in out
    wait_for(lambda: desired.applied().get("catalog") == 1, message="the catalog applied", timeout=15)
    cache = CatalogCache(tmp_path / "check.json")
    assert cache.apply(desired.document(Component.CATALOG))  # the pushed document is one a device accepts
    assert cache.recall_reason(GAUZE, "L9") == "recall"
    info = cache.patient("ZY1")
    assert info is not None and (info.initials, info.ward) == ("Z.S.", "5A")

    assert gateway_main(["push", *args, "--component", "allowlist", "--build", "--dept", "CARD"]) == 0
    assert "allow-list of CARD: 2 badges" in capsys.readouterr().out
    wait_for(lambda: desired.applied().get("allowlist") == 1, message="the allow-list applied", timeout=15)
    _, badges = parse_allowlist({**desired.document(Component.ALLOWLIST), "version": 1})
    assert sorted(b.user for b in badges.values()) == ["N1", "R1"]

    with pytest.raises(SystemExit, match="needs --dept"):
        gateway_main(["push", *args, "--component", "allowlist", "--build"])
    with pytest.raises(SystemExit, match="a config is pushed --file"):
        gateway_main(["push", *args, "--component", "config", "--build"])


def _staff_table(text: str) -> Any:
    from gateway.catalog import csv_table

    return csv_table(text)


class FakeFleet:
    def __init__(self) -> None:
        self.pushes: list[dict[str, Any]] = []
        self.pushed = threading.Event()

    def push(self, component: Component, doc: Any, *, requested_by: str, devices: Any = None) -> dict[str, int]:
        self.pushes.append(doc)
        self.pushed.set()
        return {"HH01": len(self.pushes)}


def test_a_burst_of_census_changes_is_published_once_and_an_unchanged_document_not_at_all(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    fleet = FakeFleet()
    mark_census_complete(store)
    publisher = CatalogPublisher(store, lambda: fleet, debounce_s=1.0, max_delay_s=10.0).start()  # type: ignore[arg-type]
    try:
        for n in range(20):
            apply_adt(store, AdtUpdate(AdtEvent.ADMIT, f"ZY{n:04d}"), control_id=f"M{n}")
        for _ in range(20):  # what twenty ADT connections say after their commits
            publisher.changed()
        assert fleet.pushed.wait(10)
        wait_for(lambda: publisher._due_in() is None, message="the publication done", timeout=15)
        assert len(fleet.pushes) == 1
        assert len(fleet.pushes[0]["patients"]["in_house"]) == 20
        assert publisher.publish_now() is False  # same content: nothing to push
        assert len(fleet.pushes) == 1
    finally:
        publisher.stop()
        store.close()


def test_a_steady_trickle_is_still_published_within_the_maximum_delay(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    fleet = FakeFleet()
    publisher = CatalogPublisher(store, lambda: fleet, debounce_s=0.5, max_delay_s=1.0).start()  # type: ignore[arg-type]
    try:
        n = 0
        while not fleet.pushed.is_set():  # a change every 0.1 s never leaves 0.5 s of quiet
            apply_adt(store, AdtUpdate(AdtEvent.ADMIT, f"ZY{n:04d}"), control_id=f"M{n}")
            publisher.changed()
            n += 1
            assert n < 100, "never published during a steady trickle"
            fleet.pushed.wait(0.1)
        assert len(fleet.pushes) == 1
    finally:
        publisher.stop()
        store.close()


def test_pushes_are_spaced_by_the_minimum_interval(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    fleet = FakeFleet()
    publisher = CatalogPublisher(store, lambda: fleet, debounce_s=0.0, max_delay_s=0.0, min_interval_s=3600.0)
    apply_adt(store, AdtUpdate(AdtEvent.ADMIT, "ZY1"), control_id="M1")
    publisher.changed()
    assert publisher._due_in() == 0.0  # nothing pushed yet: due at once
    assert publisher.publish_now()
    apply_adt(store, AdtUpdate(AdtEvent.ADMIT, "ZY2"), control_id="M2")
    publisher.changed()
    due = publisher._due_in()
    assert due is not None and due > 3500  # the next push waits for the interval, the change is kept
    store.close()


def test_without_a_fleet_nothing_is_published(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    assert CatalogPublisher(store, lambda: None).publish_now() is False
    store.close()
