"""``spd-device provision | reprovision | reset | export-events``: give a device its identity, change it, retire it.

The device's private key is generated here and never leaves it (mode 0600).
Enrolment pins the site CA by the fingerprint the technician was given with
the token. A device that still holds events the gateway has not acknowledged
is never re-identified or reset until those events are delivered, or
exported to a file for ``spd-gateway import-events``; the old log is
archived, never deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib
import json
import logging
import os
import shutil
import ssl
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device.config import ConfigError, DeviceConfig, load_config, parse_config
from device.durable import write_atomic
from device.eventlog import EventLog
from device.export import EventExport, write_export
from device.sync import DeviceSync, TlsSettings
from device.wire import ID_PATTERN

log = logging.getLogger(__name__)

KEY_FILE, CERT_FILE, CA_FILE, COMMAND_KEY_FILE = "device.key", "device.crt", "ca.crt", "command-key.pem"
IDENTITY_FILES = (KEY_FILE, CERT_FILE, CA_FILE, COMMAND_KEY_FILE)
CORE_SECTIONS = ("device", "broker", "remote")


class ProvisionError(Exception):
    """Root of provisioning errors; ``reason`` is a stable code."""

    reason = "provision_error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason


class EnrolmentFailed(ProvisionError, ConnectionError):
    reason = "enrolment_failed"


class UnsyncedEvents(ProvisionError, RuntimeError):
    """The log holds events the gateway has not acknowledged: deliver or export them first."""

    reason = "unsynced_events"


# ---------------------------------------------------------------- enrolment client


def _fingerprint_pem(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _https(url: str, ctx: ssl.SSLContext, timeout_s: float) -> http.client.HTTPSConnection:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise EnrolmentFailed(f"enrolment URL must be https://host:port, got {url!r}")
    return http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=timeout_s)


def fetch_pinned_ca(url: str, fingerprint: str, *, timeout_s: float = 10.0) -> bytes:
    """The site CA certificate from the enrolment service, accepted only if its SHA-256 matches ``fingerprint``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted from this connection until the pin matches
    conn = _https(url, ctx, timeout_s)
    try:
        conn.request("GET", "/v1/ca")
        resp = conn.getresponse()
        pem = resp.read()
    except OSError as err:
        raise EnrolmentFailed(f"cannot reach the enrolment service at {url}: {err}") from None
    finally:
        conn.close()
    try:
        got = _fingerprint_pem(pem)
    except ValueError:
        raise EnrolmentFailed("the enrolment service did not send a certificate") from None
    want = fingerprint.replace(":", "").lower()
    if got != want:
        raise EnrolmentFailed(f"CA fingerprint mismatch: expected {want}, the service presented {got}. "
                              "Stop: this is not your site's gateway.", "fingerprint_mismatch")
    return pem


def request_certificate(url: str, ca_pem: bytes, token: str, csr_pem: bytes, *,
                        timeout_s: float = 10.0) -> dict[str, Any]:
    """POST the token and CSR over TLS verified against the pinned CA; returns the service's answer."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    conn = _https(url, ctx, timeout_s)
    body = json.dumps({"token": token, "csr": csr_pem.decode()}).encode()
    try:
        conn.request("POST", "/v1/enrol", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    except (OSError, ValueError) as err:
        raise EnrolmentFailed(f"enrolment request failed: {err}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise EnrolmentFailed(f"enrolment refused: {doc.get('error')}: {doc.get('detail', '')}",
                              str(doc.get("error", "refused")))
    return dict(doc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).sign(key, _sha256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


# ---------------------------------------------------------------- config writing


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ProvisionError(f"cannot write {type(v).__name__} to the config")


def to_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for configs: scalars, lists, tables and arrays of tables."""
    out: list[str] = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) and not _is_table_array(v)}
    if scalars and prefix:
        out.append(f"[{prefix}]")
    out += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for k, v in doc.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.append(to_toml(v, name))
        elif _is_table_array(v):
            for t in v:
                out.append(f"[[{name}]]")
                out += [f"{kk} = {_toml_value(vv)}" for kk, vv in t.items()]
    return "\n".join(x for x in out if x) + "\n"


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


SECTION_MODULES = ("device.cabinet.config",)
"""Modules that register config sections; imported so a written config is validated whole."""


def register_sections() -> None:
    for name in SECTION_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def _write_config(config_path: Path, doc: dict[str, Any]) -> DeviceConfig:
    """Write the config only after it parses and its identity files check out."""
    register_sections()
    text = "# spd-device configuration, written by spd-device provision\n" + to_toml(doc)
    cfg = parse_config(tomllib.loads(text), source=str(config_path), base_dir=config_path.parent)
    check_identity_files(cfg)
    write_atomic(config_path, text.encode())
    return cfg


def check_identity_files(cfg: DeviceConfig) -> None:
    """The certificate names this device, matches its key, and was issued by the CA on file."""
    tls = cfg.broker.tls
    if tls is None:
        raise ProvisionError("the config has no [broker.tls] section")
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    key = serialization.load_pem_private_key(tls.key_file.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    cn = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cn != [cfg.device_id]:
        raise ProvisionError(f"certificate names {cn}, the device is {cfg.device_id!r}", "cert_mismatch")
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ProvisionError("the certificate does not match the private key", "cert_mismatch")
    cert.verify_directly_issued_by(ca)


# ---------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class Retirement:
    """What happened to the previous identity's events."""

    backlog: int
    delivered: bool
    export: EventExport | None
    archive_dir: Path | None


def provision(config_path: str | Path, *, url: str, token: str, ca_fingerprint: str,
              data_dir: str | Path = "/var/lib/spd-device", kind: str = "cabinet",
              sections: dict[str, Any] | None = None, timeout_s: float = 10.0,
              owner: str | None = None) -> DeviceConfig:
    """Enrol with a one-time token and write a validated config next to the new key and certificate."""
    cfg_path = Path(config_path)
    if cfg_path.exists():
        raise ProvisionError(f"{cfg_path} exists: this device is provisioned (use reprovision or reset)",
                             "already_provisioned")
    return _enrol_and_write(cfg_path, url=url, token=token, ca_fingerprint=ca_fingerprint, data_dir=Path(data_dir),
                            kind=kind, sections=sections or {}, timeout_s=timeout_s, owner=owner)


def _enrol_and_write(cfg_path: Path, *, url: str, token: str, ca_fingerprint: str, data_dir: Path, kind: str,
                     sections: dict[str, Any], timeout_s: float, owner: str | None = None) -> DeviceConfig:
    parts = token.strip().split("/")
    if len(parts) != 3 or not all(ID_PATTERN.match(p) for p in parts[:2]):
        raise ProvisionError("an enrolment token looks like SITE/DEVICE/SECRET", "bad_token")
    site, device = parts[0], parts[1]
    etc = cfg_path.parent
    etc.mkdir(parents=True, exist_ok=True)
    ca_pem = fetch_pinned_ca(url, ca_fingerprint, timeout_s=timeout_s)
    key = _new_key()
    pending_key = etc / (KEY_FILE + ".new")
    write_atomic(pending_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()), mode=0o600)
    answer = request_certificate(url, ca_pem, token, _csr(key, device), timeout_s=timeout_s)
    if answer.get("device") != device or answer.get("site") != site:
        raise EnrolmentFailed(f"the service enrolled {answer.get('site')}/{answer.get('device')}, "
                              f"not {site}/{device}")
    os.replace(pending_key, etc / KEY_FILE)
    write_atomic(etc / CERT_FILE, str(answer["cert"]).encode())
    write_atomic(etc / CA_FILE, ca_pem)
    write_atomic(etc / COMMAND_KEY_FILE, str(answer["command_key"]).encode())
    broker = answer.get("broker", {})
    doc: dict[str, Any] = {
        "device": {"id": device, "site": site, "kind": kind, "data_dir": str(data_dir)},
        "broker": {"host": str(broker.get("host", "127.0.0.1")), "port": int(broker.get("port", 8883)),
                   "tls": {"ca_file": CA_FILE, "cert_file": CERT_FILE, "key_file": KEY_FILE}},
        "remote": {"command_key_file": COMMAND_KEY_FILE},
    }
    doc.update({k: v for k, v in sections.items() if k not in CORE_SECTIONS})
    cfg = _write_config(cfg_path, doc)
    if owner:
        _chown(owner, [cfg_path, *(etc / n for n in IDENTITY_FILES)])
    log.info("provisioned %s at site %s", device, site)
    return cfg


def _chown(owner: str, paths: list[Path]) -> None:
    """Give the files to the agent's user (the key stays 0600: readable by that user alone)."""
    import pwd

    try:
        pw = pwd.getpwnam(owner)
    except KeyError:
        raise ProvisionError(f"no user {owner!r} on this system (deploy/install.sh creates 'spd')") from None
    for p in paths:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def deliver_backlog(cfg: DeviceConfig, log_: EventLog, *, timeout_s: float) -> bool:
    """Try to get every event acknowledged over the broker within ``timeout_s``."""
    tls = cfg.broker.tls
    sync = DeviceSync(log_, site=cfg.site, host=cfg.broker.host, port=cfg.broker.port, reconnect_min_s=0.2,
                      reconnect_max_s=2.0, resend_after_s=2.0, batch_size=cfg.sync.batch_size,
                      tls=TlsSettings(str(tls.ca_file), str(tls.cert_file), str(tls.key_file)) if tls else None)
    sync.start()
    deadline = time.monotonic() + timeout_s
    try:
        while log_.backlog() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sync.stop(publish_offline=True)
    return log_.backlog() == 0


def retire_events(cfg: DeviceConfig, *, export_to: Path | None, deliver_timeout_s: float) -> Retirement:
    """Make sure no unacknowledged event is left behind, then archive the log (never delete it)."""
    if not cfg.log_path.exists():
        return Retirement(0, True, None, None)
    elog = EventLog(cfg.log_path, device=cfg.device_id)
    try:
        backlog = elog.backlog()
        delivered = backlog == 0
        if not delivered and deliver_timeout_s > 0:
            delivered = deliver_backlog(cfg, elog, timeout_s=deliver_timeout_s)
        exported = None
        if not delivered:
            if export_to is None:
                raise UnsyncedEvents(
                    f"{elog.backlog()} event(s) of {cfg.device_id} are not yet acknowledged by the gateway. "
                    "Deliver them (--deliver-timeout SECONDS, with the broker reachable) or export them "
                    "(--export FILE) and run 'spd-gateway import-events FILE' at the gateway.")
            exported = write_export(export_to, site=cfg.site, device=cfg.device_id,
                                    events=elog.unacked(limit=10_000_000))
            log.warning("exported %d unacknowledged events to %s", len(exported.events), export_to)
        backlog_now = elog.backlog()
    finally:
        elog.close()
    archive = cfg.data_dir / "archive" / f"{cfg.site}-{cfg.device_id}-{time.strftime('%Y%m%dT%H%M%S')}"
    archive.mkdir(parents=True, exist_ok=True)
    for name in ("events.db", "events.db-wal", "events.db-shm", "commands.db", "commands.db-wal", "commands.db-shm"):
        p = cfg.data_dir / name
        if p.exists():
            os.replace(p, archive / name)
    return Retirement(backlog_now, delivered, exported, archive)


def _archive_identity(cfg_path: Path, archive: Path) -> None:
    archive.mkdir(parents=True, exist_ok=True)
    for name in (*IDENTITY_FILES, cfg_path.name):
        p = cfg_path.parent / name
        if p.exists():
            shutil.move(str(p), archive / name)
    os.chmod(archive, 0o700)


def reprovision(config_path: str | Path, *, url: str, token: str, ca_fingerprint: str,
                export_to: Path | None = None, deliver_timeout_s: float = 0.0,
                layout: dict[str, Any] | None = None, timeout_s: float = 10.0,
                owner: str | None = None) -> tuple[DeviceConfig, Retirement]:
    """New site, identity and (optionally) layout. Refuses while unacknowledged events would be left behind."""
    cfg_path = Path(config_path)
    register_sections()
    old = load_config(cfg_path)
    old_doc = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    retired = retire_events(old, export_to=export_to, deliver_timeout_s=deliver_timeout_s)
    archive = retired.archive_dir or (old.data_dir / "archive" / f"{old.site}-{old.device_id}")
    staged = archive / "config"
    _archive_identity(cfg_path, staged)
    sections = {k: v for k, v in old_doc.items() if k not in CORE_SECTIONS}
    sections.update(layout or {})
    try:
        cfg = _enrol_and_write(cfg_path, url=url, token=token, ca_fingerprint=ca_fingerprint, data_dir=old.data_dir,
                               kind=old.kind, sections=sections, timeout_s=timeout_s, owner=owner)
    except Exception:
        # enrolment failed: put the previous identity back so the device still works as before
        for p in staged.iterdir():
            shutil.move(str(p), cfg_path.parent / p.name)
        raise
    return cfg, retired


def reset(config_path: str | Path, *, export_to: Path | None = None, deliver_timeout_s: float = 0.0) -> Retirement:
    """Back to unprovisioned: identity and config archived, events delivered or exported first."""
    cfg_path = Path(config_path)
    register_sections()
    cfg = load_config(cfg_path)
    retired = retire_events(cfg, export_to=export_to, deliver_timeout_s=deliver_timeout_s)
    archive = retired.archive_dir or (cfg.data_dir / "archive" / f"{cfg.site}-{cfg.device_id}")
    _archive_identity(cfg_path, archive / "config")
    return retired


def export_events(config_path: str | Path, out: Path) -> EventExport:
    register_sections()
    cfg = load_config(config_path)
    elog = EventLog(cfg.log_path, device=cfg.device_id)
    try:
        return write_export(out, site=cfg.site, device=cfg.device_id, events=elog.unacked(limit=10_000_000))
    finally:
        elog.close()


# ---------------------------------------------------------------- command line


def _load_layout(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(str(path), "(layout)", str(err)) from None


def _cmd(fn: Any) -> Any:
    def run(a: argparse.Namespace) -> int:
        try:
            return int(fn(a))
        except (ProvisionError, ConfigError) as err:
            print(f"refused: {err}")
            return 3 if isinstance(err, UnsyncedEvents) else 2
    return run


def _provision(a: argparse.Namespace) -> int:
    cfg = provision(a.config, url=a.url, token=a.token, ca_fingerprint=a.ca_fingerprint, data_dir=a.data_dir,
                    kind=a.kind, sections=_load_layout(a.layout), owner=a.owner)
    print(f"provisioned {cfg.device_id} at site {cfg.site}; config written to {a.config}")
    return 0


def _report(r: Retirement) -> None:
    if r.export is not None:
        print(f"exported {len(r.export.events)} unacknowledged events (seq {r.export.first_seq}.."
              f"{r.export.last_seq}): import them at the gateway with 'spd-gateway import-events FILE'")
    elif r.delivered:
        print("every event was acknowledged by the gateway")
    if r.archive_dir is not None:
        print(f"previous log archived in {r.archive_dir}")


def _reprovision(a: argparse.Namespace) -> int:
    cfg, r = reprovision(a.config, url=a.url, token=a.token, ca_fingerprint=a.ca_fingerprint, export_to=a.export,
                         deliver_timeout_s=a.deliver_timeout, layout=_load_layout(a.layout), owner=a.owner)
    _report(r)
    print(f"reprovisioned as {cfg.device_id} at site {cfg.site}")
    return 0


def _reset(a: argparse.Namespace) -> int:
    _report(reset(a.config, export_to=a.export, deliver_timeout_s=a.deliver_timeout))
    print("device reset: identity and config archived; provision it again to use it")
    return 0


def _export(a: argparse.Namespace) -> int:
    exp = export_events(a.config, a.out)
    print(f"exported {len(exp.events)} events of {exp.device} to {a.out}")
    return 0


def register(sub: Any) -> None:
    default_cfg = Path("/etc/spd-device/device.toml")

    def enrol_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", required=True, help="the gateway's enrolment service, https://host:port")
        p.add_argument("--token", required=True, help="one-time token SITE/DEVICE/SECRET")
        p.add_argument("--ca-fingerprint", required=True, help="SHA-256 of the site CA, given with the token")
        p.add_argument("--layout", type=Path, default=None, help="TOML with the cabinet's other sections")
        p.add_argument("--owner", default=None, help="give config, key and certificate to this user (e.g. spd)")

    def retire_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--export", type=Path, default=None, help="write unacknowledged events to this file")
        p.add_argument("--deliver-timeout", type=float, default=0.0, help="seconds to try delivering them first")

    p = sub.add_parser("provision", help="enrol this device with a one-time token")
    p.add_argument("--config", type=Path, default=default_cfg, help="the device configuration file (TOML)")
    p.add_argument("--data-dir", type=Path, default=Path("/var/lib/spd-device"),
                   help="where the event log and device state live")
    p.add_argument("--kind", choices=("cabinet", "handheld"), default="cabinet", help="what this device is")
    enrol_args(p)
    p.set_defaults(func=_cmd(_provision))

    r = sub.add_parser("reprovision", help="new site/identity/layout; never leaves events behind")
    r.add_argument("--config", type=Path, default=default_cfg, help="the device configuration file (TOML)")
    enrol_args(r)
    retire_args(r)
    r.set_defaults(func=_cmd(_reprovision))

    z = sub.add_parser("reset", help="retire this device's identity; never leaves events behind")
    z.add_argument("--config", type=Path, default=default_cfg, help="the device configuration file (TOML)")
    retire_args(z)
    z.set_defaults(func=_cmd(_reset))

    e = sub.add_parser("export-events", help="write unacknowledged events to a file for import-events")
    e.add_argument("--config", type=Path, default=default_cfg, help="the device configuration file (TOML)")
    e.add_argument("--out", type=Path, required=True, help="the export file to write")
    e.set_defaults(func=_cmd(_export))
