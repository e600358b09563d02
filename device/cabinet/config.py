"""The ``[cabinet]`` configuration section: doors and locks, RFID reader and counting policy, scanners, alarms.

Registered with :func:`device.config.register_section` when this module is
imported, so ``load_config`` parses and validates it: every key is typed and
bounded, unknown keys and out-of-range values are errors naming the key.
Relative file paths are taken from the configuration file's directory.
See ``deploy/examples/cabinet.toml`` for a complete example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from device.config import DeviceConfig, register_section
from device.hal.pins import Pull
from spd_common.toml_config import ConfigError, Section

SECTION: Final = "cabinet"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_DEPT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class DoorConfig:
    """One door or drawer: its lock relay output and its reed-switch input."""

    name: str
    lock_pin: int
    door_pin: int
    lock_active_high: bool = True
    fail_secure: bool = True
    door_open_level: bool = True
    door_pull: Pull = Pull.UP
    max_energised_s: float = 10.0
    ajar_limit_s: float = 60.0
    debounce_s: float = 0.05


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    url: str
    antennas: tuple[int, ...] = (1, 2, 3, 4)
    address: int = 0xFF
    baudrate: int = 115200
    timeout_s: float = 2.0
    miss_rate: float = 0.05
    phantom_target: float = 1e-5
    max_rounds: int = 12
    poll_s: float = 5.0
    offline_retry_s: float = 1.0
    session: str = "S1"  # Gen2 session for confirming rounds: S1, S2, S3, or "none" (real-time rounds only)
    flag_quiet_s: float = 5.0  # reader idle this long before a count so every session flag is back to A


@dataclass(frozen=True, slots=True)
class ScannerConfig:
    ports: tuple[str, ...] = ()
    badge_port: str | None = None
    baudrate: int = 9600


@dataclass(frozen=True, slots=True)
class CameraConfig:
    enabled: bool = False
    device: str = "/dev/video0"  # a V4L2 device, a camera index ("0"), or a video/stream URL
    decoder: str = "zxingcpp"  # zxing-cpp reads GS1 DataMatrix, the usual UDI symbol; pyzbar does not
    symbologies: tuple[str, ...] = ("GS1_DATAMATRIX", "GS1_128", "GS1_QR", "QR")  # see DEFAULT_CAMERA_SYMBOLOGIES
    fps_limit: float = 10.0


DEFAULT_CAMERA_SYMBOLOGIES = ("GS1_DATAMATRIX", "GS1_128", "GS1_QR", "QR")


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    link_within_s: float = 0.0  # 0: off, the gateway decides not_linked from every device's events
    expiry_check_s: float = 3600.0
    ajar_repeat_s: float = 300.0


@dataclass(frozen=True, slots=True)
class CabinetConfig:
    dept: str
    doors: tuple[DoorConfig, ...]
    reader: ReaderConfig
    allowlist_file: Path
    pin_factory: str = "rpigpio"
    catalog_file: Path | None = None
    items_file: Path | None = None
    unlock_s: float = 8.0
    pin_timeout_s: float = 15.0
    buzzer_pin: int | None = None
    led_pin: int | None = None
    scanners: ScannerConfig = field(default_factory=ScannerConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    count_snapshot_s: float = 0.0  # a stock_counted snapshot for the gateway's ledger this often; 0: never


def _base(sec: Section) -> Path:
    src = Path(sec.source)
    return src.parent if src.suffix == ".toml" else Path(".")


def _file(sec: Section, name: str, *, required: bool) -> Path | None:
    value = sec.get_str(name) if required else sec.get_str(name, None)
    if value is None:
        return None
    if not value:
        raise sec.error(name, "must not be empty")
    p = Path(value)
    return p if p.is_absolute() else _base(sec) / p


def _opt_pin(sec: Section, name: str) -> int | None:
    v = sec.get_int(name, None, min=0, max=1023)
    return None if v is None else int(v)


def _door(sec: Section) -> DoorConfig:
    pull = sec.get_str("door_pull", "up", choices=("up", "down", "none"))
    door = DoorConfig(
        name=sec.get_str("name", pattern=_NAME),
        lock_pin=sec.get_int("lock_pin", min=0, max=1023),
        door_pin=sec.get_int("door_pin", min=0, max=1023),
        lock_active_high=sec.get_bool("lock_active_high", True),
        fail_secure=sec.get_bool("fail_secure", True),
        door_open_level=sec.get_bool("door_open_level", True),
        door_pull=Pull(pull),
        max_energised_s=sec.get_float("max_energised_s", 10.0, min=0.05, max=120.0),
        ajar_limit_s=sec.get_float("ajar_limit_s", 60.0, min=0.05, max=3600.0),
        debounce_s=sec.get_float("debounce_s", 0.05, min=0.0, max=1.0),
    )
    sec.done()
    return door


def _reader(sec: Section) -> ReaderConfig:
    antennas = sec.get_list("antennas", [1, 2, 3, 4])
    if not antennas or any(not isinstance(a, int) or isinstance(a, bool) or not 1 <= a <= 4 for a in antennas):
        raise sec.error("antennas", f"must be a non-empty list of antenna numbers 1-4, got {antennas!r}")
    if len(set(antennas)) != len(antennas):
        raise sec.error("antennas", f"lists an antenna twice: {antennas!r}")
    url = sec.get_str("url")
    if not url:
        raise sec.error("url", "must not be empty")
    cfg = ReaderConfig(
        url=url,
        antennas=tuple(antennas),
        address=sec.get_int("address", 0xFF, min=0, max=0xFF),
        baudrate=sec.get_int("baudrate", 115200, min=1200, max=921600),
        timeout_s=sec.get_float("timeout_s", 2.0, min=0.05, max=30.0),
        miss_rate=sec.get_float("miss_rate", 0.05, min=0.0001, max=0.5),
        phantom_target=sec.get_float("phantom_target", 1e-5, min=1e-12, max=0.1),
        max_rounds=sec.get_int("max_rounds", 12, min=2, max=100),
        poll_s=sec.get_float("poll_s", 5.0, min=0.05, max=3600.0),
        offline_retry_s=sec.get_float("offline_retry_s", 1.0, min=0.01, max=600.0),
        session=sec.get_str("session", "S1", choices=("S1", "S2", "S3", "none")),
        flag_quiet_s=sec.get_float("flag_quiet_s", 5.0, min=0.5, max=120.0),
    )
    sec.done()
    return cfg


def _strings(sec: Section, name: str) -> tuple[str, ...]:
    values = sec.get_list(name, [])
    if any(not isinstance(v, str) or not v for v in values):
        raise sec.error(name, "must be a list of non-empty strings (serial URLs)")
    return tuple(values)


def parse_cabinet(sec: Section) -> CabinetConfig:
    """Parse ``[cabinet]`` (the caller calls ``sec.done()``)."""
    doors = tuple(_door(d) for d in sec.sections("doors"))
    if not doors:
        raise sec.error("doors", "at least one [[cabinet.doors]] is required")
    reader_sec = sec.section("reader")
    assert reader_sec is not None
    reader = _reader(reader_sec)

    scanners = ScannerConfig()
    s = sec.section("scanners", optional=True)
    if s is not None:
        scanners = ScannerConfig(ports=_strings(s, "ports"), badge_port=s.get_str("badge_port", None),
                                 baudrate=s.get_int("baudrate", 9600, min=1200, max=921600))
        s.done()
    camera = CameraConfig()
    c = sec.section("camera", optional=True)
    if c is not None:
        camera = _parse_camera(c)
        c.done()
    alarms = AlarmConfig()
    a = sec.section("alarms", optional=True)
    if a is not None:
        alarms = AlarmConfig(
            link_within_s=a.get_float("link_within_s", 0.0, min=0.0, max=7 * 86400.0),
            expiry_check_s=a.get_float("expiry_check_s", 3600.0, min=0.05, max=7 * 86400.0),
            ajar_repeat_s=a.get_float("ajar_repeat_s", 300.0, min=0.05, max=86400.0),
        )
        a.done()

    snapshot_s = 0.0
    st = sec.section("stock", optional=True)
    if st is not None:  # [cabinet.stock] snapshot_s: a stock_counted snapshot for the gateway's ledger
        snapshot_s = st.get_float("snapshot_s", 0.0, min=0.0, max=30 * 86400.0)
        st.done()

    cfg = CabinetConfig(
        dept=sec.get_str("dept", pattern=_DEPT),
        doors=doors,
        reader=reader,
        allowlist_file=_file(sec, "allowlist_file", required=True) or Path(),
        count_snapshot_s=snapshot_s,
        pin_factory=sec.get_str("pin_factory", "rpigpio"),
        catalog_file=_file(sec, "catalog_file", required=False),
        items_file=_file(sec, "items_file", required=False),
        unlock_s=sec.get_float("unlock_s", 8.0, min=0.05, max=120.0),
        pin_timeout_s=sec.get_float("pin_timeout_s", 15.0, min=0.05, max=300.0),
        buzzer_pin=_opt_pin(sec, "buzzer_pin"),
        led_pin=_opt_pin(sec, "led_pin"),
        scanners=scanners,
        camera=camera,
        alarms=alarms,
    )
    _check_consistency(sec, cfg)
    return cfg


def _check_consistency(sec: Section, cfg: CabinetConfig) -> None:
    names = [d.name for d in cfg.doors]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(sec.source, f"{sec.key('doors')}[{i}].name", f"door name {n!r} is used twice")
    used: dict[int, str] = {}
    claims = [(f"doors[{i}].lock_pin", d.lock_pin) for i, d in enumerate(cfg.doors)]
    claims += [(f"doors[{i}].door_pin", d.door_pin) for i, d in enumerate(cfg.doors)]
    claims += [(k, v) for k, v in (("buzzer_pin", cfg.buzzer_pin), ("led_pin", cfg.led_pin)) if v is not None]
    for key, pin in claims:
        if pin in used:
            raise ConfigError(sec.source, sec.key(key), f"pin {pin} is already used by {sec.key(used[pin])}")
        used[pin] = key


def cabinet_config(cfg: DeviceConfig) -> CabinetConfig:
    """The parsed ``[cabinet]`` section of a device configuration (an error naming it if absent)."""
    value = cfg.extra.get(SECTION)
    if not isinstance(value, CabinetConfig):
        raise ConfigError(cfg.source, SECTION, "section is required for a cabinet")
    return value


register_section(SECTION, parse_cabinet)


def _parse_camera(c: Section) -> CameraConfig:
    from device.hal.scanner import Symbology

    names = tuple(_strings(c, "symbologies")) or DEFAULT_CAMERA_SYMBOLOGIES
    for name in names:
        if name not in Symbology.__members__:
            raise c.error("symbologies", f"{name!r} is not one of {', '.join(Symbology.__members__)}")
    return CameraConfig(
        enabled=c.get_bool("enabled", False),
        device=c.get_str("device", "/dev/video0"),
        decoder=c.get_str("decoder", "zxingcpp", choices=("zxingcpp", "pyzbar")),
        symbologies=names,
        fps_limit=c.get_float("fps_limit", 10.0, min=0.5, max=60.0),
    )
