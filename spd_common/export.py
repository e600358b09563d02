"""The event export file: a device's unacknowledged events carried by hand to the gateway (JSON lines).

Written by ``spd-device export-events`` (and by ``reprovision``/``reset``
before they retire a log), read by ``spd-gateway import-events``. Layout::

    {"format":"spd-event-export","v":1,"site":..,"device":..,"count":n,"first_seq":a,"last_seq":b,"exported_at":ms}
    {"seq":a,"ts":..,"kind":..,"body":{..},"prev":..,"hash":..}      one line per event, in order
    {"end":true,"count":n,"sha256":"<hex of every byte above this line>"}

The reader checks the trailer (a truncated or edited file is refused whole),
every event's hash and every link between consecutive events.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from spd_common.wire import Event, WireError, check_id, event_hash

FORMAT: Final = "spd-event-export"
VERSION: Final = 1


class ExportError(ValueError):
    """An export file that cannot be trusted; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EventExport:
    site: str
    device: str
    events: list[Event]

    @property
    def first_seq(self) -> int:
        return self.events[0].seq if self.events else 0

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def write_export(path: str | Path, *, site: str, device: str, events: list[Event]) -> EventExport:
    """Write and fsync the file (refuses to overwrite one); returns what was written."""
    check_id("site", site)
    check_id("device", device)
    p = Path(path)
    digest = hashlib.sha256()
    first = events[0].seq if events else 0
    last = events[-1].seq if events else 0
    with open(p, "xb") as f:
        for chunk in [_line({"format": FORMAT, "v": VERSION, "site": site, "device": device, "count": len(events),
                             "first_seq": first, "last_seq": last, "exported_at": int(time.time() * 1000)})] + \
                [_line(e.to_wire()) for e in events]:
            digest.update(chunk)
            f.write(chunk)
        f.write(_line({"end": True, "count": len(events), "sha256": digest.hexdigest()}))
        f.flush()
        os.fsync(f.fileno())
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return EventExport(site, device, list(events))


def read_export(path: str | Path) -> EventExport:
    """Read and verify an export file, or raise :class:`ExportError`."""
    data = Path(path).read_bytes()
    lines = data.splitlines(keepends=True)
    if len(lines) < 2:
        raise ExportError("truncated", "the file has no header or no trailer")
    try:
        header = json.loads(lines[0])
        trailer = json.loads(lines[-1])
    except json.JSONDecodeError as err:
        raise ExportError("bad_format", f"header or trailer is not JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("v") != VERSION:
        raise ExportError("bad_format", "not an spd event export of a supported version")
    if not isinstance(trailer, dict) or trailer.get("end") is not True:
        raise ExportError("truncated", "the trailer line is missing: the file was cut short")
    if hashlib.sha256(b"".join(lines[:-1])).hexdigest() != trailer.get("sha256"):
        raise ExportError("checksum", "the content does not match the trailer's checksum: the file was altered")
    try:
        site, device = check_id("site", str(header.get("site"))), check_id("device", str(header.get("device")))
    except WireError as err:
        raise ExportError("bad_format", str(err)) from None
    events: list[Event] = []
    for n, raw in enumerate(lines[1:-1], start=2):
        try:
            d = json.loads(raw)
            ev = Event(device, d["seq"], d["ts"], d["kind"], d["body"], d["prev"], d["hash"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ExportError("bad_event", f"line {n}: {err}") from None
        if ev.hash != event_hash(ev.device, ev.seq, ev.ts_ms, ev.kind, ev.body, ev.prev):
            raise ExportError("chain_break", f"event {ev.seq}: hash does not match its content")
        if events and (ev.seq != events[-1].seq + 1 or ev.prev != events[-1].hash):
            raise ExportError("chain_break", f"event {ev.seq} does not follow event {events[-1].seq}")
        events.append(ev)
    if len(events) != header.get("count") or len(events) != trailer.get("count"):
        raise ExportError("truncated", f"{len(events)} events, the header says {header.get('count')}")
    return EventExport(site, device, events)
