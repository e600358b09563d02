"""The gateway process: ingest, charging worker and HIS sender around one store.

Threads and what each owns:

* ``paho`` network thread (:class:`IngestService`) — the MQTT socket; stores
  batches and publishes acks;
* ``charging`` (:class:`ChargingWorker`) — the charging cursor; writes the outbox;
* ``his-sender-N`` (:class:`HisSender`, one per lane) — one HIS connection each; drain the outbox;
* ``lease`` (:class:`Leadership`) — renews the charging lease; with several
  instances on one store, only the holder runs charging and the sender;
* ``link-watch`` (:class:`LinkWatch`) — the ``not_linked`` check: an item taken
  from a cabinet and not charged on any device within ``not_linked_within_s``
  raises one alarm (lease holder only);
* ``paho`` network thread of the fleet link (:class:`FleetLink`, only with a
  command-signing key) — reads device state (applied versions), publishes
  signed commands and re-sends desired state to devices that are behind;
* the main thread — start-up, signals, shutdown.

The store is shared; SQLite serialises the writers.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

from device.sync import TlsSettings
from gateway import bridge
from gateway.charging import ChargingWorker
from gateway.commands import CommandSigner, load_signing_key
from gateway.fleet import Fleet, FleetLink
from gateway.his.adapter import HisAdapter, HisConfigError
from gateway.his.http_adapter import HttpJsonAdapter
from gateway.his.mllp_adapter import MllpAdapter
from gateway.his.sender import HisSender
from gateway.ingest import IngestService
from gateway.lease import Leadership
from gateway.linking import DEFAULT_WINDOW_S, LinkWatch
from gateway.store import GatewayStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    db_path: Path
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    client_id: str = "spd-gateway"
    share_group: str | None = None
    his_protocol: Literal["mllp", "http"] = "mllp"
    his_url: str | None = None  # base URL of the HIS JSON API, for his_protocol="http"
    his_token: str | None = None  # bearer token for the HIS JSON API
    his_host: str = "127.0.0.1"
    his_port: int = 2575
    his_timeout_s: float = 5.0
    his_backoff_max_s: float = 30.0
    his_lanes: int = 4  # parallel HIS connections; a patient's charges always share one
    lease_ttl_s: float = 6.0
    facility: str = "HOSP"
    sending_facility: str = "SPD"
    tls: TlsSettings | None = None
    signing_key: Path | None = None  # the command-signing key: run the fleet link (state in, commands out)
    not_linked_within_s: float = DEFAULT_WINDOW_S  # a cabinet take not charged on any device by then: one alarm


def make_his_adapter(config: GatewayConfig) -> HisAdapter:
    """The HIS adapter the configuration names: HL7 v2 over MLLP, or JSON over HTTP."""
    if config.his_protocol == "mllp":
        return MllpAdapter(config.his_host, config.his_port, timeout_s=config.his_timeout_s)
    if config.his_protocol == "http":
        if not config.his_url:
            raise HisConfigError("missing_url", "his_protocol 'http' needs his_url")
        return HttpJsonAdapter(config.his_url, timeout_s=config.his_timeout_s, token=config.his_token)
    raise HisConfigError("bad_protocol", f"his_protocol must be 'mllp' or 'http', got {config.his_protocol!r}")


def make_fleet_link(store: GatewayStore, config: GatewayConfig) -> FleetLink:
    """The fleet's own MQTT connection with a :class:`Fleet` that signs with ``config.signing_key``."""
    if config.signing_key is None:
        raise ValueError("the fleet link needs the command-signing key")
    link = FleetLink(store, host=config.broker_host, port=config.broker_port, tls=config.tls,
                     client_id=f"{config.client_id}-fleet")
    link.fleet = Fleet(store, CommandSigner(load_signing_key(config.signing_key)), link.publish)
    return link


class Gateway:
    """Assembles and runs the gateway's services."""

    def __init__(self, config: GatewayConfig, *, adapter: HisAdapter | None = None) -> None:
        self.config = config
        self.store = GatewayStore(config.db_path)
        self.leadership = Leadership(self.store, config.client_id, ttl_s=config.lease_ttl_s)
        bridge_config = bridge.BridgeConfig(
            sending_facility=config.sending_facility, receiving_facility=config.facility
        )
        lanes = 1 if adapter is not None else config.his_lanes
        self.senders = [
            HisSender(
                self.store,
                adapter or make_his_adapter(config),
                backoff_max_s=config.his_backoff_max_s,
                may_run=self.leadership.is_leader,
                lane=lane,
                lanes=lanes,
            )
            for lane in range(lanes)
        ]
        self.charging = ChargingWorker(
            self.store, bridge_config, on_charges=lambda n: self._notify_senders(), may_run=self.leadership.is_leader
        )
        self.ingest = IngestService(
            self.store,
            host=config.broker_host,
            port=config.broker_port,
            client_id=config.client_id,
            share_group=config.share_group,
            tls=config.tls,
            on_stored=lambda n: self.charging.notify(),
        )
        self.fleet_link = make_fleet_link(self.store, config) if config.signing_key is not None else None
        self.link_watch = LinkWatch(self.store, window_s=config.not_linked_within_s,
                                    may_run=self.leadership.is_leader)
        self._stopped = threading.Event()

    @property
    def fleet(self) -> Fleet | None:
        """Pushes, unlocks and the device listing; None when the gateway runs without a signing key."""
        return self.fleet_link.fleet if self.fleet_link is not None else None

    def _notify_senders(self) -> None:
        for sender in self.senders:
            sender.notify()

    def start(self) -> Gateway:
        self.leadership.start()
        self.charging.start()
        for sender in self.senders:
            sender.start()
        self.link_watch.start()
        self.ingest.start()
        if self.fleet_link is not None:
            self.fleet_link.start()
        return self

    def stop(self) -> None:
        if self.fleet_link is not None:
            self.fleet_link.stop()
        self.ingest.stop()
        self.charging.stop()
        for sender in self.senders:
            sender.stop()
        self.link_watch.stop()
        self.leadership.stop()
        self.store.close()
        self._stopped.set()

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down cleanly."""

        def _stop(signum: int, frame: FrameType | None) -> None:
            log.info("gateway: signal %d, stopping", signum)
            self._stopped.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.start()
        log.info("gateway: running (bridge: %s, fleet link %s)", bridge.IMPLEMENTATION,
                 "on" if self.fleet_link is not None else "off")
        while not self._stopped.wait(1.0):
            pass
        self.stop()
