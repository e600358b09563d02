"""The [cabinet] configuration section: the example parses, and mistakes are errors naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

import device.cabinet.config  # noqa: F401 - registers the section
from device.cabinet.config import cabinet_config
from device.config import load_config, parse_config
from device.hal.pins import Pull
from spd_common.toml_config import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "cabinet.toml"


def _doc() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def test_example_config_parses_with_paths_relative_to_the_file() -> None:
    cab = cabinet_config(load_config(EXAMPLE))
    assert cab.dept == "ICU-2"
    assert cab.allowlist_file == EXAMPLE.parent / "allowlist.json"
    assert [(d.name, d.lock_pin, d.door_pin, d.door_pull) for d in cab.doors] == [("door", 17, 27, Pull.UP)]
    assert cab.reader.antennas == (1, 2, 3, 4)
    assert (cab.reader.miss_rate, cab.reader.phantom_target) == (0.05, 1e-5)
    assert cab.alarms.link_within_s == 0.0  # off: the gateway decides not_linked
    assert cab.scanners.badge_port is not None


def _error(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, source="cab.toml")
    return err.value


def test_unknown_key_in_a_door_is_an_error_naming_it() -> None:
    doc = _doc()
    doc["cabinet"]["doors"][0]["lock_pn"] = 5
    err = _error(doc)
    assert err.key == "cabinet.doors[0].lock_pn"
    assert "unknown option" in str(err)


def test_out_of_range_miss_rate_is_an_error_naming_it() -> None:
    doc = _doc()
    doc["cabinet"]["reader"]["miss_rate"] = 0.9
    assert _error(doc).key == "cabinet.reader.miss_rate"


def test_bad_antenna_list_is_refused() -> None:
    doc = _doc()
    doc["cabinet"]["reader"]["antennas"] = [1, 5]
    assert _error(doc).key == "cabinet.reader.antennas"


def test_a_pin_used_twice_is_refused() -> None:
    doc = _doc()
    doc["cabinet"]["led_pin"] = 17
    err = _error(doc)
    assert err.key == "cabinet.led_pin"
    assert "already used by cabinet.doors[0].lock_pin" in str(err)


def test_a_cabinet_needs_a_door() -> None:
    doc = _doc()
    del doc["cabinet"]["doors"]
    assert _error(doc).key == "cabinet.doors"


def test_unknown_key_at_the_top_of_the_section_is_refused() -> None:
    doc = _doc()
    doc["cabinet"]["unlock_seconds"] = 3
    assert _error(doc).key == "cabinet.unlock_seconds"
