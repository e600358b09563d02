"""Pin backends: lookup by name and environment, the simulated pin bank, and the RPi.GPIO backend on fake-rpi."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from device.hal import (
    DoorSensor,
    Lock,
    PinDirectionError,
    PinFactoryUnavailable,
    PinInUse,
    Pull,
    UnknownPinFactory,
    default_pin_factory,
    load_pin_factory,
    set_default_pin_factory,
)
from hw_sim.pins import ManualClock, SimPinFactory


@pytest.fixture(autouse=True)
def fresh_default() -> Iterator[None]:
    set_default_pin_factory(None)
    yield
    set_default_pin_factory(None)


def test_sim_backend_is_found_by_name() -> None:
    assert isinstance(load_pin_factory("sim"), SimPinFactory)


def test_unknown_backend_name_is_a_clear_lookup_error() -> None:
    with pytest.raises(UnknownPinFactory) as caught:
        load_pin_factory("pigpoi")
    assert isinstance(caught.value, LookupError)
    assert caught.value.reason == "unknown_pin_factory"
    assert "known: rpigpio, sim" in str(caught.value)


def test_missing_rpi_gpio_breaks_only_that_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "RPi", None)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", None)
    with pytest.raises(PinFactoryUnavailable) as caught:
        load_pin_factory("rpigpio")
    assert isinstance(caught.value, ImportError)
    assert "RPi.GPIO" in str(caught.value)
    assert isinstance(load_pin_factory("sim"), SimPinFactory)


def test_environment_chooses_the_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPD_PIN_FACTORY", "sim")
    factory = default_pin_factory()
    assert isinstance(factory, SimPinFactory)
    lock = Lock(5)
    lock.unlock(1.0)
    assert factory.pin(5).level is True
    lock.close()


def test_configured_default_and_explicit_keyword_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPD_PIN_FACTORY", "does-not-exist")
    configured = SimPinFactory()
    set_default_pin_factory(configured)
    explicit = SimPinFactory()
    Lock(6)
    Lock(6, pin_factory=explicit).unlock(1.0)
    assert configured.pin(6).is_open and configured.pin(6).level is False
    assert explicit.pin(6).level is True


def test_a_pin_cannot_be_opened_twice() -> None:
    pins = SimPinFactory()
    lock = Lock(4, pin_factory=pins)
    with pytest.raises(PinInUse):
        DoorSensor(4, pin_factory=pins)
    lock.close()
    DoorSensor(4, pin_factory=pins)


def test_input_pins_refuse_writes() -> None:
    pins = SimPinFactory()
    pin = pins.open_input(3, pull=Pull.UP)
    assert pin.read() is True
    with pytest.raises(PinDirectionError):
        pin.write(False)


def test_sim_pin_keeps_a_timeline_of_driven_levels() -> None:
    clock = ManualClock(start=100.0)
    pins = SimPinFactory(clock=clock)
    pin = pins.open_input(9, pull=Pull.DOWN)
    seen: list[bool] = []
    pin.on_edge(seen.append)
    sim = pins.pin(9)
    sim.drive_high()
    clock.advance(0.5)
    sim.drive_high()  # no change, no entry
    sim.drive_low()
    sim.release()
    assert sim.timeline == [(100.0, False), (100.0, True), (100.5, False)]
    assert seen == [True, False]


def test_manual_clock_runs_callbacks_in_time_order() -> None:
    clock = ManualClock()
    ran: list[tuple[str, float]] = []
    clock.call_later(0.3, lambda: ran.append(("b", clock.now())))
    clock.call_later(0.1, lambda: ran.append(("a", clock.now())))
    clock.call_later(0.2, lambda: ran.append(("x", clock.now()))).cancel()
    clock.advance(0.25)
    assert ran == [("a", 0.1)]
    clock.advance(1.0)
    assert ran == [("a", 0.1), ("b", 0.3)]
    assert clock.now() == 1.25


# --- the rpigpio backend, exercised on fake-rpi ------------------------------


@pytest.fixture
def fake_gpio(monkeypatch: pytest.MonkeyPatch) -> Any:
    """fake-rpi's GPIO module in place of RPi.GPIO, recording what the backend asks of it."""
    fake_rpi = pytest.importorskip("fake_rpi")
    fake_rpi.toggle_print(False)

    class RecordingGPIO(fake_rpi.RPi._GPIO):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.levels: dict[int, int] = {}
            self.setups: dict[int, tuple[int, dict[str, int]]] = {}
            self.handlers: dict[int, Callable[[int], None]] = {}
            self.cleaned: list[int] = []

        def setup(self, channel: int, direction: int, **kw: int) -> None:
            self.setups[channel] = (direction, kw)
            if direction == self.OUT:
                self.levels[channel] = int(kw.get("initial", 0))

        def output(self, channel: int, state: int) -> None:
            self.levels[channel] = state

        def input(self, channel: int) -> int:
            return self.levels.get(channel, 0)

        def set_input(self, channel: int, value: int) -> None:
            self.levels[channel] = value
            handler = self.handlers.get(channel)
            if handler is not None:
                handler(channel)

        def add_event_detect(self, channel: int, edge: int, callback: Any = None, bouncetime: Any = None) -> None:
            assert edge == self.BOTH
            self.handlers[channel] = callback

        def remove_event_detect(self, channel: int) -> None:
            self.handlers.pop(channel, None)

        def cleanup(self, channel: int | None = None) -> None:
            self.cleaned.append(-1 if channel is None else channel)

    gpio = RecordingGPIO()
    package = type(sys)("RPi")
    package.GPIO = gpio  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "RPi", package)
    monkeypatch.setitem(sys.modules, "RPi.GPIO", gpio)
    return gpio


def test_rpigpio_lock_drives_the_relay_line(fake_gpio: Any) -> None:
    clock = ManualClock()
    factory = load_pin_factory("rpigpio")
    factory.clock = clock
    lock = Lock(17, active_high=False, max_energised_s=3.0, pin_factory=factory)
    assert fake_gpio.setups[17] == (fake_gpio.OUT, {"initial": fake_gpio.HIGH})
    lock.unlock()
    assert fake_gpio.levels[17] == fake_gpio.LOW
    clock.advance(3.0)
    assert fake_gpio.levels[17] == fake_gpio.HIGH
    lock.close()
    assert fake_gpio.cleaned == [17]


def test_rpigpio_door_sensor_debounces_library_edges(fake_gpio: Any) -> None:
    clock = ManualClock()
    factory = load_pin_factory("rpigpio")
    factory.clock = clock
    sensor = DoorSensor(27, debounce_s=0.05, pin_factory=factory)
    assert fake_gpio.setups[27] == (fake_gpio.IN, {"pull_up_down": fake_gpio.PUD_UP})
    opened: list[bool] = []
    sensor.when_opened = lambda: opened.append(True)
    for level in (1, 0, 1, 0, 1):
        fake_gpio.set_input(27, level)
    clock.advance(0.1)
    assert opened == [True] and sensor.is_open
    sensor.close()
    assert 27 not in fake_gpio.handlers
