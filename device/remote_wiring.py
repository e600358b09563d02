"""Signed remote commands for a running cabinet: unlock through the session state machine, pushed components applied.

:func:`build_remote` assembles, from the device configuration's ``[remote]``
section, the verifier (the gateway's public key), the persistent replay
guard (``commands.db`` in the data directory), the desired-state store and
the device's catalog cache (``remote/{site}-{device}/desired/`` and
``.../catalog-cache.json``: versions belong to one identity's gateway), and
returns a :class:`CabinetRemote` whose :meth:`CabinetRemote.on_command` is
given to :class:`device.sync.DeviceSync` as ``on_command`` and whose
:meth:`CabinetRemote.state_extra` is its ``state_extra``.

What an accepted command does:

* ``unlock`` — on the cabinet loop thread, opens a session for the person who
  asked at the gateway and releases the locks for the asked time, capped by
  the doors' ``max_energised_s``; the door opening is then authorised, as
  after a badge. Refused (recorded) while the cabinet is not idle.
* ``desired_state`` — each component newer than the applied one is checked
  and installed *before* its version is recorded, so a refused or failed
  component keeps the previous one in force and its version is not reported
  as applied (the gateway sees the device behind and re-sends later):

  - ``allowlist``: the cabinet's allow-list format (``{"badges": [...]}``, or
    the list of badges alone), validated whole, written atomically and fsynced
    with the component's version, then reloaded;
  - ``catalog``: the device catalog document, installed by
    :meth:`device.catalog_cache.CatalogCache.apply` (which validates it);
  - ``config``: top-level sections overlaid on the configuration file at the
    next start; it must parse merged with the file, and may not touch
    ``[device]``, ``[broker]`` or ``[remote]``. The state reports
    ``restart_required`` until the agent restarts with it.

  A refused component is logged and recorded as an ``alarm`` event
  (``type = component_refused``) with a stable reason.

* ``lockdown`` — ``{"on": true, "reason": ...}`` is written to
  ``remote/{site}-{device}/lockdown.json`` (fsynced, renamed) and then, on
  the cabinet loop, every lock is held, a session not yet in use ends and
  every badge is refused (``access`` refusal, ``reason = lockdown``) until a
  signed ``lockdown`` with ``on: false``. :func:`build_remote` re-applies a
  stored lockdown before the agent starts, so it survives a restart; the
  retained state carries ``lockdown`` while it is on.
* ``rotate_credentials`` — on its own thread (the network thread must keep
  running), :func:`device.credentials.rotate` renews the certificate at the
  signed ``args.url`` with a new key. MQTT's TLS context holds the pair it
  was started with, so on success the rotation is recorded (``access``
  event ``type = credentials_rotated``) and :attr:`CabinetRemote.restart` is
  called: ``spd-device run`` then stops and exits with
  :data:`RESTART_EXIT_CODE`, and its service manager starts it again with the
  new pair. On failure the current pair stays and an ``alarm``
  (``type = rotation_failed``) records why.

Threads: :meth:`CabinetRemote.on_command` runs on paho's network thread; the
unlock itself is posted to the cabinet loop, the only thread that touches the
session state machine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from device.cabinet.allowlist import AllowList
from device.catalog_cache import CatalogCache, CatalogCacheError
from device.config import DeviceConfig, RemoteConfig, load_config, parse_config
from device.credentials import CredentialError, CredentialFiles, finish_pending_swap, rotate
from device.eventlog import EventLog
from device.remote import (
    CommandVerifier,
    DesiredState,
    RemoteCommands,
    RemoteError,
    ReplayGuard,
    SignedCommand,
    load_public_key,
)
from spd_common.allowlist import AllowListError, parse_allowlist, write_allowlist
from spd_common.command_schema import CommandKind, Component
from spd_common.durable import write_atomic
from spd_common.toml_config import ConfigError
from spd_common.wire import EventKind

if TYPE_CHECKING:
    from device.cabinet.agent import CabinetAgent

log = logging.getLogger(__name__)

REPLAY_DB: Final = "commands.db"
REMOTE_DIR: Final = "remote"
DESIRED_DIR: Final = "desired"
CATALOG_CACHE_FILE: Final = "catalog-cache.json"
LOCKDOWN_FILE: Final = "lockdown.json"
RESTART_EXIT_CODE: Final = 75  # EX_TEMPFAIL: the service manager restarts the agent (Restart=on-failure)
PROTECTED_SECTIONS: Final = frozenset({"device", "broker", "remote"})


class RemoteWiringError(RemoteError):
    """Errors acting on accepted remote commands on the cabinet; ``reason`` is a stable code."""

    reason = "remote_wiring_error"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} [{reason}]")
        self.reason = reason
        self.message = message


class ComponentRefused(RemoteWiringError, ValueError):
    """A pushed component failed its checks; the one in force stays."""


class BadUnlock(RemoteWiringError, ValueError):
    """An unlock command whose arguments cannot be acted on."""


class BadCommandArgs(RemoteWiringError, ValueError):
    """A lockdown or rotation command whose arguments cannot be acted on."""


def remote_config(cfg: DeviceConfig) -> RemoteConfig | None:
    """The ``[remote]`` section, or None when the device takes no remote commands."""
    value = cfg.extra.get("remote")
    return value if isinstance(value, RemoteConfig) else None


def identity_dir(cfg: DeviceConfig) -> Path:
    """Where pushed state is kept: per site and device id, so a reprovisioned cabinet starts from none."""
    return cfg.data_dir / REMOTE_DIR / f"{cfg.site}-{cfg.device_id}"


def desired_dir(cfg: DeviceConfig) -> Path:
    return identity_dir(cfg) / DESIRED_DIR


def catalog_cache_path(cfg: DeviceConfig) -> Path:
    """The device's offline catalog (read by :class:`device.scan_policy.ScanPolicy`)."""
    return identity_dir(cfg) / CATALOG_CACHE_FILE


# ---------------------------------------------------------------- pushed configuration


@dataclass(frozen=True, slots=True)
class EffectiveConfig:
    """The configuration in force: the file with the pushed overlay, and the overlay's version (0: none)."""

    config: DeviceConfig
    config_version: int


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(str(path), "(file)", str(err)) from None


def overlay(base: Mapping[str, Any], pushed: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``pushed`` merged in: tables merge key by key, anything else (lists too) is replaced."""
    out = dict(base)
    for key, value in pushed.items():
        old = out.get(key)
        out[key] = overlay(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def check_pushed_config(config_path: Path, doc: Any) -> DeviceConfig:
    """The configuration ``doc`` would give with the file at ``config_path``; raises :class:`ComponentRefused`."""
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise ComponentRefused("bad_config", "a pushed config is an object of sections (tables)")
    touched = sorted(PROTECTED_SECTIONS & set(doc))
    if touched:
        raise ComponentRefused("protected_section", f"a pushed config may not change [{touched[0]}]")
    try:
        base = _read_toml(config_path)
        merged = parse_config(overlay(base, doc), source=str(config_path), base_dir=config_path.parent)
    except ConfigError as err:
        raise ComponentRefused("bad_config", f"pushed config does not parse with the local file: {err}") from None
    except RecursionError:
        raise ComponentRefused("bad_config", "pushed config is nested too deeply") from None
    return merged


def load_effective_config(config_path: str | Path) -> EffectiveConfig:
    """Load the configuration file, with the last pushed config overlaid when one was applied."""
    path = Path(config_path)
    base = load_config(path)
    pushed_file = desired_dir(base) / f"{Component.CONFIG.value}.json"
    if remote_config(base) is None or not pushed_file.exists():
        return EffectiveConfig(base, 0)
    try:
        stored = json.loads(pushed_file.read_text(encoding="utf-8"))
        version = int(stored["version"])
        merged = check_pushed_config(path, stored["doc"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.error("pushed config in %s not used, running on %s alone: %s", pushed_file, path, err)
        return EffectiveConfig(base, 0)
    log.info("configuration %s with pushed config version %d", path, version)
    return EffectiveConfig(merged, version)


# ---------------------------------------------------------------- lockdown state


class LockdownStore:
    """The lockdown in force (or none), in one JSON file written atomically and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # unreadable: fail closed
            log.error("lockdown file %s unreadable, staying locked down: %s", self.path, err)
            return {"on": True, "reason": "lockdown file unreadable", "seq": 0, "by": "", "at_ms": 0}
        return doc if isinstance(doc, dict) and doc.get("on") is True else None

    def save(self, doc: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(doc, sort_keys=True).encode("utf-8"))


# ---------------------------------------------------------------- the cabinet's command handlers


class DeviceRemote:
    """Remote commands of one running device agent; the device kind supplies the hooks (see :class:`CabinetRemote`)."""

    def __init__(
        self,
        *,
        config_path: Path,
        eventlog: EventLog,
        verifier: CommandVerifier,
        replay: ReplayGuard,
        desired: DesiredState,
        catalog: CatalogCache,
        config_version: int = 0,
        lockdown: LockdownStore | None = None,
        credentials: CredentialFiles | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.log = eventlog
        self.replay = replay
        self.desired = desired
        self.catalog = catalog
        self.config_version = config_version  # the pushed config version this process runs with
        self.notify: Callable[[], None] = lambda: None  # set to wake sync and publish the state
        self.restart: Callable[[], None] = lambda: None  # set to restart the agent (new credentials)
        self.lockdown = lockdown
        self.credentials = credentials
        self.rotations: list[threading.Thread] = []
        handlers: dict[CommandKind, Callable[[SignedCommand], None]] = {
            CommandKind.DESIRED_STATE: self._desired_state, **self._device_handlers()}
        if lockdown is not None:
            handlers[CommandKind.LOCKDOWN] = self._lockdown
            stored = lockdown.load()
            if stored is not None:
                log.warning("device %s: locked down since command %s: %s", eventlog.device, stored.get("seq"),
                            stored.get("reason"))
                self._restore_lockdown(str(stored.get("reason", "")))
        if credentials is not None:
            handlers[CommandKind.ROTATE_CREDENTIALS] = self._rotate
        self.commands = RemoteCommands(verifier, replay, eventlog, handlers=handlers)

    # ------------------------------------------------------------ what the device kind supplies

    def _device_handlers(self) -> dict[CommandKind, Callable[[SignedCommand], None]]:
        """Commands only this kind of device takes (a cabinet: unlock)."""
        return {}

    def _restore_lockdown(self, reason: str) -> None:
        """A lockdown stored before the restart is in force again."""
        raise NotImplementedError

    def _apply_lockdown(self, cmd: SignedCommand, on: bool, reason: str) -> None:
        """Act on an accepted, already stored lockdown command (on the agent's own thread)."""
        raise NotImplementedError

    def _allowlist_target(self) -> tuple[Path, AllowList]:
        """The allow-list file a push rewrites, and the list in memory that reloads it."""
        raise NotImplementedError

    # ------------------------------------------------------------ sync callbacks (paho's network thread)

    def on_command(self, payload: bytes, retained: bool) -> None:
        self.commands.handle(payload, retained=retained)
        self._notify()

    def state_extra(self) -> dict[str, Any]:
        applied = self.desired.applied()
        extra: dict[str, Any] = {"applied": applied,
                                 "restart_required": applied.get(Component.CONFIG.value, 0) > self.config_version}
        stored = self.lockdown.load() if self.lockdown is not None else None
        if stored is not None:
            extra["lockdown"] = {k: stored.get(k) for k in ("reason", "seq", "by", "at_ms")}
        return extra

    def close(self) -> None:
        self.replay.close()

    def _notify(self) -> None:
        try:
            self.notify()
        except Exception:
            log.exception("remote: notify callback failed")

    # ------------------------------------------------------------ lockdown

    def _lockdown(self, cmd: SignedCommand) -> None:
        on, reason = cmd.args.get("on"), cmd.args.get("reason", "")
        if not isinstance(on, bool) or not isinstance(reason, str):
            raise BadCommandArgs("bad_lockdown", f"lockdown needs on: bool and reason: str, got {cmd.args!r}")
        assert self.lockdown is not None
        reason = reason[:200] or "lockdown"
        # persisted before it acts, so a crash right after cannot forget a lockdown that was already acted on
        self.lockdown.save({"on": on, "reason": reason, "seq": cmd.seq, "by": cmd.requested_by,
                            "at_ms": int(time.time() * 1000)})
        self._apply_lockdown(cmd, on, reason)

    # ------------------------------------------------------------ credential rotation

    def _rotate(self, cmd: SignedCommand) -> None:
        url = cmd.args.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise BadCommandArgs("bad_url", f"rotate_credentials needs args.url https://host:port, got {url!r}")
        t = threading.Thread(target=self._rotate_worker, args=(cmd, url), name="credential-rotation", daemon=True)
        self.rotations.append(t)
        t.start()

    def _rotate_worker(self, cmd: SignedCommand, url: str) -> None:
        assert self.credentials is not None
        device = self.log.device
        try:
            old = x509_serial(self.credentials.cert_file)
            cert = rotate(self.credentials, name=device, url=url)
        except (CredentialError, OSError, ValueError) as err:
            reason = getattr(err, "reason", "io_error")
            log.error("device %s: credential rotation (command %d) failed, current credentials stay: %s",
                      device, cmd.seq, err)
            self.log.append(EventKind.ALARM.value, {"type": "rotation_failed", "seq": cmd.seq, "reason": reason,
                                                    "detail": str(err)[:200]})
            self._notify()
            return
        self.log.append(EventKind.ACCESS.value, {"type": "credentials_rotated", "seq": cmd.seq,
                                                 "by": cmd.requested_by, "old_serial": old,
                                                 "serial": format(cert.serial_number, "x")})
        self._notify()
        log.warning("device %s: new credentials in place; restarting to reconnect with them", device)
        try:
            self.restart()
        except Exception:
            log.exception("remote: restart callback failed")

    # ------------------------------------------------------------ desired state

    def _desired_state(self, cmd: SignedCommand) -> None:
        components = cmd.args.get("components")
        if not isinstance(components, dict):
            raise ComponentRefused("malformed", "desired_state args.components must be an object")
        current = self.desired.applied()
        installed: dict[str, Any] = {}
        for name, entry in components.items():
            version = entry.get("version") if isinstance(entry, dict) else None
            try:
                try:
                    comp = Component(name)
                except ValueError:
                    raise ComponentRefused("unknown_component", f"unknown component {name!r}") from None
                if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                    raise ComponentRefused("malformed", f"component {name} has no positive integer version")
                if version <= current.get(comp.value, 0):
                    continue
                assert isinstance(entry, dict)
                self._install(comp, version, entry.get("doc"))
            except ComponentRefused as err:
                self._refused(cmd, str(name), version, err)
                continue
            installed[comp.value] = entry
        if installed:
            changed = self.desired.apply(dataclasses.replace(cmd, args={**cmd.args, "components": installed}))
            log.info("device %s: desired state %d applied: %s", self.log.device, cmd.seq, ", ".join(changed))

    def _install(self, comp: Component, version: int, doc: Any) -> None:
        if comp is Component.ALLOWLIST:
            self._install_allowlist(version, doc)
        elif comp is Component.CATALOG:
            try:
                self.catalog.apply(doc)
            except CatalogCacheError as err:
                raise ComponentRefused(err.reason, err.message) from None
        else:
            check_pushed_config(self.config_path, doc)
            log.warning("device %s: config version %d stored; restart the agent for it to take effect",
                        self.log.device, version)

    def _install_allowlist(self, version: int, doc: Any) -> None:
        body = {"badges": doc} if isinstance(doc, list) else doc
        if isinstance(body, dict):
            body = {**body, "version": version}
        try:
            _, badges = parse_allowlist(body, source="pushed allow-list")
        except AllowListError as err:
            raise ComponentRefused(err.reason, str(err)) from None
        path, allowlist = self._allowlist_target()
        before = path.stat().st_mtime_ns if path.exists() else None
        write_allowlist(path, list(badges.values()), version=version)
        st = path.stat()
        if st.st_mtime_ns == before:  # rewritten within the file system's timestamp granularity: reload anyway
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        allowlist.reload_if_changed()
        if allowlist.version != version:
            raise ComponentRefused("not_loaded", f"allow-list version {version} written to {path} but not loaded")

    def _refused(self, cmd: SignedCommand, name: str, version: Any, err: ComponentRefused) -> None:
        log.error("device %s: %s version %s from command %d refused: %s", self.log.device, name, version,
                  cmd.seq, err)
        self.log.append(EventKind.ALARM.value, {
            "type": "component_refused", "component": name[:32], "version": version if isinstance(version, int)
            else None, "seq": cmd.seq, "reason": err.reason, "detail": err.message[:200]})


class CabinetRemote(DeviceRemote):
    """Remote commands of one running cabinet agent; see the module docstring."""

    def __init__(self, *, agent: CabinetAgent, **kwargs: Any) -> None:
        self.agent = agent
        super().__init__(**kwargs)

    def _device_handlers(self) -> dict[CommandKind, Callable[[SignedCommand], None]]:
        return {CommandKind.UNLOCK: self._unlock}

    def _restore_lockdown(self, reason: str) -> None:
        self.agent.post(self.agent.cabinet.set_lockdown, reason)

    def _apply_lockdown(self, cmd: SignedCommand, on: bool, reason: str) -> None:
        self.agent.post(self._lockdown_on_loop, cmd, on, reason)

    def _allowlist_target(self) -> tuple[Path, AllowList]:
        return self.agent.config.allowlist_file, self.agent.allowlist

    # ------------------------------------------------------------ unlock

    def _unlock(self, cmd: SignedCommand) -> None:
        raw = cmd.args.get("seconds", self.agent.config.unlock_s)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw <= 0:
            raise BadUnlock("bad_seconds", f"unlock seconds must be a positive number, got {raw!r}")
        ceiling = min(d.max_energised_s for d in self.agent.config.doors)
        seconds = min(float(raw), ceiling)
        if seconds < raw:
            log.warning("remote unlock %d: %.1f s asked, capped at the locks' %.1f s", cmd.seq, raw, ceiling)
        self.agent.post(self._unlock_on_loop, cmd, seconds)

    def _unlock_on_loop(self, cmd: SignedCommand, seconds: float) -> None:
        """Cabinet loop thread: a session for the remote requester, as a badge grant would open."""
        self.agent.cabinet.grant_remote(cmd.requested_by, seconds, time.monotonic(), via="remote", seq=cmd.seq)

    def _lockdown_on_loop(self, cmd: SignedCommand, on: bool, reason: str) -> None:
        cab = self.agent.cabinet
        cab.set_lockdown(reason if on else None)
        cab.record(EventKind.ACCESS, {"type": "lockdown", "on": on, "reason": reason, "seq": cmd.seq,
                                            "by": cmd.requested_by, "dept": cab.dept})
        log.warning("device %s: lockdown %s by %s (command %d): %s", self.log.device, "on" if on else "off",
                    cmd.requested_by, cmd.seq, reason)


def x509_serial(cert_file: Path) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number, "x")


def load_verifier(cfg: DeviceConfig, *, clock: Callable[[], float] = time.time) -> CommandVerifier | None:
    """The verifier with the gateway's command key; None without ``[remote]``; a bad key is a :class:`ConfigError`."""
    remote = remote_config(cfg)
    if remote is None:
        log.warning("device %s: no [remote] section: remote unlock and pushes are disabled", cfg.device_id)
        return None
    try:
        key = load_public_key(remote.command_key_file)
    except (OSError, ValueError, RemoteError) as err:
        raise ConfigError(cfg.source, "remote.command_key_file", f"{remote.command_key_file}: {err}") from None
    return CommandVerifier(key, device=cfg.device_id, site=cfg.site, clock=clock)


def remote_parts(config_path: Path, cfg: DeviceConfig, verifier: CommandVerifier, *, eventlog: EventLog,
                 config_version: int = 0, catalog: CatalogCache | None = None) -> dict[str, Any]:
    """The keyword arguments of a :class:`DeviceRemote`, with their state in the device's data directory.

    ``catalog`` is the cache the agent's scan policy reads, so a pushed catalog takes effect at once.
    """
    remote = remote_config(cfg)
    window = remote.replay_window if remote is not None else 0
    tls = cfg.broker.tls
    credentials = None
    if tls is not None:
        credentials = CredentialFiles(Path(tls.ca_file), Path(tls.cert_file), Path(tls.key_file))
        if finish_pending_swap(credentials):
            log.warning("device %s: finished installing rotated credentials", cfg.device_id)
    return {
        "config_path": config_path, "eventlog": eventlog, "verifier": verifier,
        "replay": ReplayGuard(cfg.data_dir / REPLAY_DB, window=window),
        "desired": DesiredState(desired_dir(cfg)),
        "catalog": catalog if catalog is not None else CatalogCache(catalog_cache_path(cfg)),
        "config_version": config_version, "lockdown": LockdownStore(identity_dir(cfg) / LOCKDOWN_FILE),
        "credentials": credentials,
    }


def build_remote(config_path: Path, cfg: DeviceConfig, verifier: CommandVerifier, *, agent: CabinetAgent,
                 eventlog: EventLog, config_version: int = 0, catalog: CatalogCache | None = None) -> CabinetRemote:
    """The remote commands of ``agent``, with their state in the device's data directory.

    ``catalog`` is the cache the agent's scan policy reads: a pushed catalog then takes effect at the next scan.
    """
    return CabinetRemote(agent=agent, **remote_parts(config_path, cfg, verifier, eventlog=eventlog,
                                                     config_version=config_version, catalog=catalog))
