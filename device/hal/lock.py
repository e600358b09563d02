"""A cabinet door lock: a relay-driven solenoid (or magnetic lock) on one GPIO output, with a burn-out guard."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import Enum

from device.hal.pins import DeviceClosed, InvalidSetting, PinFactory, Timer, resolve_pin_factory, run_callback

log = logging.getLogger(__name__)


class LockState(Enum):
    LOCKED = "locked"
    UNLOCKED = "unlocked"


class Lock:
    """Relay output that unlocks the door for a bounded time.

    ``fail_secure=True`` (the default, a solenoid latch): de-energised = locked,
    so a power cut or crash leaves the cabinet locked. ``fail_secure=False`` (a
    fail-safe maglock): de-energised = unlocked. ``active_high`` is the pin level
    that energises the relay.

    Every unlock is bounded by ``max_energised_s``: for a fail-secure solenoid that
    is exactly how long the coil may stay energised before it overheats; the lock
    relocks by itself when the time runs out, whatever the caller asked for.
    """

    def __init__(
        self,
        pin: int,
        *,
        active_high: bool = True,
        fail_secure: bool = True,
        max_energised_s: float = 10.0,
        pin_factory: PinFactory | None = None,
        name: str = "lock",
    ) -> None:
        if not max_energised_s > 0:
            raise InvalidSetting(f"{name}: max_energised_s must be > 0, got {max_energised_s}")
        self.name = name
        self.active_high = active_high
        self.fail_secure = fail_secure
        self.max_energised_s = float(max_energised_s)
        self.when_changed: Callable[[LockState], None] | None = None
        self._factory = resolve_pin_factory(pin_factory)
        self._mutex = threading.RLock()
        self._timer: Timer | None = None
        self._generation = 0
        self._state = LockState.LOCKED
        self._closed = False
        self._pin = self._factory.open_output(pin, initial=self._level_for(LockState.LOCKED))

    @property
    def state(self) -> LockState:
        return self._state

    @property
    def is_unlocked(self) -> bool:
        return self._state is LockState.UNLOCKED

    @property
    def is_energised(self) -> bool:
        """Whether the relay coil is powered right now."""
        return self._pin.read() == self.active_high

    def unlock(self, duration_s: float | None = None) -> float:
        """Unlock for ``duration_s`` (default and ceiling: ``max_energised_s``); returns the granted time."""
        if duration_s is not None and not duration_s > 0:
            raise InvalidSetting(f"{self.name}: unlock duration must be > 0, got {duration_s}")
        granted = self.max_energised_s if duration_s is None else min(float(duration_s), self.max_energised_s)
        if duration_s is not None and duration_s > self.max_energised_s:
            log.warning("%s: unlock for %.1f s capped at %.1f s", self.name, duration_s, self.max_energised_s)
        with self._mutex:
            self._check_open()
            self._cancel_timer()
            self._generation += 1
            generation = self._generation
            self._pin.write(self._level_for(LockState.UNLOCKED))
            self._timer = self._factory.clock.call_later(granted, lambda: self._expire(generation))
            changed = self._set_state(LockState.UNLOCKED)
        log.info("%s unlocked for %.2f s", self.name, granted)
        if changed:
            self._notify()
        return granted

    def lock(self) -> None:
        """Lock now (idempotent)."""
        with self._mutex:
            self._check_open()
            changed = self._relock()
        if changed:
            log.info("%s locked", self.name)
            self._notify()

    def close(self) -> None:
        """Lock and release the pin."""
        with self._mutex:
            if self._closed:
                return
            self._relock()
            self._closed = True
            self._pin.close()

    def _expire(self, generation: int) -> None:
        with self._mutex:
            if self._closed or generation != self._generation or self._state is LockState.LOCKED:
                return
            changed = self._relock()
        if changed:
            log.info("%s relocked after its unlock time ran out", self.name)
            self._notify()

    def _relock(self) -> bool:
        self._cancel_timer()
        self._generation += 1
        self._pin.write(self._level_for(LockState.LOCKED))
        return self._set_state(LockState.LOCKED)

    def _set_state(self, state: LockState) -> bool:
        changed = state is not self._state
        self._state = state
        return changed

    def _notify(self) -> None:
        callback = self.when_changed
        state = self._state
        if callback is not None:
            run_callback(lambda: callback(state), f"{self.name} when_changed")

    def _level_for(self, state: LockState) -> bool:
        energised = (state is LockState.UNLOCKED) == self.fail_secure
        return energised == self.active_high

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceClosed(f"{self.name} is closed")

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
