"""Configuration files of devices under test: one cabinet file, written the way `spd-device run` reads it."""

from __future__ import annotations

from pathlib import Path

from spd_common.allowlist import Badge, Role, write_allowlist

NURSE_BADGE = Badge("04A1B2C3", "N0001", Role.NURSE)


def cabinet_config(tmp_path: Path, device: str, reader_url: str, *, broker_port: int = 1, reader_extra: str = "",
                   more: str = "") -> Path:
    """A one-door cabinet ``device`` of ICU-2 on sim pins and the reader at ``reader_url``, its allow-list a
    nurse's badge; ``broker_port`` 1 is a broker that is not there. ``reader_extra`` goes into
    ``[cabinet.reader]``, ``more`` (whole sections) at the end."""
    write_allowlist(tmp_path / "allow.json", [NURSE_BADGE])
    cfg = tmp_path / "cab.toml"
    cfg.write_text(f"""
[device]
id = "{device}"
site = "H1"
data_dir = "data"
[broker]
port = {broker_port}
[cabinet]
dept = "ICU-2"
pin_factory = "sim"
allowlist_file = "allow.json"
[[cabinet.doors]]
name = "door"
lock_pin = 5
door_pin = 6
[cabinet.reader]
url = "{reader_url}"
timeout_s = 0.3
{reader_extra}
{more}
""", encoding="utf-8")
    return cfg
