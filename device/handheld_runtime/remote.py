"""Signed remote commands on a handheld: the same desired state as a cabinet (catalog, allow-list, config pushes),
lockdown (the nurse is logged out and nobody logs in until it is lifted) and credential rotation; no unlock."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from device.cabinet.allowlist import AllowList
from device.handheld_runtime.agent import HandheldAgent
from device.remote import SignedCommand
from device.remote_wiring import DeviceRemote
from spd_common.wire import EventKind

log = logging.getLogger(__name__)


class HandheldRemote(DeviceRemote):
    def __init__(self, *, agent: HandheldAgent, **kwargs: Any) -> None:
        self.agent = agent
        super().__init__(**kwargs)

    def _restore_lockdown(self, reason: str) -> None:
        self.agent.set_lockdown(reason or "lockdown")

    def _apply_lockdown(self, cmd: SignedCommand, on: bool, reason: str) -> None:
        self.log.append(EventKind.ACCESS.value, {"type": "lockdown", "on": on, "reason": reason, "seq": cmd.seq,
                                                 "by": cmd.requested_by, "dept": self.agent.config.dept})
        self.agent.set_lockdown(reason if on else None)
        log.warning("device %s: lockdown %s by %s (command %d): %s", self.log.device, "on" if on else "off",
                    cmd.requested_by, cmd.seq, reason)

    def _allowlist_target(self) -> tuple[Path, AllowList]:
        return self.agent.config.allowlist_file, self.agent.allowlist
