"""The smart cabinet: badge sessions, door and lock control, stable RFID inventory, alarms and the agent wiring.

The names below load on first use (PEP 562), so a handheld that needs only the allow-list or the
configuration section does not load the session, inventory and RFID modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from device.cabinet.allowlist import AllowList
    from device.cabinet.epc import EpcError, Sgtin, decode_sgtin96, encode_sgtin96
    from device.cabinet.inventory import CountResult, InventoryPolicy, count_stable
    from device.cabinet.session import AlarmCode, SessionState
    from spd_common.allowlist import AllowListError, Badge, Role, hash_pin

_HOME = {
    "AllowList": "allowlist", "AllowListError": "allowlist", "Badge": "allowlist", "Role": "allowlist",
    "hash_pin": "allowlist", "EpcError": "epc", "Sgtin": "epc", "decode_sgtin96": "epc", "encode_sgtin96": "epc",
    "CountResult": "inventory", "InventoryPolicy": "inventory", "count_stable": "inventory",
    "AlarmCode": "session", "SessionState": "session",
}

__all__ = [
    "AlarmCode",
    "AllowList",
    "AllowListError",
    "Badge",
    "CountResult",
    "EpcError",
    "InventoryPolicy",
    "Role",
    "SessionState",
    "Sgtin",
    "count_stable",
    "decode_sgtin96",
    "encode_sgtin96",
    "hash_pin",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'device.cabinet' has no attribute {name!r}")
    return getattr(importlib.import_module(f"device.cabinet.{module}"), name)
