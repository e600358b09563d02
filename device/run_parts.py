"""What ``spd-device run`` sets up the same way for a cabinet and a handheld.

The durable log with the scan policy that reads the pushed catalog, the sync to the broker from the
``[broker]`` and ``[sync]`` configuration, the remote commands' hooks into that sync, and the
signals that stop the agent. ``device.commands.run`` (cabinet) and ``device.handheld_runtime.run``
(handheld) differ only in the agent and what runs on the main thread.
"""

from __future__ import annotations

import signal
import threading
from typing import NamedTuple

from device.catalog_cache import CatalogCache
from device.config import DeviceConfig
from device.eventlog import EventLog
from device.remote_wiring import DeviceRemote, catalog_cache_path
from device.scan_policy import ConsumedSerials, ScanPolicy
from device.sync import DeviceSync
from spd_common.heartbeat import HeartbeatRegistry


class LogAndPolicy(NamedTuple):
    eventlog: EventLog
    consumed: ConsumedSerials
    policy: ScanPolicy


def open_log_and_policy(cfg: DeviceConfig) -> LogAndPolicy:
    """The event log, and the scan policy over the pushed catalog and the serials this device already consumed."""
    from device.scan_policy import ScanPolicy  # looked up at the call, so a test can stand in its own

    eventlog = EventLog(cfg.log_path, device=cfg.device_id, retention_s=cfg.log.retention_days * 86400)
    consumed = ConsumedSerials(cfg.data_dir / "consumed.db")
    consumed.catch_up(eventlog)
    return LogAndPolicy(eventlog, consumed, ScanPolicy(CatalogCache(catalog_cache_path(cfg)), consumed))


def device_sync(cfg: DeviceConfig, eventlog: EventLog, remote: DeviceRemote | None, *,
                heartbeats: HeartbeatRegistry | None = None) -> DeviceSync:
    """The sync of ``eventlog`` as ``[broker]`` and ``[sync]`` say, carrying ``remote``'s commands and state."""
    return DeviceSync(
        eventlog, site=cfg.site, host=cfg.broker.host, port=cfg.broker.port, batch_size=cfg.sync.batch_size,
        window=cfg.sync.window, resend_after_s=cfg.sync.resend_after_s, state_every_s=cfg.sync.state_every_s,
        keepalive_s=cfg.broker.keepalive_s,
        tls=cfg.broker.tls,
        fallbacks=cfg.broker.fallbacks,
        mqtt_version=cfg.broker.mqtt_version,
        on_command=remote.on_command if remote is not None else None,
        state_extra=remote.state_extra if remote is not None else None,
        heartbeats=heartbeats,
    )


def wire_remote(remote: DeviceRemote, sync: DeviceSync, stop: threading.Event, restart: threading.Event) -> None:
    """After a command: wake the sync and publish the state. New credentials: stop, to be restarted."""
    def after_command() -> None:
        sync.notify()
        sync.publish_state()

    def restart_agent() -> None:  # new credentials: MQTT's TLS context must be rebuilt from the files
        restart.set()
        stop.set()

    remote.notify = after_command
    remote.restart = restart_agent


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and Ctrl-C set ``stop`` (only the main thread can install handlers)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
