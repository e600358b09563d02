"""The devices as the screen shows them: online, offline or never seen, backlog, alarms, versions in sync."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.audit import device_alarm_counts
from gateway.store import GatewayStore
from spd_common.wire import DeviceStatus


@dataclass(frozen=True, slots=True)
class DeviceView:
    device: str
    site: str
    status: str  # online / offline / unknown
    last_seen: float | None
    version: str
    backlog: int
    alarms: int
    desired: dict[str, int]
    applied: dict[str, int]

    @property
    def in_sync(self) -> bool:
        return all(self.applied.get(c, 0) >= v for c, v in self.desired.items())


def device_views(store: GatewayStore, *, offline_after_s: float, now: float | None = None) -> list[DeviceView]:
    """As ``spd-gateway devices`` lists them (:meth:`gateway.fleet.Fleet.devices`): online only with a fresh report."""
    at = time.time() if now is None else now
    alarms = device_alarm_counts(store)
    out = []
    for device, site, last_seen, status, backlog, version in store.devices.states():
        fresh = last_seen is not None and at - last_seen <= offline_after_s
        shown = DeviceStatus.ONLINE.value if status == DeviceStatus.ONLINE.value and fresh else \
            DeviceStatus.OFFLINE.value if last_seen is not None else "unknown"
        desired = {r.component: r.version for r in store.devices.desired(device)}
        out.append(DeviceView(device, site, shown, last_seen, version, int(backlog), alarms.get(device, 0),
                              desired, store.devices.applied(device)))
    return out


def site_of(store: GatewayStore, device: str) -> str | None:
    return next((site for site, d in store.devices.known() if d == device), None)
