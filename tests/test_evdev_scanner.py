"""Keyboard-wedge scanners: US key mapping, Shift, the GS conventions, and the reader over a simulated key source."""

from __future__ import annotations

import datetime as dt
import string
import time

import pytest

from device.hal.scanner import (
    EvdevKeySource,
    KeyAction,
    KeyDecoder,
    KeyEvent,
    RejectReason,
    ScannerDisconnected,
    ScannerState,
    Symbology,
    WedgeScanner,
)
from device.udi import Udi, parse_udi
from hw_sim.scanner import SimWedgeSource, WedgeGs
from hw_sim.udi_gen import make_udi

from conftest import wait_for

UDI = make_udi(gtin="06954321000017", lot="2501ab-12", serial="SER/0001", expiry=dt.date(2027, 12, 31))
DOWN, UP = KeyAction.DOWN, KeyAction.UP
KEY_LEFTSHIFT, KEY_LEFTCTRL, KEY_LEFTALT, KEY_CAPSLOCK, KEY_ENTER = 42, 29, 56, 58, 28


def press(code: int) -> list[KeyEvent]:
    return [KeyEvent(code, DOWN), KeyEvent(code, UP)]


def with_modifier(modifier: int, *codes: int) -> list[KeyEvent]:
    events = [KeyEvent(modifier, DOWN)]
    for code in codes:
        events += press(code)
    return [*events, KeyEvent(modifier, UP)]


def typed(events: list[KeyEvent]) -> list[str | RejectReason]:
    decoder = KeyDecoder()
    return [out for ev in events if (out := decoder.feed(ev)) is not None]


def test_golden_key_codes_map_to_us_characters_with_shift() -> None:
    # a=30 B=Shift+48 1=2 !=Shift+2 ]=27 }=Shift+27 /=53 space=57 keypad 7=71 keypad .=83
    events = (press(30) + with_modifier(KEY_LEFTSHIFT, 48) + press(2) + with_modifier(KEY_LEFTSHIFT, 2)
              + press(27) + with_modifier(54, 27) + press(53) + press(57) + press(71) + press(83) + press(KEY_ENTER))
    assert typed(events) == ["aB1!]}/ 7."]


def test_caps_lock_inverts_letters_only() -> None:
    events = press(KEY_CAPSLOCK) + press(30) + with_modifier(KEY_LEFTSHIFT, 30) + press(2) + press(KEY_CAPSLOCK)
    events += press(30) + press(96)  # keypad Enter terminates too
    assert typed(events) == ["Aa1a"]


def test_ctrl_bracket_and_alt_numpad_029_both_type_gs() -> None:
    events = press(30) + with_modifier(KEY_LEFTCTRL, 27) + press(48)
    events += with_modifier(KEY_LEFTALT, 82, 80, 73) + press(46) + press(KEY_ENTER)  # Alt + KP0 KP2 KP9
    assert typed(events) == ["a\x1db\x1dc"]


def test_autorepeat_and_ctrl_with_a_non_control_key_type_nothing() -> None:
    events = [KeyEvent(30, DOWN), KeyEvent(30, KeyAction.HOLD), KeyEvent(30, UP)]
    events += with_modifier(KEY_LEFTCTRL, 2) + press(KEY_ENTER)
    assert typed(events) == ["a"]


def test_overlong_typed_line_is_reported_once_at_enter() -> None:
    decoder = KeyDecoder(max_line=5)
    outs = [out for ev in press(30) * 9 + press(KEY_ENTER) + press(48) + press(KEY_ENTER)
            if (out := decoder.feed(ev)) is not None]
    assert outs == [RejectReason.OVERLONG, "b"]


@pytest.mark.parametrize("right_shift", [False, True])
def test_every_printable_ascii_character_round_trips_through_the_simulated_wedge(right_shift: bool) -> None:
    text = "".join(ch for ch in string.printable if ch >= " " and ch != "\x7f")
    source = SimWedgeSource(right_shift=right_shift)
    assert typed(source.key_events_for(text)) == [text]


@pytest.mark.parametrize("gs", list(WedgeGs))
def test_wedge_scanner_delivers_a_parseable_udi_for_each_gs_convention(gs: WedgeGs) -> None:
    source = SimWedgeSource(gs=gs)
    scanner = WedgeScanner(source, backoff_s=(0.02, 0.1))
    scanner.start()
    try:
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        assert source.grabbed
        source.type_scan(UDI)
        line = scanner.read(2.0)
    finally:
        scanner.stop()
    assert not source.grabbed
    assert line is not None
    assert (line.text, line.symbology) == (UDI, Symbology.GS1_DATAMATRIX)
    udi = parse_udi(line.text, today=dt.date(2025, 6, 1))
    assert isinstance(udi, Udi)
    assert (udi.gtin, udi.lot, udi.serial) == ("06954321000017", "2501ab-12", "SER/0001")


def test_keys_without_enter_are_dropped_and_the_next_scan_is_intact() -> None:
    source = SimWedgeSource()
    scanner = WedgeScanner(source, line_timeout_s=0.1, backoff_s=(0.02, 0.1))
    scanner.start()
    try:
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        source.type_scan("]C0ZY00123", enter=False)
        time.sleep(0.25)
        source.type_scan("]C0ZY0012345678")
        line = scanner.read(2.0)
        assert line is not None and line.text == "]C0ZY0012345678"
        assert scanner.stats.rejected == {RejectReason.UNTERMINATED: 1}
    finally:
        scanner.stop()


def test_unplugged_wedge_is_reopened_and_scans_again() -> None:
    source = SimWedgeSource()
    scanner = WedgeScanner(source, backoff_s=(0.02, 0.05))
    scanner.start()
    try:
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        source.unplug()
        wait_for(lambda: scanner.state is ScannerState.OFFLINE)
        time.sleep(0.1)
        source.replug()
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        source.type_scan(UDI)
        line = scanner.read(2.0)
    finally:
        scanner.stop()
    assert line is not None and line.text == UDI
    assert (scanner.stats.disconnects, scanner.stats.reconnects, source.open_count) == (1, 1, 2)


def test_garbage_typed_line_is_refused_and_reading_goes_on() -> None:
    source = SimWedgeSource()
    scanner = WedgeScanner(source, backoff_s=(0.02, 0.1))
    scanner.start()
    try:
        wait_for(lambda: scanner.state is ScannerState.ONLINE)
        source.send_events(with_modifier(KEY_LEFTCTRL, 30) + press(KEY_ENTER))  # Ctrl+A: SOH
        source.type_scan("no identifier")
        source.type_scan(UDI)
        line = scanner.read(2.0)
        assert line is not None and line.text == UDI
        assert scanner.stats.rejected == {RejectReason.CONTROL_CHARACTER: 1, RejectReason.MISSING_SYMBOLOGY_ID: 1}
    finally:
        scanner.stop()


def test_evdev_source_for_an_absent_device_reports_disconnected() -> None:
    source = EvdevKeySource("/nonexistent/input/event-kbd")
    with pytest.raises(ScannerDisconnected):
        source.open()
    scanner = WedgeScanner("/nonexistent/input/event-kbd", backoff_s=(0.02, 0.05))
    scanner.start()
    try:
        time.sleep(0.1)
        assert scanner.state is ScannerState.OFFLINE
    finally:
        scanner.stop()
    assert scanner.state is ScannerState.STOPPED
