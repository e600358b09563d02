"""The devices as the screen shows them: the rows of ``spd-gateway devices`` (:func:`gateway.fleet.device_rows`)."""

from __future__ import annotations

from gateway.fleet import DeviceRow as DeviceView
from gateway.fleet import device_rows as device_views
from gateway.store import GatewayStore

__all__ = ["DeviceView", "device_views", "site_of"]


def site_of(store: GatewayStore, device: str) -> str | None:
    return next((site for site, d in store.devices.known() if d == device), None)
