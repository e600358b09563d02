"""Enrolment with one-time tokens and a pinned CA, and reprovisioning that never loses or doubles an event."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import device.commands.provision as provision_mod
from device.commands.provision import (
    EnrolmentFailed,
    ProvisionError,
    UnsyncedEvents,
    provision,
    reprovision,
    reset,
)
from device.config import load_config
from device.eventlog import EventLog
from device.sync import DeviceSync
from gateway.commands import public_key_pem
from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
from gateway.event_import import import_events
from gateway.ingest import IngestService
from gateway.pki import SiteCA
from gateway.store import GatewayStore
from hw_sim.secure_broker import SecureBroker
from spd_common.export import ExportError, read_export
from spd_common.toml_config import ConfigError

from conftest import wait_for


class Site:
    def __init__(self, d: Path) -> None:
        self.ca = SiteCA.create(d / "ca", site="H1")
        self.broker = SecureBroker(self.ca, sites=("H1", "H2"), workdir=d / "broker").start()
        self.tokens = EnrolmentTokens(d / "ca" / "tokens.db")
        self.signing = Ed25519PrivateKey.generate()
        self.enrol = EnrolmentService(self.ca, self.tokens, EnrolmentSettings(
            self.broker.host, self.broker.port, public_key_pem(self.signing))).start()
        self.gw_tls = self.broker.gateway_tls()

    def token(self, device: str, site: str = "H1") -> str:
        return self.tokens.issue(site=site, device=device).text

    def close(self) -> None:
        self.enrol.stop()
        self.broker.close()
        self.tokens.close()
        self.ca.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site"))
    yield s
    s.close()


def _provision(site: Site, tmp: Path, device: str) -> Path:
    cfg = tmp / "etc" / "device.toml"
    provision(cfg, url=site.enrol.url, token=site.token(device), ca_fingerprint=site.ca.fingerprint,
              data_dir=tmp / "data")
    return cfg


def _fill(cfg_path: Path, n: int) -> None:
    cfg = load_config(cfg_path)
    log = EventLog(cfg.log_path, device=cfg.device_id)
    for i in range(n):
        log.append("consume", {"admission": f"ZY{i:08d}", "udi": f"u{i}"})
    log.close()


def test_provision_writes_a_validated_config_and_a_private_key_only_the_device_reads(
        site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB10")
    cfg = load_config(cfg_path)
    assert (cfg.device_id, cfg.site, cfg.broker.port) == ("CAB10", "H1", site.broker.port)
    assert cfg.broker.tls is not None
    assert stat.S_IMODE(Path(cfg.broker.tls.key_file).stat().st_mode) == 0o600
    assert cfg.extra["remote"].command_key_file == cfg_path.parent / "command-key.pem"
    assert [c.name for c in site.ca.issued(name="CAB10")] == ["CAB10"]


def test_a_token_works_once(site: Site, tmp_path: Path) -> None:
    tok = site.token("CAB11")
    provision(tmp_path / "a" / "device.toml", url=site.enrol.url, token=tok, ca_fingerprint=site.ca.fingerprint,
              data_dir=tmp_path / "a")
    with pytest.raises(EnrolmentFailed) as err:
        provision(tmp_path / "b" / "device.toml", url=site.enrol.url, token=tok,
                  ca_fingerprint=site.ca.fingerprint, data_dir=tmp_path / "b")
    assert err.value.reason == "token_used"
    assert not (tmp_path / "b" / "device.toml").exists()


def test_wrong_ca_fingerprint_stops_enrolment_before_anything_is_sent(site: Site, tmp_path: Path) -> None:
    with pytest.raises(EnrolmentFailed) as err:
        provision(tmp_path / "device.toml", url=site.enrol.url, token=site.token("CAB12"),
                  ca_fingerprint="00" * 32, data_dir=tmp_path)
    assert err.value.reason == "fingerprint_mismatch"
    assert site.ca.issued(name="CAB12") == []


def test_reprovision_refuses_while_events_are_unacknowledged(site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB13")
    _fill(cfg_path, 5)
    with pytest.raises(UnsyncedEvents, match="5 event"):
        reprovision(cfg_path, url=site.enrol.url, token=site.token("CAB14", "H2"),
                    ca_fingerprint=site.ca.fingerprint)
    assert load_config(cfg_path).device_id == "CAB13"  # nothing changed
    with pytest.raises(UnsyncedEvents):
        reset(cfg_path)
    assert load_config(cfg_path).device_id == "CAB13"


def test_reprovision_with_1000_unsynced_events_delivers_all_exactly_once_via_export(
        site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB20")
    _fill(cfg_path, 1000)
    export = tmp_path / "CAB20-events.jsonl"
    cfg, retired = reprovision(cfg_path, url=site.enrol.url, token=site.token("CAB21", "H2"),
                               ca_fingerprint=site.ca.fingerprint, export_to=export,
                               layout={"sync": {"batch_size": 100}})
    assert (cfg.device_id, cfg.site, cfg.sync.batch_size) == ("CAB21", "H2", 100)
    assert retired.export is not None and len(retired.export.events) == 1000
    assert retired.archive_dir is not None and (retired.archive_dir / "events.db").exists()  # archived, not deleted
    store = GatewayStore(tmp_path / "gw.db")
    first = import_events(store, export)
    again = import_events(store, export)
    assert (first.new, first.duplicates, first.chain_breaks, first.contiguous) == (1000, 0, [], 1000)
    assert (again.new, again.duplicates) == (0, 1000)
    assert store._engine.query(
        "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events WHERE device='CAB20'") \
        == [(1000, 1000, 1, 1000)]
    assert store.counts()["chain_breaks"] == 0
    store.close()
    new_log = EventLog(cfg.log_path, device="CAB21")  # the new identity starts a fresh log
    assert new_log.last_seq == 0
    new_log.close()


def test_reprovision_delivers_part_then_exports_the_rest_and_the_gateway_holds_each_once(
        site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB30")
    cfg = load_config(cfg_path)
    assert cfg.broker.tls is not None
    tls = cfg.broker.tls
    store = GatewayStore(tmp_path / "gw.db")
    gw = IngestService(store, host=site.broker.host, port=site.broker.port, client_id="gw-prov", tls=site.gw_tls)
    gw.start()
    assert gw.wait_connected()
    log = EventLog(cfg.log_path, device="CAB30")
    sync = DeviceSync(log, site="H1", host=site.broker.host, port=site.broker.port, tls=tls, reconnect_min_s=0.2)
    sync.start()
    for i in range(400):
        log.append("consume", {"admission": f"ZY{i:08d}", "udi": f"u{i}"})
    wait_for(lambda: log.backlog() == 0, timeout=20, message="the first 400 delivered")
    sync.stop()
    gw.stop()  # the gateway is now unreachable: the next 600 cannot be delivered
    for i in range(400, 1000):
        log.append("consume", {"admission": f"ZY{i:08d}", "udi": f"u{i}"})
    log.close()
    export = tmp_path / "rest.jsonl"
    _, retired = reprovision(cfg_path, url=site.enrol.url, token=site.token("CAB31"),
                             ca_fingerprint=site.ca.fingerprint, export_to=export, deliver_timeout_s=0.5)
    assert retired.export is not None
    assert (retired.export.first_seq, retired.export.last_seq) == (401, 1000)
    res = import_events(store, export)
    assert (res.new, res.duplicates, res.contiguous, res.chain_breaks) == (600, 0, 1000, [])
    assert store._engine.query("SELECT COUNT(*), COUNT(DISTINCT seq) FROM events WHERE device='CAB30'") == [
        (1000, 1000)]
    store.close()


def test_an_altered_export_file_is_refused_whole(site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB40")
    _fill(cfg_path, 3)
    export = tmp_path / "x.jsonl"
    reset(cfg_path, export_to=export)
    assert len(read_export(export).events) == 3
    export.write_text(export.read_text().replace("ZY00000001", "ZY00000009"))
    store = GatewayStore(tmp_path / "gw.db")
    with pytest.raises(ExportError) as err:
        import_events(store, export)
    assert err.value.reason == "checksum"
    assert store.counts()["events"] == 0
    store.close()


def test_provision_refuses_to_overwrite_a_provisioned_device(site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB50")
    with pytest.raises(ProvisionError) as err:
        provision(cfg_path, url=site.enrol.url, token=site.token("CAB51"), ca_fingerprint=site.ca.fingerprint)
    assert err.value.reason == "already_provisioned"


def test_owner_gets_the_config_and_the_key_which_stays_0600(site: Site, tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    cfg_path = tmp_path / "etc" / "device.toml"
    provision(cfg_path, url=site.enrol.url, token=site.token("CAB60"), ca_fingerprint=site.ca.fingerprint,
              data_dir=tmp_path / "data", owner="nobody")
    key = cfg_path.parent / "device.key"
    assert (key.stat().st_uid, cfg_path.stat().st_uid) == (nobody.pw_uid, nobody.pw_uid)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


# ---------------------------------------------------------------- failed provisioning: checked first, resumed after

LAYOUT = {
    "cabinet": {
        "dept": "OR1", "allowlist_file": "allow.json", "pin_factory": "sim",
        "doors": [{"name": "main", "lock_pin": 17, "door_pin": 27}],
        "reader": {"url": "loop://"},
        "scanners": {"ports": ["loop://"]},
    },
}


def _files(etc: Path) -> set[str]:
    return {p.name for p in etc.iterdir()} if etc.exists() else set()


def test_a_layout_missing_a_file_is_refused_before_the_token_is_sent(site: Site, tmp_path: Path) -> None:
    token = site.token("CAB70")
    broken = {"cabinet": {k: v for k, v in LAYOUT["cabinet"].items() if k != "allowlist_file"}}
    cfg_path = tmp_path / "etc" / "device.toml"
    with pytest.raises(ConfigError, match="allowlist_file"):
        provision(cfg_path, url=site.enrol.url, token=token, ca_fingerprint=site.ca.fingerprint,
                  data_dir=tmp_path / "data", sections=broken)
    assert _files(cfg_path.parent) == set()
    assert site.ca.issued(name="CAB70") == []
    provision(cfg_path, url=site.enrol.url, token=token, ca_fingerprint=site.ca.fingerprint,
              data_dir=tmp_path / "data", sections=LAYOUT)  # the same token, once the layout is fixed
    assert load_config(cfg_path).device_id == "CAB70"


def test_a_provisioning_that_fails_after_enrolment_keeps_only_its_key_and_the_same_command_resumes(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = site.token("CAB71")
    cfg_path = tmp_path / "etc" / "device.toml"

    def disk_full(path: Path, doc: dict[str, object]) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(provision_mod, "_write_config", disk_full)
        with pytest.raises(ProvisionError) as err:
            provision(cfg_path, url=site.enrol.url, token=token, ca_fingerprint=site.ca.fingerprint,
                      data_dir=tmp_path / "data")
    assert err.value.reason == "provision_incomplete"
    assert "run the same command again with the same token" in str(err.value)
    assert _files(cfg_path.parent) == {"device.key.pending"}  # no certificate, CA or config left half-done
    assert stat.S_IMODE((cfg_path.parent / "device.key.pending").stat().st_mode) == 0o600
    [issued] = site.ca.issued(name="CAB71")
    cfg = provision(cfg_path, url=site.enrol.url, token=token, ca_fingerprint=site.ca.fingerprint,
                    data_dir=tmp_path / "data")
    assert cfg.device_id == "CAB71"
    assert _files(cfg_path.parent) == {"device.toml", "device.key", "device.crt", "ca.crt", "command-key.pem"}
    assert [(c.serial, c.revoked) for c in site.ca.issued(name="CAB71")] == [(issued.serial, False)]


def test_an_answer_lost_on_bad_wifi_is_resumed_with_the_same_token(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = site.token("CAB72")
    cfg_path = tmp_path / "etc" / "device.toml"
    real = provision_mod.request_certificate

    def answer_lost(*args: object, **kwargs: object) -> dict[str, object]:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise EnrolmentFailed("no answer from the enrolment service: timed out.", "no_answer")

    with monkeypatch.context() as m:
        m.setattr(provision_mod, "request_certificate", answer_lost)
        with pytest.raises(EnrolmentFailed, match="run the same command again with the same token"):
            provision(cfg_path, url=site.enrol.url, token=token, ca_fingerprint=site.ca.fingerprint,
                      data_dir=tmp_path / "data")
    assert _files(cfg_path.parent) == {"device.key.pending"}
    provision(cfg_path, url=site.enrol.url, token=token, ca_fingerprint=site.ca.fingerprint,
              data_dir=tmp_path / "data")
    assert len(site.ca.issued(name="CAB72")) == 1


def test_a_refused_reprovision_leaves_no_new_key_and_the_old_identity_and_log_in_place(
        site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB73")
    _fill(cfg_path, 3)
    before = _files(cfg_path.parent)
    with pytest.raises(EnrolmentFailed) as err:
        reprovision(cfg_path, url=site.enrol.url, token="H1/CAB74/never-issued", ca_fingerprint=site.ca.fingerprint,
                    export_to=tmp_path / "out.jsonl")
    assert err.value.reason == "unknown_token"
    assert _files(cfg_path.parent) == before  # no device.key.new or pending key left behind
    cfg = load_config(cfg_path)
    assert cfg.device_id == "CAB73"
    log = EventLog(cfg.log_path, device="CAB73")  # the same log, not a fresh one restarting at seq 1
    assert log.last_seq == 3
    log.close()


def test_reset_archives_a_pending_enrolment_key(site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB75")
    (cfg_path.parent / "device.key.pending").write_bytes(b"left by an unfinished reprovision")
    reset(cfg_path)
    assert _files(cfg_path.parent) == set()


def test_the_provision_command_says_the_same_command_resumes_and_it_does(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli import main as device_main

    cfg_path = tmp_path / "etc" / "device.toml"
    argv = ["provision", "--config", str(cfg_path), "--data-dir", str(tmp_path / "data"), "--url", site.enrol.url,
            "--token", site.token("CAB76"), "--ca-fingerprint", site.ca.fingerprint]

    def disk_full(path: Path, doc: dict[str, object]) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(provision_mod, "_write_config", disk_full)
        assert device_main(argv) == 2
    out = capsys.readouterr().out
    assert out.startswith("not finished: CAB76 was enrolled")
    assert "No space left on device" in out and "run the same command again with the same token" in out
    assert device_main(argv) == 0
    assert "provisioned CAB76 at site H1" in capsys.readouterr().out


def test_a_service_failure_after_issuing_is_resumed_like_a_lost_answer(site: Site, tmp_path: Path) -> None:
    failures = ["the gateway store is locked"]

    def on_enrolled(site_id: str, device: str, serial: str) -> None:
        if failures:
            raise RuntimeError(failures.pop())

    svc = EnrolmentService(site.ca, site.tokens, EnrolmentSettings(
        site.broker.host, site.broker.port, public_key_pem(site.signing)), on_enrolled=on_enrolled).start()
    try:
        token, cfg_path = site.token("CAB77"), tmp_path / "etc" / "device.toml"
        with pytest.raises(EnrolmentFailed) as err:
            provision(cfg_path, url=svc.url, token=token, ca_fingerprint=site.ca.fingerprint, data_dir=tmp_path)
        assert err.value.reason == "no_answer" and "(500)" in str(err.value)
        assert _files(cfg_path.parent) == {"device.key.pending"}
        provision(cfg_path, url=svc.url, token=token, ca_fingerprint=site.ca.fingerprint, data_dir=tmp_path)
        assert len(site.ca.issued(name="CAB77")) == 1
    finally:
        svc.stop()


def test_a_reprovision_with_a_broken_layout_is_refused_before_events_are_exported(site: Site, tmp_path: Path) -> None:
    cfg_path = _provision(site, tmp_path, "CAB78")
    _fill(cfg_path, 2)
    export = tmp_path / "out.jsonl"
    with pytest.raises(ConfigError, match="allowlist_file"):
        reprovision(cfg_path, url=site.enrol.url, token=site.token("CAB79"), ca_fingerprint=site.ca.fingerprint,
                    export_to=export, layout={"cabinet": {k: v for k, v in LAYOUT["cabinet"].items()
                                                          if k != "allowlist_file"}})
    assert not export.exists()
    assert load_config(cfg_path).device_id == "CAB78"
    assert site.ca.issued(name="CAB79") == []
