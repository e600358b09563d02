"""Barcode scanners: serial/USB-CDC line scanners and keyboard-wedge scanners through evdev, delivering ScanLines."""

from device.hal.scanner.evdev_scanner import (
    EvdevKeySource,
    KeyAction,
    KeyDecoder,
    KeyEvent,
    KeyEventSource,
    WedgeScanner,
)
from device.hal.scanner.serial_scanner import LineFramer, SerialScanner, Suffix
from device.hal.scanner.symbology import (
    DEFAULT_GS_SUBSTITUTES,
    GS,
    LineDecoder,
    RejectReason,
    ScanLine,
    ScannerDisconnected,
    ScannerError,
    ScannerState,
    ScannerStats,
    ScannerUnavailable,
    ScanRejected,
    Symbology,
    split_symbology_id,
)

__all__ = [
    "DEFAULT_GS_SUBSTITUTES",
    "GS",
    "EvdevKeySource",
    "KeyAction",
    "KeyDecoder",
    "KeyEvent",
    "KeyEventSource",
    "LineDecoder",
    "LineFramer",
    "RejectReason",
    "ScanLine",
    "ScanRejected",
    "ScannerDisconnected",
    "ScannerError",
    "ScannerState",
    "ScannerStats",
    "ScannerUnavailable",
    "SerialScanner",
    "Suffix",
    "Symbology",
    "WedgeScanner",
    "split_symbology_id",
]
