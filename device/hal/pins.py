"""The GPIO pin interface, the clock devices time themselves by, and the registry of pin backends.

Devices (locks, door sensors, indicators) talk only to :class:`Pin` objects made
by a :class:`PinFactory`. Backends are looked up by name and imported lazily, so
a missing vendor library breaks only the backend that needs it:

* ``rpigpio`` — :mod:`device.hal.rpi_gpio`, on the RPi.GPIO library;
* ``sim`` — :mod:`hw_sim.pins`, a stateful simulated pin bank.

The factory a device uses is, in order: its explicit ``pin_factory=`` keyword,
the process default set by configuration (:func:`set_default_pin_factory`), the
backend named by the ``SPD_PIN_FACTORY`` environment variable, ``rpigpio``.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum
from typing import Protocol

log = logging.getLogger(__name__)

ENV_PIN_FACTORY = "SPD_PIN_FACTORY"
DEFAULT_BACKEND = "rpigpio"

EdgeCallback = Callable[[bool], None]
"""Called with the pin's new level (True = high) after it changed."""


class HalError(Exception):
    """Root of the hardware-layer errors; ``reason`` is a stable code."""

    reason = "hal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownPinFactory(HalError, LookupError):
    """No pin backend is registered under that name."""

    reason = "unknown_pin_factory"


class PinFactoryUnavailable(HalError, ImportError):
    """The backend exists but its vendor library (or hardware) is missing."""

    reason = "pin_factory_unavailable"


class PinInUse(HalError, ValueError):
    """A pin was opened twice on the same factory."""

    reason = "pin_in_use"


class PinDirectionError(HalError, ValueError):
    """An input pin was written to."""

    reason = "pin_direction"


class DeviceClosed(HalError, RuntimeError):
    """A device (or pin) was used after ``close()``."""

    reason = "device_closed"


class InvalidSetting(HalError, ValueError):
    """A hardware option is out of range."""

    reason = "invalid_setting"


class Direction(Enum):
    INPUT = "input"
    OUTPUT = "output"


class Pull(Enum):
    """Internal bias resistor of an input pin."""

    UP = "up"
    DOWN = "down"
    NONE = "none"


class Timer(Protocol):
    """A scheduled call that can still be cancelled."""

    def cancel(self) -> None: ...


class Clock(ABC):
    """Time source and one-shot scheduler for devices (a manual one makes tests deterministic)."""

    @abstractmethod
    def now(self) -> float:
        """Monotonic seconds."""

    @abstractmethod
    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once, ``delay_s`` from now, on a clock-owned thread."""


class MonotonicClock(Clock):
    """Wall-clock implementation: :func:`time.monotonic` and daemon :class:`threading.Timer` threads."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = threading.Timer(max(0.0, delay_s), callback)
        timer.daemon = True
        timer.name = "hal-timer"
        timer.start()
        return timer


class Pin(ABC):
    """One GPIO line, already configured as input or output. Levels are booleans (True = high)."""

    def __init__(self, number: int, direction: Direction) -> None:
        self.number = number
        self.direction = direction

    @abstractmethod
    def read(self) -> bool:
        """Current level."""

    @abstractmethod
    def write(self, level: bool) -> None:
        """Drive an output pin; :class:`PinDirectionError` on an input."""

    @abstractmethod
    def on_edge(self, callback: EdgeCallback | None) -> None:
        """Call ``callback(level)`` on every change of an input (None stops it). Runs on a backend thread."""

    @abstractmethod
    def close(self) -> None:
        """Release the line; devices drive their safe level before closing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.number} {self.direction.value}>"


class PinFactory(ABC):
    """Makes pins for one backend and hands out the clock devices use for timing."""

    name = "abstract"

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._claimed: set[int] = set()
        self._claim_lock = threading.Lock()

    def open_output(self, number: int, *, initial: bool = False) -> Pin:
        """Claim ``number`` as an output driven to ``initial``."""
        self._claim(number)
        try:
            return self._open_output(number, initial=initial)
        except BaseException:
            self._release(number)
            raise

    def open_input(self, number: int, *, pull: Pull = Pull.UP) -> Pin:
        """Claim ``number`` as an input with the given bias."""
        self._claim(number)
        try:
            return self._open_input(number, pull=pull)
        except BaseException:
            self._release(number)
            raise

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release everything this factory holds."""

    @abstractmethod
    def _open_output(self, number: int, *, initial: bool) -> Pin: ...

    @abstractmethod
    def _open_input(self, number: int, *, pull: Pull) -> Pin: ...

    def _claim(self, number: int) -> None:
        if number < 0:
            raise InvalidSetting(f"pin number must be >= 0, got {number}")
        with self._claim_lock:
            if number in self._claimed:
                raise PinInUse(f"pin {number} is already open on the {self.name} pin factory")
            self._claimed.add(number)

    def _release(self, number: int) -> None:
        with self._claim_lock:
            self._claimed.discard(number)


_BACKENDS: dict[str, str | Callable[[], PinFactory]] = {
    "rpigpio": "device.hal.rpi_gpio:RPiGPIOFactory",
    "sim": "hw_sim.pins:SimPinFactory",
}
_default: PinFactory | None = None
_default_lock = threading.Lock()


def register_pin_factory(name: str, target: str | Callable[[], PinFactory]) -> None:
    """Register a backend: a ``"module:Class"`` path (imported on first use) or a zero-argument constructor."""
    _BACKENDS[name] = target


def pin_factory_names() -> list[str]:
    return sorted(_BACKENDS)


def load_pin_factory(name: str) -> PinFactory:
    """A new factory of the backend called ``name`` (or given as ``"module:Class"``)."""
    target = _BACKENDS.get(name)
    if target is None and ":" in name:
        target = name
    if target is None:
        raise UnknownPinFactory(f"unknown pin factory {name!r}; known: {', '.join(pin_factory_names())}")
    if callable(target):
        return target()
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PinFactoryUnavailable(f"pin factory {name!r} cannot be loaded: {err}") from err
    cls = getattr(module, attr, None)
    if cls is None:
        raise UnknownPinFactory(f"pin factory {name!r}: {module_name} has no {attr}")
    factory = cls()
    if not isinstance(factory, PinFactory):
        raise UnknownPinFactory(f"pin factory {name!r}: {target} is not a PinFactory")
    log.info("pin factory %s loaded", name)
    return factory


def set_default_pin_factory(factory: PinFactory | str | None) -> None:
    """Set the process-wide factory (by object or backend name); None goes back to the environment's choice."""
    global _default
    with _default_lock:
        _default = load_pin_factory(factory) if isinstance(factory, str) else factory


def default_pin_factory() -> PinFactory:
    """The process-wide factory, created on first use from ``SPD_PIN_FACTORY`` (default ``rpigpio``)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = load_pin_factory(os.environ.get(ENV_PIN_FACTORY, "").strip() or DEFAULT_BACKEND)
        return _default


def resolve_pin_factory(pin_factory: PinFactory | None) -> PinFactory:
    """The factory a device should use given its ``pin_factory=`` keyword."""
    return pin_factory if pin_factory is not None else default_pin_factory()


def run_callback(callback: Callable[[], None] | None, what: str) -> None:
    """Run a user callback; an exception is logged with its traceback and never propagates to the watcher."""
    if callback is None:
        return
    try:
        callback()
    except Exception:
        log.exception("%s callback failed", what)
