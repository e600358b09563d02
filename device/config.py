"""The device's TOML configuration: typed getters with bounds; unknown keys are errors naming the key and file.

The strict reader (:class:`spd_common.toml_config.Section`) is shared with the gateway's configuration.

A field technician's typo must stop the agent at start-up with a message
that says which key in which file is wrong, never fall back to a default.

Core sections are parsed here (``[device]``, ``[broker]``, ``[broker.tls]``,
``[sync]``, ``[log]``, ``[handheld]``). Other parts of the agent register
their own sections with :func:`register_section` (the cabinet registers
``[cabinet]``); a section nobody registered is an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spd_common.mqtt import MQTT_VERSIONS, Address, TlsSettings, parse_addresses
from spd_common.toml_config import REQUIRED as _REQUIRED
from spd_common.toml_config import Section, parse_toml, read_config_text
from spd_common.wire import ID_PATTERN

# ---------------------------------------------------------------- core sections

_ID = re.compile(ID_PATTERN.pattern)
_CODE = re.compile(r"^[!-~]{3,64}$")  # a printable ASCII code of 3-64 characters, no spaces


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive_s: int = 15
    tls: TlsSettings | None = None
    fallbacks: tuple[Address, ...] = ()  # a broker cluster's other nodes (``hosts``), tried in turn after a drop
    mqtt_version: str = "5"  # "3.1.1" for a clustered engine without MQTT 5 (NATS)


@dataclass(frozen=True, slots=True)
class SyncConfig:
    batch_size: int = 200
    window: int = 4
    resend_after_s: float = 5.0
    state_every_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    retention_days: float = 7.0


@dataclass(frozen=True, slots=True)
class HandheldCodes:
    """Texts of the mode cards at the nurses' station (any symbology; compared without the AIM identifier)."""

    return_mode: str = "SPD-MODE-RETURN"
    charge_mode: str = "SPD-MODE-CHARGE"
    logout: str = "SPD-LOGOUT"


@dataclass(frozen=True, slots=True)
class HandheldConfig:
    """``[handheld]``: what ``spd-device run`` needs to drive a nurse's scanning station (see docs/handheld.md)."""

    dept: str
    operator: str | None = None  # legacy: a fixed operator for library use; the runtime logs nurses in
    allowlist_file: Path = Path("allowlist.json")
    pin_factory: str = "rpigpio"
    buzzer_pin: int | None = None
    led_pin: int | None = None
    scanner_ports: tuple[str, ...] = ()  # serial / USB-CDC scanners (URLs pyserial opens)
    wedge_devices: tuple[str, ...] = ()  # USB HID keyboard-wedge scanners (/dev/input/... through evdev)
    scanner_baudrate: int = 9600
    symbology_ids: bool = True  # the scanners send AIM identifiers (]d2, ]C1 ...): GS1 codes are told apart safely
    idle_logout_s: float = 300.0
    patient_hold_s: float = 600.0
    pin_timeout_s: float = 30.0
    return_mode_s: float = 120.0
    screen: str = "auto"  # auto: the console UI when started on a terminal, else headless; "off": always headless
    codes: HandheldCodes = field(default_factory=HandheldCodes)
    wristband: dict[str, Any] | None = None  # a device.udi.wristband.WristbandFormat mapping


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    device_id: str
    site: str
    kind: str
    data_dir: Path
    broker: BrokerConfig
    sync: SyncConfig
    log: LogConfig
    handheld: HandheldConfig | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "events.db"


SectionParser = Callable[[Section], Any]
_SECTIONS: dict[str, SectionParser] = {}


def register_section(name: str, parser: SectionParser) -> None:
    """Let another part of the agent own a top-level section; its parser gets a :class:`Section`."""
    _SECTIONS[name] = parser


def _path(s: Section, name: str, base: Path, default: Any = _REQUIRED) -> Any:
    v = s.get_str(name, default)
    if v is None:
        return None
    p = Path(v)
    return p if p.is_absolute() else (base / p)


def parse_config(doc: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> DeviceConfig:
    base = base_dir or Path(".")
    top = Section(doc, source=source)
    dev = top.section("device")
    assert dev is not None
    device_id = dev.get_str("id", pattern=_ID)
    site = dev.get_str("site", pattern=_ID)
    kind = dev.get_str("kind", "cabinet", choices=("cabinet", "handheld"))
    data_dir = _path(dev, "data_dir", base, "/var/lib/spd-device")
    dev.done()

    broker = BrokerConfig()
    b = top.section("broker", optional=True)
    if b is not None:
        tls = None
        t = b.section("tls", optional=True)
        if t is not None:
            tls = TlsSettings(*(str(_path(t, name, base)) for name in ("ca_file", "cert_file", "key_file")))
            t.done()
        nodes: tuple[Address, ...] = ()
        if b.has("hosts"):  # a broker cluster: the first node, then the others in turn after a drop
            if b.has("host") or b.has("port"):
                raise b.error("hosts", "give hosts (a cluster's nodes) or host and port, not both")
            try:
                nodes = parse_addresses(b.get_list("hosts"))
            except ValueError as err:
                raise b.error("hosts", str(err)) from None
        broker = BrokerConfig(
            host=nodes[0][0] if nodes else b.get_str("host", "127.0.0.1"),
            port=nodes[0][1] if nodes else b.get_int("port", 8883 if tls else 1883, min=1, max=65535),
            keepalive_s=b.get_int("keepalive_s", 15, min=5, max=600),
            tls=tls,
            fallbacks=nodes[1:],
            mqtt_version=b.get_str("mqtt_version", "5", choices=tuple(MQTT_VERSIONS)),
        )
        b.done()

    sync = SyncConfig()
    s = top.section("sync", optional=True)
    if s is not None:
        sync = SyncConfig(
            batch_size=s.get_int("batch_size", 200, min=1, max=1000),
            window=s.get_int("window", 4, min=1, max=64),
            resend_after_s=s.get_float("resend_after_s", 5.0, min=0.5, max=600),
            state_every_s=s.get_float("state_every_s", 30.0, min=1, max=3600),
        )
        s.done()

    logc = LogConfig()
    lg = top.section("log", optional=True)
    if lg is not None:
        logc = LogConfig(retention_days=lg.get_float("retention_days", 7.0, min=0.0, max=3650))
        lg.done()

    handheld = None
    h = top.section("handheld", optional=True)
    if h is not None:
        handheld = _parse_handheld(h, base)
        h.done()

    extra: dict[str, Any] = {}
    for name, parser in _SECTIONS.items():
        sec = top.section(name, optional=True)
        if sec is not None:
            extra[name] = parser(sec)
            sec.done()
    top.done()
    return DeviceConfig(device_id, site, kind, data_dir, broker, sync, logc, handheld, source, extra)


def _strings(s: Section, name: str) -> tuple[str, ...]:
    values = s.get_list(name, [])
    if any(not isinstance(v, str) or not v for v in values):
        raise s.error(name, "must be a list of non-empty strings")
    return tuple(values)


def _parse_handheld(h: Section, base: Path) -> HandheldConfig:
    codes = HandheldCodes()
    c = h.section("codes", optional=True)
    if c is not None:
        codes = HandheldCodes(return_mode=c.get_str("return_mode", codes.return_mode, pattern=_CODE),
                              charge_mode=c.get_str("charge_mode", codes.charge_mode, pattern=_CODE),
                              logout=c.get_str("logout", codes.logout, pattern=_CODE))
        c.done()
        if len({codes.return_mode, codes.charge_mode, codes.logout}) != 3:
            raise h.error("codes", "the mode card codes must differ from each other")
    wristband = None
    w = h.section("wristband", optional=True)
    if w is not None:
        wristband = w.raw()
        from device.udi.wristband import WristbandError, WristbandFormat

        try:
            WristbandFormat.from_mapping(wristband)
        except WristbandError as err:
            raise h.error("wristband", str(err)) from None
    pin_opt = {"min": 0, "max": 1023}
    return HandheldConfig(
        dept=h.get_str("dept", pattern=_ID),
        operator=h.get_str("operator", None, pattern=_ID),
        allowlist_file=_path(h, "allowlist_file", base, "allowlist.json"),
        pin_factory=h.get_str("pin_factory", "rpigpio"),
        buzzer_pin=h.get_int("buzzer_pin", None, **pin_opt),
        led_pin=h.get_int("led_pin", None, **pin_opt),
        scanner_ports=_strings(h, "scanner_ports"),
        wedge_devices=_strings(h, "wedge_devices"),
        scanner_baudrate=h.get_int("scanner_baudrate", 9600, min=1200, max=921600),
        symbology_ids=h.get_bool("symbology_ids", True),
        idle_logout_s=h.get_float("idle_logout_s", 300.0, min=10.0, max=86400.0),
        patient_hold_s=h.get_float("patient_hold_s", 600.0, min=10.0, max=86400.0),
        pin_timeout_s=h.get_float("pin_timeout_s", 30.0, min=5.0, max=600.0),
        return_mode_s=h.get_float("return_mode_s", 120.0, min=5.0, max=3600.0),
        screen=h.get_str("screen", "auto", choices=("auto", "off")),
        codes=codes,
        wristband=wristband,
    )


def parse_config_text(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> DeviceConfig:
    """Parse TOML text; every problem, syntax included, is a :class:`ConfigError`."""
    return parse_config(parse_toml(text, source=source), source=source, base_dir=base_dir)


def load_config(path: str | Path) -> DeviceConfig:
    p = Path(path)
    return parse_config_text(read_config_text(p), source=str(p), base_dir=p.parent)


# ---------------------------------------------------------------- [remote]: signed commands from the gateway


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """Where the gateway's command-verification key is, and the replay window (see ``device.remote``)."""

    command_key_file: Path
    replay_window: int = 0


def _parse_remote(s: Section) -> RemoteConfig:
    base = Path(s.source).parent if s.source and not s.source.startswith("<") else Path(".")
    return RemoteConfig(command_key_file=_path(s, "command_key_file", base),
                        replay_window=s.get_int("replay_window", 0, min=0, max=1024))


register_section("remote", _parse_remote)
