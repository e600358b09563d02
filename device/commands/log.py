"""``spd-device log``: show the event log's backlog and verify its integrity and hash chain."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from device.config import load_config
from device.eventlog import EventLog


def _open(a: argparse.Namespace) -> EventLog:
    cfg = load_config(a.config)
    return EventLog(cfg.log_path, device=cfg.device_id)


def _status(a: argparse.Namespace) -> int:
    log = _open(a)
    print(json.dumps({"device": log.device, "last_seq": log.last_seq, "acked_seq": log.acked_seq,
                      "backlog": log.backlog()}))
    log.close()
    return 0


def _verify(a: argparse.Namespace) -> int:
    log = _open(a)
    integrity = log.integrity_check()
    breaks = log.verify_chain()
    log.close()
    print(f"integrity_check: {integrity}")
    for b in breaks:
        print(f"chain break at seq {b.seq}: {b.detail}")
    print("hash chain: ok" if not breaks else f"hash chain: {len(breaks)} break(s)")
    return 0 if integrity == "ok" and not breaks else 1


def register(sub: Any) -> None:
    p = sub.add_parser("log", help="event log status and verification")
    p.add_argument("--config", type=Path, default=Path("/etc/spd-device/device.toml"),
                   help="the device configuration file (TOML)")
    ls = p.add_subparsers(dest="log_cmd", required=True)
    ls.add_parser("status", help="backlog and sequence numbers").set_defaults(func=_status)
    ls.add_parser("verify", help="PRAGMA integrity_check and the hash chain").set_defaults(func=_verify)
