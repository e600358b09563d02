"""A cabinet door's reed-switch sensor on one GPIO input, debounced, with opened/closed callbacks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import Enum

from device.hal.pins import DeviceClosed, InvalidSetting, PinFactory, Pull, Timer, resolve_pin_factory, run_callback

log = logging.getLogger(__name__)


class DoorState(Enum):
    OPEN = "open"
    CLOSED = "closed"


class DoorSensor:
    """Reed switch input; a change counts only once the level has been stable for ``debounce_s``.

    ``open_level`` is the pin level that means *open*. The usual wiring (switch to
    ground, pull-up, magnet on the door holding the switch closed) reads low when
    the door is shut and high when it opens: ``open_level=True`` with ``pull=Pull.UP``.

    ``when_opened`` / ``when_closed`` run on the clock's timer thread, each under
    ``logging.exception``, so a failing callback never stops the watcher.
    """

    def __init__(
        self,
        pin: int,
        *,
        open_level: bool = True,
        pull: Pull = Pull.UP,
        debounce_s: float = 0.05,
        pin_factory: PinFactory | None = None,
        name: str = "door",
    ) -> None:
        if debounce_s < 0:
            raise InvalidSetting(f"{name}: debounce_s must be >= 0, got {debounce_s}")
        self.name = name
        self.open_level = open_level
        self.debounce_s = float(debounce_s)
        self.when_opened: Callable[[], None] | None = None
        self.when_closed: Callable[[], None] | None = None
        self._factory = resolve_pin_factory(pin_factory)
        self._mutex = threading.Lock()
        self._timer: Timer | None = None
        self._generation = 0
        self._closed = False
        self._pin = self._factory.open_input(pin, pull=pull)
        self._state = self._state_for(self._pin.read())
        self._pin.on_edge(self._on_edge)

    @property
    def state(self) -> DoorState:
        """The debounced state."""
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is DoorState.OPEN

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._generation += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._pin.on_edge(None)
        self._pin.close()

    def _state_for(self, level: bool) -> DoorState:
        return DoorState.OPEN if level == self.open_level else DoorState.CLOSED

    def _on_edge(self, level: bool) -> None:
        with self._mutex:
            if self._closed:
                return
            self._generation += 1
            generation = self._generation
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._factory.clock.call_later(self.debounce_s, lambda: self._settle(generation))

    def _settle(self, generation: int) -> None:
        with self._mutex:
            if self._closed or generation != self._generation:
                return
            self._timer = None
            try:
                new_state = self._state_for(self._pin.read())
            except DeviceClosed:
                return
            if new_state is self._state:
                return
            self._state = new_state
        log.info("%s %s", self.name, new_state.value)
        if new_state is DoorState.OPEN:
            run_callback(self.when_opened, f"{self.name} when_opened")
        else:
            run_callback(self.when_closed, f"{self.name} when_closed")

    def __enter__(self) -> DoorSensor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
