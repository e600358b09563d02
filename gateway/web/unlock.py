"""Where the screen's remote unlock goes: the running gateway's fleet link, or a connection made for it.

Both end in :meth:`gateway.fleet.Fleet.unlock`: a one-time unlock signed with the gateway's command-signing
key, sent on the cabinet's ``cmd`` topic and written to the audit log (``command_sent``) with who asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.broker_acl import GATEWAY_CLI_IDENTITY
from gateway.store import GatewayStore
from gateway.web.context import Unlock

if TYPE_CHECKING:
    from gateway.app import GatewayConfig
    from gateway.fleet import Fleet


def fleet_unlock(fleet: Fleet) -> Unlock:
    """Through the gateway's own fleet link (the screen served by ``spd-gateway run``)."""

    def unlock(site: str, device: str, seconds: int, requested_by: str) -> int:
        return fleet.unlock(site, device, seconds=seconds, requested_by=requested_by)

    return unlock


def on_demand_unlock(store: GatewayStore, config: GatewayConfig) -> Unlock | None:
    """For ``spd-gateway web`` on its own: a fleet connection opened per unlock, as ``spd-gateway unlock`` does.

    Only without broker TLS: over TLS the broker names a connection after its certificate, and the gateway's
    certificates are in use by the running gateway (serve the screen from ``spd-gateway run`` instead).
    None when there is no command-signing key or the broker needs TLS.
    """
    if config.signing_key is None or config.tls is not None:
        return None
    key_path = config.signing_key

    def unlock(site: str, device: str, seconds: int, requested_by: str) -> int:
        from gateway.commands import CommandSigner, load_signing_key
        from gateway.fleet import Fleet, FleetLink

        link = FleetLink(store, host=config.broker_host, port=config.broker_port, tls=None,
                         client_id=f"{GATEWAY_CLI_IDENTITY}-web").start()
        try:
            if not link.wait_connected(10.0):
                raise ConnectionError(f"cannot reach the broker at {config.broker_host}:{config.broker_port}")
            fleet = Fleet(store, CommandSigner(load_signing_key(key_path)), link.publish)
            return fleet.unlock(site, device, seconds=seconds, requested_by=requested_by)
        finally:
            link.stop()

    return unlock
