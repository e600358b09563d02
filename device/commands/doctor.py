"""``spd-device doctor``: check a device end to end and explain each problem in a technician's words.

Checks, each reported OK / WARN / FAIL / SKIP with what to do about it:
config, serial ports (each configured URL is opened), GPIO, camera, clock,
disk space, event log (``PRAGMA integrity_check`` and the hash chain),
certificate (dates, key match, issuer, key file mode), command key, and the
broker (TLS login, may publish its own state, receives nothing it must not
when subscribed to ``#`` and ``$SYS/#``). Exit code 1 when anything failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.reasoncodes import ReasonCode

from device.config import DeviceConfig, RemoteConfig, load_config
from device.eventlog import EventLog
from spd_common.mqtt import make_client
from spd_common.toml_config import ConfigError
from spd_common.wire import Channel, topic

EARLIEST_PLAUSIBLE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CERT_WARN_DAYS = 30
DISK_FAIL_BYTES = 50 * 1024 * 1024
DISK_WARN_BYTES = 500 * 1024 * 1024


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    message: str
    hint: str = ""


def _ok(check: str, message: str) -> Finding:
    return Finding(check, Status.OK, message)


def _fail(check: str, message: str, hint: str) -> Finding:
    return Finding(check, Status.FAIL, message, hint)


# ---------------------------------------------------------------- the checks


def _cabinet(cfg: DeviceConfig) -> Any:
    return cfg.extra.get("cabinet")


def check_serial(cfg: DeviceConfig, *, opener: Callable[..., Any] | None = None) -> list[Finding]:
    cab = _cabinet(cfg)
    hh = cfg.handheld
    if cab is None and hh is None:
        return [Finding("serial", Status.SKIP, "no [cabinet] or [handheld] section: no serial readers configured")]
    import serial

    open_url = opener or serial.serial_for_url
    ports: list[tuple[str, str, int]] = []
    out = []
    if cab is not None:
        ports.append(("RFID reader", cab.reader.url, cab.reader.baudrate))
        ports += [(f"scanner {i}", p, cab.scanners.baudrate) for i, p in enumerate(cab.scanners.ports)]
        if cab.scanners.badge_port:
            ports.append(("badge reader", cab.scanners.badge_port, cab.scanners.baudrate))
    if hh is not None:
        ports += [(f"scanner {i}", p, hh.scanner_baudrate) for i, p in enumerate(hh.scanner_ports)]
        for path in hh.wedge_devices:
            if not os.path.exists(path):
                out.append(_fail("serial", f"USB HID scanner {path} does not exist",
                                 "check the USB cable and the udev rule (ls -l /dev/input/spd-*)"))
            elif not os.access(path, os.R_OK):
                out.append(_fail("serial", f"USB HID scanner {path} is not readable",
                                 "the service user must be in the 'input' group (deploy/install.sh adds it)"))
            else:
                out.append(_ok("serial", f"USB HID scanner {path} present and readable"))
        if not hh.scanner_ports and not hh.wedge_devices:
            out.append(_fail("serial", "the handheld has no scanner configured",
                             "set [handheld] scanner_ports or wedge_devices (deploy/examples/handheld.toml)"))
    for what, url, baud in ports:
        try:
            port = open_url(url, baudrate=baud, timeout=0.5)
            port.close()
            out.append(_ok("serial", f"{what} {url} opens"))
        except (OSError, ValueError) as err:
            out.append(_fail("serial", f"{what} {url} cannot be opened: {err}",
                             "check the USB cable and that the udev rule gives it this name "
                             "(ls -l /dev/spd-*); the service user must be in the 'dialout' group"))
    return out


def check_gpio(cfg: DeviceConfig) -> Finding:
    cab = _cabinet(cfg)
    hh = cfg.handheld
    if cab is None and (hh is None or (hh.buzzer_pin is None and hh.led_pin is None)):
        return Finding("gpio", Status.SKIP, "no locks, door sensors, buzzer or LED configured")
    from device.hal.pins import HalError, load_pin_factory

    backend = cab.pin_factory if cab is not None else hh.pin_factory if hh is not None else ""
    try:
        factory = load_pin_factory(backend)
        factory.close()
    except HalError as err:
        return _fail("gpio", f"pin backend {backend!r} unavailable: {err}",
                     "on a Raspberry Pi install python3-rpi.gpio and add the service user to the 'gpio' group")
    if cab is None:
        assert hh is not None
        return _ok("gpio", f"pin backend {backend} loaded; buzzer {hh.buzzer_pin}, LED {hh.led_pin}")
    doors = ", ".join(f"{d.name} (lock {d.lock_pin}, door {d.door_pin})" for d in cab.doors)
    return _ok("gpio", f"pin backend {cab.pin_factory} loaded; doors: {doors}")


def check_camera(cfg: DeviceConfig) -> Finding:
    cab = _cabinet(cfg)
    if cab is None or not cab.camera.enabled:
        return Finding("camera", Status.SKIP, "camera not enabled in the config")
    dev = Path(cab.camera.device)
    if not dev.exists():
        return _fail("camera", f"{dev} does not exist", "check the camera cable; 'ls /dev/video*' lists cameras")
    if not os.access(dev, os.R_OK | os.W_OK):
        return _fail("camera", f"{dev} is not accessible", "add the service user to the 'video' group")
    return _ok("camera", f"{dev} present and accessible")


def check_clock(cfg: DeviceConfig, *, now: dt.datetime | None = None) -> Finding:
    t = now or dt.datetime.now(dt.UTC)
    if t < EARLIEST_PLAUSIBLE:
        return _fail("clock", f"the clock says {t:%Y-%m-%d %H:%M} UTC, which is in the past",
                     "set up time sync (timedatectl set-ntp true) or set the date; certificates and signed "
                     "commands are refused with a wrong clock")
    tls = cfg.broker.tls
    if tls is not None and Path(tls.cert_file).exists():
        try:
            cert = x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes())
            if t < cert.not_valid_before_utc:
                return _fail("clock", f"the clock ({t:%Y-%m-%d %H:%M} UTC) is before the certificate was issued",
                             "fix the date (timedatectl) before anything else")
        except ValueError:
            pass
    return _ok("clock", f"{t:%Y-%m-%d %H:%M:%S} UTC")


def check_disk(cfg: DeviceConfig) -> Finding:
    d = cfg.data_dir
    probe = d if d.exists() else d.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as err:
        return _fail("disk", f"cannot read {d}: {err}", "create the data directory (install.sh does it)")
    free_mb = usage.free // (1024 * 1024)
    if usage.free < DISK_FAIL_BYTES:
        return _fail("disk", f"only {free_mb} MB free under {d}", "free space now: scans cannot be recorded")
    if usage.free < DISK_WARN_BYTES:
        return Finding("disk", Status.WARN, f"{free_mb} MB free under {d}", "free some space soon")
    return _ok("disk", f"{free_mb} MB free under {d}")


def check_event_log(cfg: DeviceConfig) -> Finding:
    if not cfg.log_path.exists():
        return Finding("event log", Status.WARN, f"{cfg.log_path} does not exist yet",
                       "normal before the first scan; otherwise check data_dir in the config")
    try:
        elog = EventLog(cfg.log_path, device=cfg.device_id)
    except Exception as err:
        return _fail("event log", f"cannot open {cfg.log_path}: {err}", "do not delete it; call support")
    try:
        integrity = elog.integrity_check()
        breaks = elog.verify_chain()
        backlog, last = elog.backlog(), elog.last_seq
    finally:
        elog.close()
    if integrity != "ok":
        return _fail("event log", f"SQLite integrity check failed: {integrity}",
                     "do not delete the file; export the events and call support")
    if breaks:
        first = breaks[0]
        return _fail("event log", f"hash chain broken at seq {first.seq}: {first.detail} ({len(breaks)} break(s))",
                     "the log was altered outside the agent; keep the file for investigation and call support")
    return _ok("event log", f"integrity ok, hash chain ok; {last} events, {backlog} not yet acknowledged")


def check_certificate(cfg: DeviceConfig, *, now: dt.datetime | None = None) -> Finding:
    from device.commands.provision import ProvisionError, check_identity_files
    from device.credentials import PENDING_SUFFIX

    tls = cfg.broker.tls
    if tls is None:
        return _fail("certificate", "no [broker.tls] section: the device has no identity",
                     "provision it: spd-device provision --url ... --token ... --ca-fingerprint ...")
    missing = [p for p in (tls.ca_file, tls.cert_file, tls.key_file) if not Path(p).exists()]
    if missing:
        return _fail("certificate", f"missing {', '.join(missing)}", "provision the device again")
    try:
        check_identity_files(cfg)
    except (ProvisionError, ValueError, TypeError) as err:
        return _fail("certificate", f"identity files do not belong together: {err}", "provision the device again")
    except Exception as err:
        return _fail("certificate", f"certificate not issued by the site CA on file: {err}",
                     "provision the device again")
    mode = stat.S_IMODE(Path(tls.key_file).stat().st_mode)
    if mode & 0o077:
        return _fail("certificate", f"private key {tls.key_file} has mode {mode:o}, readable by others",
                     f"chmod 600 {tls.key_file}")
    cert = x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes())
    t = now or dt.datetime.now(dt.UTC)
    if t > cert.not_valid_after_utc:
        return _fail("certificate", f"expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                     "reprovision with a new token (spd-device reprovision)")
    if t < cert.not_valid_before_utc:
        return _fail("certificate", "not valid yet", "check the clock")
    days = (cert.not_valid_after_utc - t).days
    pending = Path(tls.key_file + PENDING_SUFFIX)
    if pending.exists():
        return Finding("certificate", Status.WARN,
                       f"valid {days} more days, but a renewal did not finish: its new key is kept in {pending}",
                       "the next rotation resumes it; if it keeps failing, check the enrolment service is reachable")
    if days < CERT_WARN_DAYS:
        return Finding("certificate", Status.WARN, f"expires in {days} days", "renew it soon (reprovision)")
    return _ok("certificate", f"CN={cfg.device_id}, matches its key, issued by the site CA, valid {days} more days")


def check_command_key(cfg: DeviceConfig) -> Finding:
    remote = cfg.extra.get("remote")
    if not isinstance(remote, RemoteConfig):
        return Finding("command key", Status.WARN, "no [remote] section: remote commands are disabled",
                       "provisioning writes it; reprovision if remote unlock/config is wanted")
    from device.remote import RemoteError, load_public_key

    try:
        load_public_key(remote.command_key_file)
    except (OSError, ValueError, RemoteError) as err:
        return _fail("command key", f"{remote.command_key_file}: {err}", "provision the device again")
    return _ok("command key", f"gateway command key {remote.command_key_file.name} loaded")


class _Probe:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.dropped = False
        self.acks: dict[int, Any] = {}
        self.topics: list[str] = []


def check_broker(cfg: DeviceConfig, *, timeout_s: float = 5.0, listen_s: float = 1.0) -> list[Finding]:
    tls = cfg.broker.tls
    b = cfg.broker
    where = f"{b.host}:{b.port}"
    pr = _Probe()


    def on_connect(cl: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with pr.cond:
            pr.connack = rc
            pr.cond.notify_all()

    def on_disconnect(cl: mqtt.Client, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with pr.cond:
            pr.dropped = True
            pr.cond.notify_all()

    def on_ack(cl: mqtt.Client, u: Any, mid: int, rc: Any, p: Any) -> None:
        with pr.cond:
            pr.acks[mid] = rc
            pr.cond.notify_all()

    def on_message(cl: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with pr.cond:
            pr.topics.append(msg.topic)

    try:
        c = make_client(f"doctor-{cfg.device_id}-{os.getpid()}", tls=tls, on_connect=on_connect,
                        on_disconnect=on_disconnect, on_message=on_message)
    except (OSError, ssl.SSLError, ValueError) as err:
        return [_fail("broker", f"cannot load the TLS files: {err}", "provision the device again")]
    c.on_publish, c.on_subscribe = on_ack, on_ack
    try:
        c.connect(b.host, b.port, keepalive=10)
    except (OSError, ssl.SSLError) as err:
        return [_fail("broker", f"cannot reach {where}: {err}",
                      "check the network cable/Wi-Fi, the broker address in the config and the firewall (port "
                      f"{b.port})")]
    c.loop_start()
    try:
        with pr.cond:
            pr.cond.wait_for(lambda: pr.connack is not None or pr.dropped, timeout_s)
        if pr.connack is None or pr.connack.is_failure:
            why = str(pr.connack) if pr.connack is not None else "the TLS login was refused or timed out"
            return [_fail("broker", f"{where}: {why}",
                          "the certificate may be revoked or from another site's CA: reprovision the device")]
        out = [_ok("broker", f"logged in to {where} over TLS as {cfg.device_id}")]
        own_state = topic(cfg.site, cfg.device_id, Channel.STATE)
        info = c.publish(own_state, b"", qos=1)  # empty and not retained: changes nobody's view of the device
        with pr.cond:
            pr.cond.wait_for(lambda: info.mid in pr.acks, timeout_s)
        rc = pr.acks.get(info.mid)
        if rc is None or rc.is_failure:
            out.append(_fail("broker ACL", f"may not publish its own state on {own_state}: {rc}",
                             "the broker ACL or the certificate name is wrong: regenerate the ACL for this site"))
        else:
            out.append(_ok("broker ACL", f"may publish its own state ({own_state})"))
        mine = f"spd/v1/{cfg.site}/{cfg.device_id}/"
        for f in ("#", "$SYS/#"):
            c.subscribe(f, qos=1)
        time.sleep(listen_s)  # retained messages of other devices and $SYS would arrive now
        with pr.cond:
            foreign = sorted({t for t in pr.topics if not t.startswith(mine)})
        if foreign:
            out.append(_fail("broker ACL", f"subscribing to '#' received other topics: {', '.join(foreign[:3])}",
                             "the broker lets this device read what is not its own: fix the ACL now"))
        else:
            out.append(_ok("broker ACL", "subscribing to '#' and '$SYS/#' receives nothing but its own topics"))
        return out
    finally:
        c.disconnect()
        c.loop_stop()


def run_checks(config_path: Path, *, broker_timeout_s: float = 5.0) -> tuple[DeviceConfig | None, list[Finding]]:
    from device.commands.provision import register_sections

    register_sections()
    try:
        cfg = load_config(config_path)
    except ConfigError as err:
        from device.commands.provision import PENDING_KEY_FILE

        if not config_path.exists() and (config_path.parent / PENDING_KEY_FILE).exists():
            return None, [_fail("config", f"{config_path} is not there, and an enrolment did not finish: its key "
                                          f"is kept in {config_path.parent / PENDING_KEY_FILE}",
                                "run the same spd-device provision command again, with the same token, to resume")]
        return None, [_fail("config", str(err), "fix that line in the file; every option must be known and typed")]
    findings = [_ok("config", f"{config_path} is valid")]
    findings += check_serial(cfg)
    findings += [check_gpio(cfg), check_camera(cfg), check_clock(cfg), check_disk(cfg), check_event_log(cfg),
                 check_certificate(cfg), check_command_key(cfg)]
    findings += check_broker(cfg, timeout_s=broker_timeout_s)
    return cfg, findings


def format_report(cfg: DeviceConfig | None, findings: list[Finding]) -> str:
    head = f"spd-device doctor: {cfg.device_id} at site {cfg.site}" if cfg else "spd-device doctor"
    lines = [head, ""]
    for f in findings:
        lines.append(f"  {f.status.value:<5} {f.check:<12} {f.message}")
        if f.hint and f.status in (Status.FAIL, Status.WARN):
            lines.append(f"  {'':<5} {'':<12} -> {f.hint}")
    fails = sum(f.status is Status.FAIL for f in findings)
    warns = sum(f.status is Status.WARN for f in findings)
    lines += ["", f"{len(findings)} checks: {fails} failed, {warns} warning(s). "
              + ("The device is NOT ready." if fails else "The device is ready.")]
    return "\n".join(lines)


def _doctor(a: argparse.Namespace) -> int:
    cfg, findings = run_checks(a.config, broker_timeout_s=a.broker_timeout)
    print(format_report(cfg, findings))
    return 1 if any(f.status is Status.FAIL for f in findings) else 0


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check config, hardware, clock, disk, log, certificate and broker")
    p.add_argument("--config", type=Path, default=Path("/etc/spd-device/device.toml"),
                   help="the device configuration file (TOML)")
    p.add_argument("--broker-timeout", type=float, default=5.0,
                   help="seconds to wait for the broker before reporting it unreachable")
    p.set_defaults(func=_doctor)
