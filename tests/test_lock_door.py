"""Locks, door sensors and indicators on simulated pins, wired to a simulated cabinet door."""

from __future__ import annotations

import logging

import pytest

from device.hal import (
    BeepPattern,
    Buzzer,
    DeviceClosed,
    DoorSensor,
    DoorState,
    Indicator,
    InvalidSetting,
    Lock,
    LockState,
    MonotonicClock,
    OutputState,
)
from hw_sim.pins import ManualClock, SimCabinetDoor, SimPinFactory

from conftest import wait_for

LOCK_PIN, DOOR_PIN, LED_PIN, BUZZER_PIN = 17, 27, 22, 23


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def pins(clock: ManualClock) -> SimPinFactory:
    return SimPinFactory(clock=clock)


class Events:
    def __init__(self, sensor: DoorSensor) -> None:
        self.seen: list[str] = []
        sensor.when_opened = lambda: self.seen.append("opened")
        sensor.when_closed = lambda: self.seen.append("closed")


def test_fail_secure_lock_starts_locked_with_the_relay_off(pins: SimPinFactory) -> None:
    lock = Lock(LOCK_PIN, pin_factory=pins)
    assert lock.state is LockState.LOCKED
    assert not lock.is_unlocked and not lock.is_energised
    assert pins.pin(LOCK_PIN).level is False


def test_unlock_is_released_after_max_energised_time(pins: SimPinFactory, clock: ManualClock) -> None:
    lock = Lock(LOCK_PIN, max_energised_s=10.0, pin_factory=pins)
    assert lock.unlock(60.0) == 10.0
    assert lock.is_energised
    clock.advance(9.99)
    assert lock.is_unlocked
    clock.advance(0.01)
    assert lock.state is LockState.LOCKED
    assert pins.pin(LOCK_PIN).timeline == [(0.0, False), (0.0, True), (10.0, False)]


def test_unlock_for_a_shorter_time_relocks_then(pins: SimPinFactory, clock: ManualClock) -> None:
    lock = Lock(LOCK_PIN, pin_factory=pins)
    lock.unlock(2.0)
    clock.advance(2.0)
    assert not lock.is_unlocked
    assert pins.pin(LOCK_PIN).timeline[-2:] == [(0.0, True), (2.0, False)]


def test_a_second_unlock_restarts_the_timer(pins: SimPinFactory, clock: ManualClock) -> None:
    lock = Lock(LOCK_PIN, pin_factory=pins)
    lock.unlock(3.0)
    clock.advance(2.0)
    lock.unlock(3.0)
    clock.advance(2.0)  # the first timer would have fired at t=3
    assert lock.is_unlocked
    clock.advance(1.0)
    assert not lock.is_unlocked
    assert pins.pin(LOCK_PIN).timeline == [(0.0, False), (0.0, True), (5.0, False)]


def test_explicit_lock_cancels_the_pending_release(pins: SimPinFactory, clock: ManualClock) -> None:
    lock = Lock(LOCK_PIN, pin_factory=pins)
    states: list[LockState] = []
    lock.when_changed = states.append
    lock.unlock(5.0)
    lock.lock()
    clock.advance(10.0)
    assert states == [LockState.UNLOCKED, LockState.LOCKED]
    assert clock.pending == 0


def test_active_low_relay_inverts_the_pin(pins: SimPinFactory) -> None:
    lock = Lock(LOCK_PIN, active_high=False, pin_factory=pins)
    assert pins.pin(LOCK_PIN).level is True
    lock.unlock(1.0)
    assert pins.pin(LOCK_PIN).level is False and lock.is_energised


def test_fail_safe_lock_is_energised_while_locked(pins: SimPinFactory, clock: ManualClock) -> None:
    lock = Lock(LOCK_PIN, fail_secure=False, max_energised_s=4.0, pin_factory=pins)
    assert lock.is_energised and not lock.is_unlocked
    lock.unlock()
    assert not lock.is_energised and lock.is_unlocked
    clock.advance(4.0)
    assert lock.is_energised and not lock.is_unlocked


def test_closing_a_lock_leaves_it_locked_and_unusable(pins: SimPinFactory) -> None:
    lock = Lock(LOCK_PIN, pin_factory=pins)
    lock.unlock(5.0)
    lock.close()
    assert pins.pin(LOCK_PIN).level is False
    with pytest.raises(DeviceClosed):
        lock.unlock(1.0)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_lock_refuses_non_positive_times(pins: SimPinFactory, bad: float) -> None:
    with pytest.raises(InvalidSetting):
        Lock(LOCK_PIN, max_energised_s=bad, pin_factory=pins)
    lock = Lock(LOCK_PIN, pin_factory=pins)
    with pytest.raises(InvalidSetting):
        lock.unlock(bad)


def test_failing_lock_callback_is_logged_and_the_lock_keeps_working(
    pins: SimPinFactory, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    lock = Lock(LOCK_PIN, pin_factory=pins)

    def broken(state: LockState) -> None:
        raise RuntimeError("display unplugged")

    lock.when_changed = broken
    with caplog.at_level(logging.ERROR):
        lock.unlock(1.0)
        clock.advance(1.0)
    assert not lock.is_unlocked
    assert sum("when_changed callback failed" in r.message for r in caplog.records) == 2


def test_lock_auto_release_on_the_real_clock() -> None:
    pins = SimPinFactory(clock=MonotonicClock())
    lock = Lock(LOCK_PIN, max_energised_s=0.05, pin_factory=pins)
    lock.unlock()
    assert lock.is_unlocked
    wait_for(lambda: not lock.is_unlocked, timeout=2.0, interval=0.01, message="the lock released on its own")


# --- door ------------------------------------------------------------------


def cabinet(pins: SimPinFactory, **door_kw: bool) -> tuple[Lock, DoorSensor, SimCabinetDoor]:
    door = SimCabinetDoor(pins, lock_pin=LOCK_PIN, sensor_pin=DOOR_PIN, **door_kw)
    lock = Lock(
        LOCK_PIN,
        active_high=door_kw.get("active_high", True),
        fail_secure=door_kw.get("fail_secure", True),
        pin_factory=pins,
    )
    sensor = DoorSensor(DOOR_PIN, debounce_s=0.05, pin_factory=pins)
    return lock, sensor, door


def test_door_starts_closed(pins: SimPinFactory) -> None:
    _, sensor, _ = cabinet(pins)
    assert sensor.state is DoorState.CLOSED and not sensor.is_open


def test_hand_cannot_open_a_locked_door(pins: SimPinFactory, clock: ManualClock) -> None:
    _, sensor, door = cabinet(pins)
    events = Events(sensor)
    assert door.hand.try_open() is False
    clock.advance(1.0)
    assert not door.is_open and not sensor.is_open
    assert events.seen == []
    assert door.hand.refused == 1


def test_hand_opens_an_unlocked_door_and_the_sensor_reports_it(pins: SimPinFactory, clock: ManualClock) -> None:
    lock, sensor, door = cabinet(pins)
    events = Events(sensor)
    lock.unlock(5.0)
    assert door.hand.try_open() is True
    clock.advance(0.05)
    assert sensor.is_open
    door.close()
    clock.advance(0.05)
    assert events.seen == ["opened", "closed"]


def test_door_relocked_while_open_stays_open_until_closed(pins: SimPinFactory, clock: ManualClock) -> None:
    lock, sensor, door = cabinet(pins)
    lock.unlock(2.0)
    door.hand.try_open()
    clock.advance(3.0)
    assert not lock.is_unlocked and sensor.is_open
    door.close()
    clock.advance(0.1)
    assert not sensor.is_open
    assert door.hand.try_open() is False


def test_bouncing_reed_switch_gives_one_open_event(pins: SimPinFactory, clock: ManualClock) -> None:
    lock, sensor, door = cabinet(pins)
    events = Events(sensor)
    lock.unlock(5.0)
    door.hand.try_open(bounces=4)
    clock.advance(0.2)
    assert events.seen == ["opened"]
    assert len(pins.pin(DOOR_PIN).timeline) == 1 + 9  # closed, then 8 chattering edges and the final open
    door.close(bounces=3)
    clock.advance(0.2)
    assert events.seen == ["opened", "closed"]


def test_glitch_shorter_than_debounce_is_ignored(pins: SimPinFactory, clock: ManualClock) -> None:
    _, sensor, _ = cabinet(pins)
    events = Events(sensor)
    reed = pins.pin(DOOR_PIN)
    reed.drive_high()
    clock.advance(0.01)
    reed.drive_low()
    clock.advance(0.2)
    assert events.seen == [] and not sensor.is_open


def test_forced_open_is_observable_while_locked(pins: SimPinFactory, clock: ManualClock) -> None:
    lock, sensor, door = cabinet(pins)
    forced: list[bool] = []
    sensor.when_opened = lambda: forced.append(not lock.is_unlocked)
    door.force_open()
    clock.advance(0.05)
    assert sensor.is_open and not lock.is_unlocked
    assert forced == [True]
    assert door.forced_opens == 1


def test_fail_safe_door_opens_only_while_unlocked(pins: SimPinFactory, clock: ManualClock) -> None:
    lock, sensor, door = cabinet(pins, fail_secure=False)
    assert door.hand.try_open() is False
    lock.unlock(1.0)
    assert door.hand.try_open() is True
    clock.advance(0.05)
    assert sensor.is_open


def test_failing_door_callback_does_not_stop_the_watcher(
    pins: SimPinFactory, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    lock, sensor, door = cabinet(pins)
    closed: list[str] = []

    def broken() -> None:
        raise ValueError("bad handler")

    sensor.when_opened = broken
    sensor.when_closed = lambda: closed.append("closed")
    lock.unlock(5.0)
    with caplog.at_level(logging.ERROR):
        door.hand.try_open()
        clock.advance(0.1)
        door.close()
        clock.advance(0.1)
    assert closed == ["closed"]
    assert any("when_opened callback failed" in r.message for r in caplog.records)


def test_closed_sensor_ignores_further_edges(pins: SimPinFactory, clock: ManualClock) -> None:
    _, sensor, _ = cabinet(pins)
    events = Events(sensor)
    sensor.close()
    pins.pin(DOOR_PIN).drive_high()
    clock.advance(1.0)
    assert events.seen == []


# --- indicators ----------------------------------------------------------


def test_buzzer_plays_a_beep_pattern_on_the_clock(pins: SimPinFactory, clock: ManualClock) -> None:
    buzzer = Buzzer(BUZZER_PIN, pin_factory=pins)
    buzzer.beep(BeepPattern.ERROR)
    assert buzzer.state is OutputState.PATTERN and buzzer.is_sounding
    clock.advance(1.0)
    assert (buzzer.state, buzzer.is_sounding) == (OutputState.OFF, False)
    times = [round(t, 3) for t, _ in pins.pin(BUZZER_PIN).timeline[1:]]
    levels = [lv for _, lv in pins.pin(BUZZER_PIN).timeline[1:]]
    assert times == [0.0, 0.1, 0.18, 0.28, 0.36, 0.46]
    assert levels == [True, False, True, False, True, False]


def test_led_blinks_until_switched(pins: SimPinFactory, clock: ManualClock) -> None:
    led = Indicator(LED_PIN, pin_factory=pins)
    led.blink(on_s=0.5, off_s=0.5)
    clock.advance(2.25)
    assert len(pins.pin(LED_PIN).timeline) == 1 + 5
    led.on()
    clock.advance(5.0)
    assert led.is_lit and led.state is OutputState.ON
    assert clock.pending == 0


def test_led_blinks_a_counted_number_of_times(pins: SimPinFactory, clock: ManualClock) -> None:
    led = Indicator(LED_PIN, active_high=False, pin_factory=pins)
    led.blink(on_s=0.1, off_s=0.1, times=3)
    clock.advance(1.0)
    assert [lv for _, lv in pins.pin(LED_PIN).timeline] == [False, True, False, True, False, True, False, True]
    assert not led.is_lit and led.state is OutputState.OFF
