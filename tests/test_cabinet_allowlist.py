"""The badge allow-list: roles, PIN hashes (never PINs), refusals, and keeping the old list on a bad push."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from device.cabinet.allowlist import AllowList
from spd_common.allowlist import AllowListError, Badge, Role, hash_pin, write_allowlist

FAST = 2**4


def test_pin_hash_verifies_the_right_pin_only() -> None:
    h = hash_pin("4321", n=FAST)
    assert h.startswith("scrypt$16$8$1$") and "4321" not in h
    badge = Badge("04A1", "N0002", Role.NURSE, h)
    assert badge.verify_pin("4321") is True
    assert badge.verify_pin("4322") is False


def test_badge_lookup_ignores_case_and_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    write_allowlist(path, [Badge("04a1b2c3", "N0001", Role.NURSE), Badge("04FFEE01", "R0001", Role.RESTOCKER)])
    al = AllowList(path)
    found = al.lookup(" 04A1B2C3\r\n")
    assert found is not None and (found.user, found.role, found.needs_pin) == ("N0001", Role.NURSE, False)
    assert al.lookup("DEADBEEF") is None


def test_unknown_role_is_refused_with_its_position() -> None:
    from spd_common.allowlist import parse_allowlist

    with pytest.raises(AllowListError) as err:
        parse_allowlist({"badges": [{"badge": "1", "user": "u", "role": "surgeon"}]})
    assert err.value.reason == "bad_entry"
    assert "badges[0]" in str(err.value)


def test_a_bad_push_keeps_the_list_in_force(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    write_allowlist(path, [Badge("04A1", "N0001", Role.NURSE)], version=3)
    al = AllowList(path)
    path.write_text(json.dumps({"version": 4, "badges": [{"badge": "x", "user": "u", "role": "nurse",
                                                           "pin_hash": "plain:1234"}]}))
    os.utime(path, ns=(1, 1))
    assert al.reload_if_changed() is False
    assert al.version == 3 and al.lookup("04A1") is not None


def test_a_new_list_takes_effect_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    write_allowlist(path, [Badge("04A1", "N0001", Role.NURSE)], version=1)
    al = AllowList(path)
    write_allowlist(path, [Badge("04B2", "N0009", Role.TECHNICIAN)], version=2)
    os.utime(path, ns=(2, 2))
    assert al.reload_if_changed() is True
    assert al.lookup("04A1") is None and al.version == 2
