"""The cabinet's hardware layer: GPIO locks, door sensors, indicators and the UHF RFID reader."""

from device.hal.door import DoorSensor, DoorState
from device.hal.indicator import BeepPattern, Buzzer, Indicator, OutputState
from device.hal.lock import Lock, LockState
from device.hal.pins import (
    ENV_PIN_FACTORY,
    Clock,
    DeviceClosed,
    Direction,
    HalError,
    InvalidSetting,
    MonotonicClock,
    Pin,
    PinDirectionError,
    PinFactory,
    PinFactoryUnavailable,
    PinInUse,
    Pull,
    UnknownPinFactory,
    default_pin_factory,
    load_pin_factory,
    register_pin_factory,
    set_default_pin_factory,
)

__all__ = [
    "ENV_PIN_FACTORY",
    "BeepPattern",
    "Buzzer",
    "Clock",
    "DeviceClosed",
    "Direction",
    "DoorSensor",
    "DoorState",
    "HalError",
    "Indicator",
    "InvalidSetting",
    "Lock",
    "LockState",
    "MonotonicClock",
    "OutputState",
    "Pin",
    "PinDirectionError",
    "PinFactory",
    "PinFactoryUnavailable",
    "PinInUse",
    "Pull",
    "UnknownPinFactory",
    "default_pin_factory",
    "load_pin_factory",
    "register_pin_factory",
    "set_default_pin_factory",
]
