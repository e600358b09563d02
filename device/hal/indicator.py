"""Status outputs on GPIO: an indicator LED (on, off, blink) and a buzzer that plays beep patterns."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from enum import Enum

from device.hal.pins import DeviceClosed, InvalidSetting, PinFactory, Timer, resolve_pin_factory

log = logging.getLogger(__name__)


class OutputState(Enum):
    OFF = "off"
    ON = "on"
    PATTERN = "pattern"
    """Playing a timed on/off sequence (blinking, beeping)."""


class BeepPattern(Enum):
    """Named patterns: alternating on/off durations in seconds, starting with *on*."""

    OK = (0.08,)
    ERROR = (0.1, 0.08, 0.1, 0.08, 0.1)
    ALARM = (0.5, 0.2, 0.5, 0.2, 0.5, 0.2, 0.5)
    DOOR_OPEN_TOO_LONG = (0.2, 0.8)


class _TimedOutput:
    """One GPIO output that can be switched or made to play an on/off sequence on the factory's clock."""

    def __init__(self, pin: int, *, active_high: bool, pin_factory: PinFactory | None, name: str) -> None:
        self.name = name
        self.active_high = active_high
        self._factory = resolve_pin_factory(pin_factory)
        self._mutex = threading.Lock()
        self._timer: Timer | None = None
        self._generation = 0
        self._state = OutputState.OFF
        self._closed = False
        self._pin = self._factory.open_output(pin, initial=not active_high)

    @property
    def state(self) -> OutputState:
        return self._state

    @property
    def is_active(self) -> bool:
        """Whether the output is driven *on* at this instant."""
        return self._pin.read() == self.active_high

    def on(self) -> None:
        with self._mutex:
            self._stop_pattern()
            self._drive(True)
            self._state = OutputState.ON

    def off(self) -> None:
        with self._mutex:
            self._stop_pattern()
            self._drive(False)
            self._state = OutputState.OFF

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._stop_pattern()
            self._drive(False)
            self._closed = True
            self._pin.close()

    def _play(self, durations: Sequence[float], *, repeat: bool) -> None:
        steps = [float(d) for d in durations]
        if not steps or any(d <= 0 for d in steps):
            raise InvalidSetting(f"{self.name}: a pattern needs positive durations, got {list(durations)}")
        if repeat and len(steps) % 2:
            raise InvalidSetting(f"{self.name}: a repeating pattern needs on/off pairs, got {steps}")
        with self._mutex:
            self._stop_pattern()
            self._state = OutputState.PATTERN
            self._step(self._generation, steps, 0, repeat)

    def _step(self, generation: int, steps: list[float], index: int, repeat: bool) -> None:
        # Called with the mutex held.
        if self._closed or generation != self._generation:
            return
        if index >= len(steps):
            if not repeat:
                self._drive(False)
                self._state = OutputState.OFF
                self._timer = None
                return
            index = 0
        self._drive(index % 2 == 0)
        self._timer = self._factory.clock.call_later(
            steps[index], lambda: self._advance(generation, steps, index + 1, repeat)
        )

    def _advance(self, generation: int, steps: list[float], index: int, repeat: bool) -> None:
        with self._mutex:
            self._step(generation, steps, index, repeat)

    def _stop_pattern(self) -> None:
        if self._closed:
            raise DeviceClosed(f"{self.name} is closed")
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drive(self, active: bool) -> None:
        self._pin.write(active == self.active_high)

    def __enter__(self) -> _TimedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Indicator(_TimedOutput):
    """A status LED."""

    def __init__(
        self, pin: int, *, active_high: bool = True, pin_factory: PinFactory | None = None, name: str = "led"
    ) -> None:
        super().__init__(pin, active_high=active_high, pin_factory=pin_factory, name=name)

    @property
    def is_lit(self) -> bool:
        return self.is_active

    def blink(self, *, on_s: float = 0.5, off_s: float = 0.5, times: int | None = None) -> None:
        """Blink ``times`` times (forever when None, until ``on()``/``off()``)."""
        if times is None:
            self._play((on_s, off_s), repeat=True)
        elif times < 1:
            raise InvalidSetting(f"{self.name}: blink times must be >= 1, got {times}")
        else:
            self._play([on_s, off_s] * (times - 1) + [on_s], repeat=False)


class Buzzer(_TimedOutput):
    """A piezo buzzer; ``beep()`` returns at once and the pattern plays on the clock's timers."""

    def __init__(
        self, pin: int, *, active_high: bool = True, pin_factory: PinFactory | None = None, name: str = "buzzer"
    ) -> None:
        super().__init__(pin, active_high=active_high, pin_factory=pin_factory, name=name)

    @property
    def is_sounding(self) -> bool:
        return self.is_active

    def beep(self, pattern: BeepPattern | Sequence[float] = BeepPattern.OK) -> None:
        """Play ``pattern``: a :class:`BeepPattern` or on/off durations in seconds, starting with on."""
        durations = pattern.value if isinstance(pattern, BeepPattern) else pattern
        self._play(durations, repeat=False)

    def silence(self) -> None:
        self.off()
