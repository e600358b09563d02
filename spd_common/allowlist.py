"""The badge allow-list document: badges, roles and PIN hashes; the gateway writes it, cabinets and handhelds read it.

File format (the gateway pushes it; ``version`` is the list's own revision)::

    {"version": 12, "badges": [
        {"badge": "04A1B2C3", "user": "N0001", "role": "nurse",
         "pin_hash": "scrypt$16384$8$1$<salt hex>$<hash hex>"},
        {"badge": "04FFEE01", "user": "R0007", "role": "restocker"}]}

Only PIN hashes are stored (:func:`hash_pin`, scrypt with its cost in the
string); a badge without ``pin_hash`` needs no PIN. The device's cache of the file is
``device.cabinet.allowlist.AllowList``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from spd_common.durable import write_atomic

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_MAX_BADGE_LEN: Final = 64


class Role(StrEnum):
    NURSE = "nurse"
    RESTOCKER = "restocker"
    TECHNICIAN = "technician"


class AllowListError(ValueError):
    """An allow-list file or PIN hash that cannot be used; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def hash_pin(pin: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash``: what the allow-list stores instead of a PIN."""
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise AllowListError("bad_pin", "a PIN is 4-12 digits")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    parts = text.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("not scrypt$N$r$p$salt$hash")
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        if n < 2 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or len(salt) < 8 or len(digest) != 32:
            raise ValueError("cost or sizes out of range")
    except ValueError as err:
        raise AllowListError("bad_pin_hash", str(err)) from None
    return n, r, p, salt, digest


@dataclass(frozen=True, slots=True)
class Badge:
    """One allow-list entry."""

    badge: str
    user: str
    role: Role
    pin_hash: str | None = None

    @property
    def needs_pin(self) -> bool:
        return self.pin_hash is not None

    def verify_pin(self, pin: str) -> bool:
        """Constant-time check of ``pin`` against the stored hash (True when no PIN is required)."""
        if self.pin_hash is None:
            return True
        n, r, p, salt, digest = _parse_hash(self.pin_hash)
        got = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=256 * 1024 * 1024)
        return hmac.compare_digest(got, digest)


def normalise_badge(text: str) -> str:
    """Badge numbers compare without surrounding whitespace, case-insensitively."""
    return text.strip().upper()


def parse_allowlist(doc: Any, *, source: str = "<allow-list>") -> tuple[int, dict[str, Badge]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("badges"), list):
        raise AllowListError("bad_file", f"{source}: expected an object with a 'badges' list")
    version = doc.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise AllowListError("bad_file", f"{source}: version must be a non-negative integer")
    badges: dict[str, Badge] = {}
    for i, raw in enumerate(doc["badges"]):
        where = f"{source}: badges[{i}]"
        if not isinstance(raw, dict):
            raise AllowListError("bad_entry", f"{where} is not an object")
        unknown = set(raw) - {"badge", "user", "role", "pin_hash"}
        if unknown:
            raise AllowListError("bad_entry", f"{where}: unknown field {sorted(unknown)[0]!r}")
        badge, user, role, pin_hash = raw.get("badge"), raw.get("user"), raw.get("role"), raw.get("pin_hash")
        if not isinstance(badge, str) or not badge.strip() or len(badge) > _MAX_BADGE_LEN:
            raise AllowListError("bad_entry", f"{where}: badge must be a non-empty string")
        if not isinstance(user, str) or not user:
            raise AllowListError("bad_entry", f"{where}: user must be a non-empty string")
        try:
            role_value = Role(str(role))
        except ValueError:
            raise AllowListError("bad_entry", f"{where}: role {role!r} is not one of "
                                 f"{', '.join(r.value for r in Role)}") from None
        if pin_hash is not None:
            if not isinstance(pin_hash, str):
                raise AllowListError("bad_entry", f"{where}: pin_hash must be a string")
            _parse_hash(pin_hash)
        key = normalise_badge(badge)
        if key in badges:
            raise AllowListError("duplicate_badge", f"{where}: badge {key} listed twice")
        badges[key] = Badge(key, user, role_value, pin_hash)
    return version, badges


def write_allowlist(path: str | Path, entries: list[Badge], *, version: int = 1) -> None:
    """Write a list atomically (what the gateway's push does on the device)."""
    p = Path(path)
    doc = {"version": version, "badges": [
        {"badge": b.badge, "user": b.user, "role": b.role.value, **({"pin_hash": b.pin_hash} if b.pin_hash else {})}
        for b in entries]}
    write_atomic(p, json.dumps(doc, indent=1).encode("utf-8"))
