"""Sending a made-up month through the real wire: every device's hash-chained events over MQTT to the
gateway, as the devices would have sent them, day by day.

Each device is a :class:`hw_sim.loadgen.SimDevice` (one MQTT connection, batches within a window of acks,
resend on silence) whose log is filled from the month instead of from scans now: the events keep their own
timestamps. Hours are sent in order and each hour is acknowledged before the next starts, so what happened
later reaches the gateway later, as with devices that are online (a restock hours before a scan is stored
before it, a return the day after a use finds its charge). Devices marked offline send their whole log at
the end, as a handheld that was out of range does when it comes back.

The gateway relates events of *different* devices by the order it stored them: a cabinet's ``restocked``
event for an item stored after another device's scan of it counts as the item coming back, and credits the
charge. Sent a day at a time, a cabinet's morning restock and a handheld's afternoon scan of the same item
raced, and a few legitimate charges were credited (reconciliation then flags them, rightly, as used and not
charged); devices that send as they go do not race.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from hw_sim.catalog import sim_catalog
from hw_sim.loadgen import LoadConfig, SimDevice
from hw_sim.month_world import HOUR_MS, Month, SimEvent
from spd_common.wire import Event, event_hash


class MonthDevice(SimDevice):
    """A device whose log holds events of the past, recorded in order."""

    def record(self, e: SimEvent) -> None:
        seq = len(self.events) + 1
        if seq != e.seq:
            raise ValueError(f"{self.device}: event seq {e.seq} recorded as {seq}")
        digest = event_hash(self.device, seq, e.ts_ms, e.kind, e.body, self._head)
        self.events.append(Event(self.device, seq, e.ts_ms, e.kind, e.body, self._head, digest))
        self._head = digest
        self.scan_at.append(time.time())
        self.stored_at.append(0.0)


async def send_month(month: Month, host: str, port: int, *, site: str, timeout_s: float = 600.0,
                     batch_size: int = 500, phase_ms: int = HOUR_MS) -> dict[str, float]:
    """Send every device's events; returns the figures (seconds, events, batches)."""
    cfg = LoadConfig(devices=len(month.devices), site=site, batch_size=batch_size, window=4, resend_after_s=5.0)
    catalog = sim_catalog()
    devices = {d: MonthDevice(d, cfg, catalog, host, port) for d in sorted(month.devices)}
    t0 = time.monotonic()
    gate = asyncio.Semaphore(50)

    async def connect(dev: MonthDevice) -> None:
        async with gate:
            await dev.connect()

    await asyncio.gather(*(connect(d) for d in devices.values()))
    ticker = asyncio.create_task(_resend_ticker(list(devices.values())))
    pending = {d: list(evs) for d, evs in month.devices.items()}
    try:
        first = min((e.ts_ms for evs in month.devices.values() for e in evs), default=month.start_ms)
        cutoff = month.start_ms + ((first - month.start_ms) // phase_ms) * phase_ms
        last = max((e.ts_ms for evs in month.devices.values() for e in evs), default=month.start_ms)
        while cutoff <= last:
            cutoff += phase_ms
            for name, dev in devices.items():
                if name in month.offline:
                    continue
                _record_until(dev, pending[name], cutoff)
            await _acked(devices.values(), timeout_s)
        for name in month.offline:
            _record_until(devices[name], pending[name], last + 1)
        await _acked(devices.values(), timeout_s)
    finally:
        ticker.cancel()
        await asyncio.gather(*(d.disconnect() for d in devices.values()), return_exceptions=True)
    counters = [d.counters for d in devices.values()]
    return {"wire_s": round(time.monotonic() - t0, 2), "events_sent": sum(len(d.events) for d in devices.values()),
            "batches": sum(c.batches_sent for c in counters), "resends": sum(c.rewinds for c in counters),
            "quarantined": sum(len(c.rejected) for c in counters)}


def _record_until(dev: MonthDevice, events: list[SimEvent], cutoff: int) -> None:
    n = 0
    while n < len(events) and events[n].ts_ms < cutoff:
        dev.record(events[n])
        n += 1
    del events[:n]
    if n:
        dev.send_some()


async def _acked(devices: Iterable[MonthDevice], timeout_s: float) -> None:
    devs = list(devices)
    deadline = time.monotonic() + timeout_s
    while not all(d.acked == d.last_seq for d in devs):
        if time.monotonic() > deadline:
            behind = [d.device for d in devs if d.acked != d.last_seq][:5]
            raise TimeoutError(f"devices not acknowledged within {timeout_s:.0f}s: {behind}")
        await asyncio.sleep(0.02)


async def _resend_ticker(devices: list[MonthDevice]) -> None:
    while True:
        await asyncio.sleep(0.25)
        now = time.monotonic()
        for d in devices:
            d.check_stalled(now)
