"""The ``rpigpio`` pin backend: Raspberry Pi GPIO lines through the RPi.GPIO library (BCM numbering)."""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType
from typing import Any

from device.hal.pins import (
    Clock,
    DeviceClosed,
    Direction,
    EdgeCallback,
    Pin,
    PinDirectionError,
    PinFactory,
    PinFactoryUnavailable,
    Pull,
)

log = logging.getLogger(__name__)


def _import_gpio() -> ModuleType:
    try:
        return importlib.import_module("RPi.GPIO")
    except ImportError as err:
        raise PinFactoryUnavailable(
            "the rpigpio pin factory needs the RPi.GPIO library (pip install RPi.GPIO, on a Raspberry Pi); "
            f"set SPD_PIN_FACTORY to another backend elsewhere ({err})"
        ) from err
    except RuntimeError as err:  # RPi.GPIO raises this when not running on a Pi
        raise PinFactoryUnavailable(f"RPi.GPIO cannot run here: {err}") from err


class RPiGPIOPin(Pin):
    """One BCM-numbered line driven through RPi.GPIO."""

    def __init__(self, factory: RPiGPIOFactory, number: int, direction: Direction) -> None:
        super().__init__(number, direction)
        self._factory = factory
        self._gpio: Any = factory.gpio
        self._callback: EdgeCallback | None = None
        self._closed = False

    def read(self) -> bool:
        self._check_open()
        return bool(self._gpio.input(self.number))

    def write(self, level: bool) -> None:
        self._check_open()
        if self.direction is not Direction.OUTPUT:
            raise PinDirectionError(f"pin {self.number} is an input and cannot be driven")
        self._gpio.output(self.number, self._gpio.HIGH if level else self._gpio.LOW)

    def on_edge(self, callback: EdgeCallback | None) -> None:
        self._check_open()
        if self._callback is not None:
            self._gpio.remove_event_detect(self.number)
        self._callback = callback
        if callback is not None:
            self._gpio.add_event_detect(self.number, self._gpio.BOTH, callback=self._on_gpio_event)

    def _on_gpio_event(self, channel: int) -> None:
        callback = self._callback
        if callback is None or self._closed:
            return
        try:
            callback(bool(self._gpio.input(channel)))
        except Exception:
            log.exception("edge handler of pin %d failed", channel)

    def close(self) -> None:
        if self._closed:
            return
        if self._callback is not None:
            self._gpio.remove_event_detect(self.number)
            self._callback = None
        self._gpio.cleanup(self.number)
        self._closed = True
        self._factory._release(self.number)

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceClosed(f"pin {self.number} is closed")


class RPiGPIOFactory(PinFactory):
    """Pins on the Pi's header via RPi.GPIO; the library is imported when the factory is made."""

    name = "rpigpio"

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self.gpio: Any = _import_gpio()
        self.gpio.setwarnings(False)
        self.gpio.setmode(self.gpio.BCM)
        self._pins: dict[int, RPiGPIOPin] = {}
        self._lock = threading.Lock()

    def _open_output(self, number: int, *, initial: bool) -> Pin:
        self.gpio.setup(number, self.gpio.OUT, initial=self.gpio.HIGH if initial else self.gpio.LOW)
        return self._remember(RPiGPIOPin(self, number, Direction.OUTPUT))

    def _open_input(self, number: int, *, pull: Pull) -> Pin:
        pud = {Pull.UP: self.gpio.PUD_UP, Pull.DOWN: self.gpio.PUD_DOWN, Pull.NONE: self.gpio.PUD_OFF}[pull]
        self.gpio.setup(number, self.gpio.IN, pull_up_down=pud)
        return self._remember(RPiGPIOPin(self, number, Direction.INPUT))

    def _remember(self, pin: RPiGPIOPin) -> RPiGPIOPin:
        with self._lock:
            self._pins[pin.number] = pin
        return pin

    def close(self) -> None:
        with self._lock:
            pins = list(self._pins.values())
            self._pins.clear()
        for pin in pins:
            pin.close()
