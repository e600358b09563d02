"""``spd-device provision | reprovision | reset | export-events``: give a device its identity, change it, retire it.

The device's private key is generated here and never leaves it (mode 0600).
Enrolment pins the site CA by the fingerprint the technician was given with
the token. A device that still holds events the gateway has not acknowledged
is never re-identified or reset until those events are delivered, or
exported to a file for ``spd-gateway import-events``; the old log is
archived, never deleted.

A provisioning that fails is resumed, not cleaned up by hand:

* what can be checked on the device (token shape, layout and config,
  ``--owner``) is checked before the token is sent, so a bad layout costs
  nothing;
* refused by the service (unknown, used or expired token, bad CSR): the
  token is untouched by a refusal, the key made for it is removed, nothing
  else was written;
* no answer (link lost, timeout) or a failure after the certificate came
  (disk full, a file that cannot be written): the files of that attempt are
  removed, no config is written, and only the key is kept, in
  ``device.key.pending`` (0600). Running the same command with the same
  token resumes: the same key asks again and the service sends the same
  certificate (a token it already used for this key, see
  ``gateway.enrol``). ``reset`` archives the pending key with the identity.

A ``reprovision`` that fails puts the previous identity and its event log
back, so the device goes on as before.
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

from device.config import DeviceConfig, load_config, parse_config
from device.eventlog import EventLog
from device.sync import DeviceSync
from spd_common.durable import fsync_dir, write_atomic
from spd_common.export import EventExport, write_export
from spd_common.toml_config import ConfigError
from spd_common.wire import ID_PATTERN

log = logging.getLogger(__name__)

KEY_FILE, CERT_FILE, CA_FILE, COMMAND_KEY_FILE = "device.key", "device.crt", "ca.crt", "command-key.pem"
PENDING_KEY_FILE = KEY_FILE + ".pending"
"""The key of an enrolment not finished yet: kept (0600) so that the next try resumes it."""
NO_ANSWER = "no_answer"
INCOMPLETE = "provision_incomplete"
"""Reasons of a provisioning that the same command, run again with the same token, resumes."""
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
        raise EnrolmentFailed(f"no answer from the enrolment service: {err or type(err).__name__}.",
                              NO_ANSWER) from None
    finally:
        conn.close()
    if not isinstance(doc, dict):
        raise EnrolmentFailed(f"the enrolment service answered {resp.status} without a JSON object", NO_ANSWER)
    if resp.status >= 500:  # it failed on its side, perhaps after issuing: as good as no answer
        raise EnrolmentFailed(f"the enrolment service failed ({resp.status}): {doc.get('detail', '')}.", NO_ANSWER)
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


def _parse_doc(config_path: Path, doc: dict[str, Any]) -> tuple[str, DeviceConfig]:
    """The config's text and what it parses to (every registered section checked), or :class:`ConfigError`."""
    register_sections()
    text = "# spd-device configuration, written by spd-device provision\n" + to_toml(doc)
    return text, parse_config(tomllib.loads(text), source=str(config_path), base_dir=config_path.parent)


def _write_config(config_path: Path, doc: dict[str, Any]) -> DeviceConfig:
    """Write the config only after it parses and its identity files check out."""
    text, cfg = _parse_doc(config_path, doc)
    check_identity_files(cfg)
    write_atomic(config_path, text.encode())
    return cfg


def check_identity_files(cfg: DeviceConfig) -> None:
    """The certificate names this device, matches its key, and was issued by the CA on file."""
    tls = cfg.broker.tls
    if tls is None:
        raise ProvisionError("the config has no [broker.tls] section")
    cert = x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes())
    key = serialization.load_pem_private_key(Path(tls.key_file).read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(Path(tls.ca_file).read_bytes())
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
    """Enrol and write the identity files and the config; see "A provisioning that fails" in the module docstring."""
    site, device = _precheck(cfg_path, token=token, kind=kind, data_dir=data_dir, sections=sections, owner=owner)
    etc = cfg_path.parent
    etc.mkdir(parents=True, exist_ok=True)
    ca_pem = fetch_pinned_ca(url, ca_fingerprint, timeout_s=timeout_s)
    pending_key = etc / PENDING_KEY_FILE
    key = _pending_or_new_key(pending_key)
    try:
        answer = request_certificate(url, ca_pem, token, _csr(key, device), timeout_s=timeout_s)
    except EnrolmentFailed as err:
        if err.reason == NO_ANSWER:  # the certificate may have been issued to this key: keep it to resume
            raise EnrolmentFailed(f"{err} The key made for this enrolment is kept in {pending_key}: run the same "
                                  "command again with the same token to resume.", NO_ANSWER) from None
        pending_key.unlink(missing_ok=True)  # refused: nothing was issued to this key
        raise
    if answer.get("device") != device or answer.get("site") != site:
        pending_key.unlink(missing_ok=True)
        raise EnrolmentFailed(f"the service enrolled {answer.get('site')}/{answer.get('device')}, "
                              f"not {site}/{device}")
    written: list[Path] = []
    try:
        for name, data, mode in ((KEY_FILE, pending_key.read_bytes(), 0o600),
                                 (CERT_FILE, str(answer["cert"]).encode(), 0o644),
                                 (CA_FILE, ca_pem, 0o644),
                                 (COMMAND_KEY_FILE, str(answer["command_key"]).encode(), 0o644)):
            written.append(etc / name)
            write_atomic(etc / name, data, mode=mode)
        broker = answer.get("broker", {})
        doc = _config_doc(site, device, kind, data_dir,
                          {"host": str(broker.get("host", "127.0.0.1")), "port": int(broker.get("port", 8883))},
                          sections)
        if owner:
            _chown(owner, written)
        written.append(cfg_path)
        cfg = _write_config(cfg_path, doc)
        if owner:
            _chown(owner, [cfg_path])
    except Exception as err:
        for p in written:
            p.unlink(missing_ok=True)
        serial = _serial_of(str(answer.get("cert", "")))
        raise ProvisionError(
            f"{device} was enrolled (certificate {serial}) but provisioning failed: {err}. Nothing was kept but "
            f"the key in {pending_key}: fix the cause and run the same command again with the same token; it "
            "resumes with that key and the gateway sends the same certificate again.", INCOMPLETE,
        ) from err
    pending_key.unlink(missing_ok=True)
    fsync_dir(etc)
    log.info("provisioned %s at site %s%s", device, site, " (resumed)" if answer.get("resumed") else "")
    return cfg


def _precheck(cfg_path: Path, *, token: str, kind: str, data_dir: Path, sections: dict[str, Any],
              owner: str | None) -> tuple[str, str]:
    """What can be checked before the token is sent: its form, the config it will make, the owner; (site, device)."""
    parts = token.strip().split("/")
    if len(parts) != 3 or not all(ID_PATTERN.match(p) for p in parts[:2]):
        raise ProvisionError("an enrolment token looks like SITE/DEVICE/SECRET", "bad_token")
    site, device = parts[0], parts[1]
    if owner:
        _owner_ids(owner)
    _parse_doc(cfg_path, _config_doc(site, device, kind, data_dir, {"host": "127.0.0.1", "port": 8883}, sections))
    return site, device


def _config_doc(site: str, device: str, kind: str, data_dir: Path, broker: dict[str, Any],
                sections: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "device": {"id": device, "site": site, "kind": kind, "data_dir": str(data_dir)},
        "broker": {**broker, "tls": {"ca_file": CA_FILE, "cert_file": CERT_FILE, "key_file": KEY_FILE}},
        "remote": {"command_key_file": COMMAND_KEY_FILE},
    }
    doc.update({k: v for k, v in sections.items() if k not in CORE_SECTIONS})
    return doc


def _pending_or_new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key an earlier, unfinished enrolment made (to resume it), else a new one written there (0600)."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError:
            key = None  # a torn or foreign file: replaced below
        if isinstance(key, ec.EllipticCurvePrivateKey):
            log.info("resuming an unfinished enrolment with the key in %s", path)
            return key
    key = _new_key()
    write_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), mode=0o600)
    return key


def _serial_of(cert_pem: str) -> str:
    try:
        return format(x509.load_pem_x509_certificate(cert_pem.encode()).serial_number, "x")
    except ValueError:
        return "?"


def _owner_ids(owner: str) -> tuple[int, int]:
    import pwd

    try:
        pw = pwd.getpwnam(owner)
    except KeyError:
        raise ProvisionError(f"no user {owner!r} on this system (deploy/install.sh creates 'spd')") from None
    return pw.pw_uid, pw.pw_gid


def _chown(owner: str, paths: list[Path]) -> None:
    """Give the files to the agent's user (the key stays 0600: readable by that user alone)."""
    uid, gid = _owner_ids(owner)
    for p in paths:
        os.chown(p, uid, gid)


def deliver_backlog(cfg: DeviceConfig, log_: EventLog, *, timeout_s: float) -> bool:
    """Try to get every event acknowledged over the broker within ``timeout_s``."""
    tls = cfg.broker.tls
    sync = DeviceSync(log_, site=cfg.site, host=cfg.broker.host, port=cfg.broker.port, reconnect_min_s=0.2,
                      reconnect_max_s=2.0, resend_after_s=2.0, batch_size=cfg.sync.batch_size,
                      tls=tls)
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


def _archive_identity(cfg_path: Path, archive: Path, *, pending_too: bool = False) -> None:
    archive.mkdir(parents=True, exist_ok=True)
    for name in (*IDENTITY_FILES, cfg_path.name, *((PENDING_KEY_FILE,) if pending_too else ())):
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
    sections = {k: v for k, v in old_doc.items() if k not in CORE_SECTIONS}
    sections.update(layout or {})
    _precheck(cfg_path, token=token, kind=old.kind, data_dir=old.data_dir, sections=sections, owner=owner)
    retired = retire_events(old, export_to=export_to, deliver_timeout_s=deliver_timeout_s)
    archive = retired.archive_dir or (old.data_dir / "archive" / f"{old.site}-{old.device_id}")
    staged = archive / "config"
    _archive_identity(cfg_path, staged)
    try:
        cfg = _enrol_and_write(cfg_path, url=url, token=token, ca_fingerprint=ca_fingerprint, data_dir=old.data_dir,
                               kind=old.kind, sections=sections, timeout_s=timeout_s, owner=owner)
    except Exception:
        # enrolment failed: put the previous identity back, and its event log with it, so the device goes on
        # exactly as before (a fresh log would restart at seq 1, which the gateway already holds)
        for p in staged.iterdir():
            shutil.move(str(p), cfg_path.parent / p.name)
        if retired.archive_dir is not None:
            for p in retired.archive_dir.iterdir():
                if p.is_file() and not (old.data_dir / p.name).exists():
                    os.replace(p, old.data_dir / p.name)
        raise
    return cfg, retired


def reset(config_path: str | Path, *, export_to: Path | None = None, deliver_timeout_s: float = 0.0) -> Retirement:
    """Back to unprovisioned: identity and config archived, events delivered or exported first."""
    cfg_path = Path(config_path)
    register_sections()
    cfg = load_config(cfg_path)
    retired = retire_events(cfg, export_to=export_to, deliver_timeout_s=deliver_timeout_s)
    archive = retired.archive_dir or (cfg.data_dir / "archive" / f"{cfg.site}-{cfg.device_id}")
    _archive_identity(cfg_path, archive / "config", pending_too=True)
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
            resumable = getattr(err, "reason", "") in (NO_ANSWER, INCOMPLETE)
            print(f"{'not finished' if resumable else 'refused'}: {err}")
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
