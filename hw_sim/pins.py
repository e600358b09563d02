"""Simulated GPIO: a pin bank with timelines, a manual clock, and a door wired to a lock and a reed switch."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from device.hal.pins import (
    Clock,
    DeviceClosed,
    Direction,
    EdgeCallback,
    MonotonicClock,
    Pin,
    PinDirectionError,
    PinFactory,
    Pull,
)

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Scheduled:
    due: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock(Clock):
    """A clock that moves only when told to; due callbacks run in order inside :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._queue: list[_Scheduled] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()

    def now(self) -> float:
        return self._now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> _Scheduled:
        with self._lock:
            item = _Scheduled(self._now + max(0.0, delay_s), next(self._seq), callback)
            heapq.heappush(self._queue, item)
            return item

    def advance(self, seconds: float) -> None:
        """Move time forward, running every callback that falls due, each at its own instant."""
        with self._lock:
            target = self._now + seconds
        while True:
            with self._lock:
                if not self._queue or self._queue[0].due > target:
                    self._now = max(self._now, target)
                    return
                item = heapq.heappop(self._queue)
                if item.cancelled:
                    continue
                self._now = max(self._now, item.due)
            try:
                item.callback()
            except Exception:
                log.exception("scheduled callback failed")

    @property
    def pending(self) -> int:
        """Scheduled callbacks not yet run or cancelled."""
        return sum(1 for item in self._queue if not item.cancelled)


class SimPin(Pin):
    """A simulated line. Keeps ``timeline`` of (time, level); tests drive inputs with ``drive_high/low``."""

    def __init__(self, factory: SimPinFactory, number: int) -> None:
        super().__init__(number, Direction.INPUT)
        self._factory = factory
        self._level = False
        self._pull = Pull.NONE
        self._driven: bool | None = None
        self._callback: EdgeCallback | None = None
        self._watchers: list[EdgeCallback] = []
        self.is_open = False
        self.timeline: list[tuple[float, bool]] = [(factory.clock.now(), False)]

    @property
    def level(self) -> bool:
        return self._level

    def read(self) -> bool:
        return self._level

    def write(self, level: bool) -> None:
        if not self.is_open:
            raise DeviceClosed(f"sim pin {self.number} is not open")
        if self.direction is not Direction.OUTPUT:
            raise PinDirectionError(f"sim pin {self.number} is an input and cannot be driven")
        self._set(level)

    def on_edge(self, callback: EdgeCallback | None) -> None:
        self._callback = callback

    def close(self) -> None:
        self._callback = None
        self.is_open = False
        self._factory._release(self.number)

    # --- test side -------------------------------------------------------
    def drive_high(self) -> None:
        """Force the line high from outside (a switch, a sensor)."""
        self.drive(True)

    def drive_low(self) -> None:
        self.drive(False)

    def drive(self, level: bool) -> None:
        self._driven = level
        self._set(level)

    def release(self) -> None:
        """Stop driving from outside; the line falls back to its pull."""
        self._driven = None
        if self.direction is Direction.INPUT:
            self._set(self._pull is Pull.UP)

    def watch(self, callback: EdgeCallback) -> None:
        """Wire something to this line: ``callback(level)`` on every change, inputs and outputs alike."""
        self._watchers.append(callback)

    def levels_since(self, t: float) -> list[bool]:
        return [level for when, level in self.timeline if when >= t]

    # --- factory side ----------------------------------------------------
    def _configure(self, direction: Direction, *, level: bool, pull: Pull = Pull.NONE) -> None:
        self.direction = direction
        self._pull = pull
        self.is_open = True
        self._set(self._driven if (direction is Direction.INPUT and self._driven is not None) else level)

    def _set(self, level: bool) -> None:
        if level == self._level:
            return
        self._level = level
        self.timeline.append((self._factory.clock.now(), level))
        callback = self._callback
        if callback is not None and self.direction is Direction.INPUT:
            callback(level)
        for watcher in list(self._watchers):
            watcher(level)


class SimPinFactory(PinFactory):
    """The ``sim`` backend: a bank of :class:`SimPin`; ``pin(n)`` gives tests the same object the device holds."""

    name = "sim"

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock if clock is not None else MonotonicClock())
        self._pins: dict[int, SimPin] = {}
        self._lock = threading.Lock()

    def pin(self, number: int) -> SimPin:
        with self._lock:
            if number not in self._pins:
                self._pins[number] = SimPin(self, number)
            return self._pins[number]

    def _open_output(self, number: int, *, initial: bool) -> Pin:
        pin = self.pin(number)
        pin._configure(Direction.OUTPUT, level=initial)
        return pin

    def _open_input(self, number: int, *, pull: Pull) -> Pin:
        pin = self.pin(number)
        pin._configure(Direction.INPUT, level=pull is Pull.UP, pull=pull)
        return pin


class SimHand:
    """Someone pulling the cabinet door's handle."""

    def __init__(self, door: SimCabinetDoor) -> None:
        self._door = door
        self.attempts = 0
        self.refused = 0

    def try_open(self, *, bounces: int = 0) -> bool:
        """Pull the handle: the door opens only while the lock is released. Returns whether it opened."""
        self.attempts += 1
        if not self._door.is_released:
            self.refused += 1
            return False
        self._door._open(bounces=bounces)
        return True


class SimCabinetDoor:
    """A door wired to a lock relay output and a reed-switch input on the same sim pin bank.

    ``is_released`` follows the relay pin: energised when the pin is at
    ``active_high``; a fail-secure latch is released while energised, a
    fail-safe one while de-energised. Moving the door drives the sensor pin to
    ``open_level`` (open) or its opposite (closed), optionally bouncing.
    """

    def __init__(
        self,
        factory: SimPinFactory,
        *,
        lock_pin: int,
        sensor_pin: int,
        active_high: bool = True,
        fail_secure: bool = True,
        open_level: bool = True,
        bounce_interval_s: float = 0.002,
    ) -> None:
        self.factory = factory
        self.lock_pin = factory.pin(lock_pin)
        self.sensor_pin = factory.pin(sensor_pin)
        self.active_high = active_high
        self.fail_secure = fail_secure
        self.open_level = open_level
        self.bounce_interval_s = bounce_interval_s
        self.hand = SimHand(self)
        self.forced_opens = 0
        self._open_now = False
        self.sensor_pin.drive(not open_level)

    @property
    def is_open(self) -> bool:
        return self._open_now

    @property
    def is_released(self) -> bool:
        """Whether the latch currently lets the door move."""
        energised = self.lock_pin.level == self.active_high
        return energised if self.fail_secure else not energised

    def force_open(self, *, bounces: int = 0) -> None:
        """Open the door against the lock (a crowbar, a broken latch)."""
        if not self.is_released:
            self.forced_opens += 1
        self._open(bounces=bounces)

    def close(self, *, bounces: int = 0) -> None:
        self._open_now = False
        self._move(not self.open_level, bounces)

    def _open(self, *, bounces: int) -> None:
        self._open_now = True
        self._move(self.open_level, bounces)

    def _move(self, final: bool, bounces: int) -> None:
        if bounces <= 0:
            self.sensor_pin.drive(final)
            return
        # A reed switch chatters: final, back, final, back... then settles at ``final``.
        levels = [final if i % 2 == 0 else not final for i in range(2 * bounces)] + [final]
        self.sensor_pin.drive(levels[0])
        for i, level in enumerate(levels[1:], start=1):
            self.factory.clock.call_later(i * self.bounce_interval_s, self._driver(level))

    def _driver(self, level: bool) -> Callable[[], None]:
        return lambda: self.sensor_pin.drive(level)
