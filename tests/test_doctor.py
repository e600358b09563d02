"""``spd-device doctor`` on a provisioned device against a real TLS broker: a healthy one, and one broken many ways."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.cli import main as device_main
from device.commands.doctor import Status, check_certificate, format_report, run_checks
from device.commands.provision import provision
from device.config import load_config
from device.eventlog import EventLog
from gateway.commands import public_key_pem
from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
from gateway.pki import SiteCA
from hw_sim.secure_broker import SecureBroker

LAYOUT = {
    "cabinet": {
        "dept": "OR1", "allowlist_file": "allow.json", "pin_factory": "sim",
        "doors": [{"name": "main", "lock_pin": 17, "door_pin": 27}],
        "reader": {"url": "loop://"},
        "scanners": {"ports": ["loop://"]},
    },
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBroker, EnrolmentService, EnrolmentTokens]]:
    d = tmp_path_factory.mktemp("doc")
    ca = SiteCA.create(d / "ca", site="H1")
    b = SecureBroker(ca, sites=("H1",), workdir=d / "broker").start()
    tokens = EnrolmentTokens(d / "tokens.db")
    svc = EnrolmentService(ca, tokens, EnrolmentSettings(b.host, b.port,
                                                         public_key_pem(Ed25519PrivateKey.generate()))).start()
    yield b, svc, tokens
    svc.stop()
    b.close()
    ca.close()


def _device(site: tuple[SecureBroker, EnrolmentService, EnrolmentTokens], tmp: Path, name: str) -> Path:
    b, svc, tokens = site
    cfg_path = tmp / "etc" / "device.toml"
    provision(cfg_path, url=svc.url, token=tokens.issue(site="H1", device=name).text,
              ca_fingerprint=b.ca.fingerprint, data_dir=tmp / "data", sections=LAYOUT)
    cfg = load_config(cfg_path)
    log = EventLog(cfg.log_path, device=name)
    for i in range(3):
        log.append("access", {"badge": f"B{i}", "outcome": "granted"})
    log.close()
    return cfg_path


def test_healthy_device_passes_every_check(site: tuple[SecureBroker, EnrolmentService, EnrolmentTokens],
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = _device(site, tmp_path, "CAB01")
    cfg, findings = run_checks(cfg_path)
    assert [(f.check, f.status.value) for f in findings] == [
        ("config", "OK"), ("serial", "OK"), ("serial", "OK"), ("gpio", "OK"), ("camera", "SKIP"), ("clock", "OK"),
        ("disk", "OK"), ("event log", "OK"), ("certificate", "OK"), ("command key", "OK"), ("broker", "OK"),
        ("broker ACL", "OK"), ("broker ACL", "OK")]
    assert findings[7].message == "integrity ok, hash chain ok; 3 events, 3 not yet acknowledged"
    assert format_report(cfg, findings).endswith("13 checks: 0 failed, 0 warning(s). The device is ready.")
    assert device_main(["doctor", "--config", str(cfg_path)]) == 0
    assert "The device is ready." in capsys.readouterr().out


def test_broken_device_fails_each_broken_part_and_says_what_to_do(
        site: tuple[SecureBroker, EnrolmentService, EnrolmentTokens], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = _device(site, tmp_path, "CAB02")
    text = cfg_path.read_text()
    text = text.replace('url = "loop://"', f'url = "{tmp_path}/no-such-reader"')
    text = text.replace(f"port = {site[0].port}", "port = 1")  # nothing listens there
    cfg_path.write_text(text)
    os.chmod(cfg_path.parent / "device.key", 0o644)
    cfg = load_config(cfg_path)
    db = sqlite3.connect(cfg.log_path)  # someone edits the log behind the agent's back
    db.execute("DROP TRIGGER events_no_update")
    db.execute("UPDATE events SET body = '{\"badge\":\"B9\",\"outcome\":\"granted\"}' WHERE seq = 2")
    db.commit()
    db.close()
    _, findings = run_checks(cfg_path, broker_timeout_s=2)
    failed = {(f.check, f.message.split(":")[0]) for f in findings if f.status is Status.FAIL}
    assert failed == {
        ("serial", f"RFID reader {tmp_path}/no-such-reader cannot be opened"),
        ("event log", "hash chain broken at seq 2"),
        ("certificate", f"private key {cfg_path.parent / 'device.key'} has mode 644, readable by others"),
        ("broker", "cannot reach 127.0.0.1"),
    }
    assert device_main(["doctor", "--config", str(cfg_path)]) == 1
    out = capsys.readouterr().out
    assert "-> check the USB cable" in out
    assert out.rstrip().endswith("4 failed, 0 warning(s). The device is NOT ready.")


def test_revoked_certificate_is_reported_as_refused_by_the_broker(
        site: tuple[SecureBroker, EnrolmentService, EnrolmentTokens], tmp_path: Path) -> None:
    cfg_path = _device(site, tmp_path, "CAB03")
    b = site[0]
    b.ca.revoke_name("CAB03")
    b.restart()
    _, findings = run_checks(cfg_path, broker_timeout_s=3)
    broker = [f for f in findings if f.check == "broker"]
    assert [f.status for f in broker] == [Status.FAIL]
    assert "reprovision" in broker[0].hint


def test_unknown_option_in_config_is_the_only_finding(tmp_path: Path) -> None:
    p = tmp_path / "device.toml"
    p.write_text('[device]\nid = "CAB09"\nsite = "H1"\ncolour = "red"\n')
    cfg, findings = run_checks(p)
    assert cfg is None
    assert [(f.check, f.status.value, f.message) for f in findings] == [
        ("config", "FAIL", f"{p}: device.colour: unknown option")]


def test_watchdog_pings_systemd_only_while_healthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    from spd_common.sdnotify import Watchdog, notify

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    assert notify("READY=1") and sock.recv(64) == b"READY=1"
    healthy = [True]
    wd = Watchdog(lambda: healthy[0], interval_s=0.05).start()
    assert sock.recv(64) == b"WATCHDOG=1"
    healthy[0] = False
    time.sleep(0.12)
    sock.setblocking(False)
    while True:  # drain what was sent before the health check failed
        try:
            sock.recv(64)
        except BlockingIOError:
            break
    pings = wd.pings
    time.sleep(0.2)
    wd.stop()
    assert wd.pings == pings
    sock.close()


def test_doctor_checks_a_handhelds_scanners_and_pins(tmp_path: Path) -> None:
    from device.commands.doctor import check_gpio, check_serial
    from device.config import parse_config_text
    from hw_sim.pty_serial import PtyPort

    port = PtyPort(name="ttyDoctorHH")
    try:
        cfg = parse_config_text(f"""
[device]
id = "HH01"
site = "H1"
kind = "handheld"
[handheld]
dept = "ICU-2"
pin_factory = "sim"
buzzer_pin = 22
scanner_ports = ["{port.url}"]
wedge_devices = ["{tmp_path / 'no-such-event-device'}"]
""", base_dir=tmp_path)
        serial = check_serial(cfg)
    finally:
        port.close()
    assert [f.status for f in serial] == [Status.FAIL, Status.OK]
    assert "USB HID scanner" in serial[0].message and "does not exist" in serial[0].message
    gpio = check_gpio(cfg)
    assert gpio.status is Status.OK and "buzzer 22" in gpio.message


def test_an_unfinished_renewal_or_enrolment_is_reported(site: tuple[SecureBroker, EnrolmentService, EnrolmentTokens],
                                                        tmp_path: Path) -> None:
    from device.commands.provision import PENDING_KEY_FILE
    from device.credentials import PENDING_SUFFIX

    cfg_path = _device(site, tmp_path, "CAB07")
    cfg = load_config(cfg_path)
    assert cfg.broker.tls is not None
    Path(cfg.broker.tls.key_file + PENDING_SUFFIX).write_bytes(b"a key whose certificate never came")
    found = check_certificate(cfg)
    assert found.status.value == "WARN" and "renewal did not finish" in found.message
    missing = tmp_path / "other" / "device.toml"
    missing.parent.mkdir()
    (missing.parent / PENDING_KEY_FILE).write_bytes(b"the key of an enrolment with no answer")
    _, findings = run_checks(missing)
    assert [(f.check, f.status.value) for f in findings] == [("config", "FAIL")]
    assert "enrolment did not finish" in findings[0].message and "same token" in findings[0].hint
