"""The smart cabinet: badge sessions, door and lock control, stable RFID inventory, alarms and the agent wiring."""

from __future__ import annotations

from device.cabinet.allowlist import AllowList, AllowListError, Badge, Role, hash_pin
from device.cabinet.epc import EpcError, Sgtin, decode_sgtin96, encode_sgtin96
from device.cabinet.inventory import CountResult, InventoryPolicy, count_stable
from device.cabinet.session import AlarmCode, SessionState

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
