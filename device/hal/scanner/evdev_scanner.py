"""Keyboard-wedge (USB HID) scanners read through Linux evdev: key events to characters, grabbed from the console.

A wedge scanner types each scan as key presses on a US layout and presses Enter.
The GS separator arrives as Ctrl+] (ASCII 0x1D is Ctrl + the ``]`` key) or as
Alt + ``0``, ``2``, ``9`` on the numeric keypad, the two common wedge conventions;
both are decoded, as are the textual substitutes of :class:`LineDecoder`.

:class:`WedgeScanner` reads from a :class:`KeyEventSource`: :class:`EvdevKeySource`
opens ``/dev/input/by-id/...-event-kbd`` with the ``evdev`` library (imported only
there) and grabs it, so scans do not also type into a console or a login prompt;
the simulator's source implements the same interface.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import ModuleType
from typing import Any, Final, Protocol

from device.hal.scanner.symbology import (
    DEFAULT_GS_SUBSTITUTES,
    LineDecoder,
    RejectReason,
    ScanDelivery,
    ScanLine,
    ScannerDisconnected,
    ScannerState,
    ScannerStats,
    ScannerThread,
    ScannerUnavailable,
    ScanRejected,
)
from spd_common.backoff import backoff_delays

log = logging.getLogger(__name__)


class KeyAction(IntEnum):
    """An ``EV_KEY`` event's value."""

    UP = 0
    DOWN = 1
    HOLD = 2  # autorepeat


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One key event: the Linux key code (``linux/input-event-codes.h``) and what happened to the key."""

    code: int
    action: KeyAction


class KeyEventSource(Protocol):
    """Where a wedge scanner's key events come from."""

    name: str

    def open(self) -> None:
        """Open (and grab) the device; :class:`ScannerDisconnected` when it is absent."""

    def read_keys(self, timeout_s: float) -> list[KeyEvent]:
        """Key events that arrived, waiting up to ``timeout_s``; :class:`ScannerDisconnected` when the device went."""
        ...

    def close(self) -> None: ...


# Linux key codes (a kernel ABI) -> (character, character with Shift) on a US layout.
_US_KEYS: Final[dict[int, tuple[str, str]]] = {
    **{code: (d, s) for code, d, s in zip(range(2, 12), "1234567890", "!@#$%^&*()", strict=True)},
    12: ("-", "_"), 13: ("=", "+"),
    **{code: (c, c.upper()) for code, c in zip(range(16, 26), "qwertyuiop", strict=True)},
    26: ("[", "{"), 27: ("]", "}"),
    **{code: (c, c.upper()) for code, c in zip(range(30, 39), "asdfghjkl", strict=True)},
    39: (";", ":"), 40: ("'", '"'), 41: ("`", "~"), 43: ("\\", "|"),
    **{code: (c, c.upper()) for code, c in zip(range(44, 51), "zxcvbnm", strict=True)},
    51: (",", "<"), 52: (".", ">"), 53: ("/", "?"), 57: (" ", " "), 15: ("\t", "\t"),
}
# Numeric keypad (Num Lock on, as scanners assume): not affected by Shift.
_KEYPAD: Final[dict[int, str]] = {
    82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9",
    74: "-", 78: "+", 55: "*", 98: "/", 83: ".",
}
_KEYPAD_DIGITS: Final = frozenset(code for code, ch in _KEYPAD.items() if ch.isdigit())
KEY_ENTER: Final = 28
KEY_KPENTER: Final = 96
_SHIFT: Final = frozenset({42, 54})
_CTRL: Final = frozenset({29, 97})
_ALT: Final = frozenset({56, 100})
_CAPSLOCK: Final = 58


class KeyDecoder:
    """Turns key events into lines on a US layout: Shift, Caps Lock, Ctrl+key control characters, Alt+keypad codes.

    :meth:`feed` returns the completed line when a terminator key (Enter) is pressed.
    A line longer than ``max_line`` is dropped up to its terminator (:meth:`feed` then
    returns :attr:`RejectReason.OVERLONG` once).
    """

    def __init__(self, *, terminators: Sequence[int] = (KEY_ENTER, KEY_KPENTER), max_line: int = 4096) -> None:
        self.terminators = frozenset(terminators)
        self.max_line = max_line
        self._held: set[int] = set()
        self._caps = False
        self._alt_code = ""
        self._chars: list[str] = []
        self._overlong = False

    @property
    def pending(self) -> bool:
        """True while a line has started and not ended."""
        return bool(self._chars) or self._overlong

    def reset(self) -> bool:
        """Forget modifiers and any partial line; True if a partial line was dropped."""
        dropped = bool(self._chars)
        self._held.clear()
        self._alt_code = ""
        self._chars.clear()
        self._overlong = False
        return dropped

    def feed(self, event: KeyEvent) -> str | RejectReason | None:
        code = event.code
        if event.action is KeyAction.UP:
            self._held.discard(code)
            if code in _ALT and not self._held & _ALT and self._alt_code:
                self._append(_alt_code_char(self._alt_code))
                self._alt_code = ""
            return None
        if event.action is KeyAction.HOLD:
            return None
        self._held.add(code)
        if code in self.terminators:
            line, overlong = "".join(self._chars), self._overlong
            self._chars.clear()
            self._overlong = False
            return RejectReason.OVERLONG if overlong else line
        if code == _CAPSLOCK:
            self._caps = not self._caps
        elif self._held & _ALT:
            if code in _KEYPAD_DIGITS:
                self._alt_code += _KEYPAD[code]
        elif code in _KEYPAD:
            self._append(_KEYPAD[code])
        elif code in _US_KEYS:
            plain, shifted = _US_KEYS[code]
            shift = bool(self._held & _SHIFT)
            if plain.isalpha():
                shift ^= self._caps
            ch = shifted if shift else plain
            if self._held & _CTRL:
                upper = ch.upper()
                if not "@" <= upper <= "_":
                    return None  # Ctrl with a key that has no control character: not typing
                ch = chr(ord(upper) - 0x40)
            self._append(ch)
        return None

    def _append(self, ch: str) -> None:
        if self._overlong:
            return
        if len(self._chars) >= self.max_line:
            self._overlong = True
            self._chars.clear()
            return
        self._chars.append(ch)


def _alt_code_char(digits: str) -> str:
    """Alt+keypad: ``0nnn`` is a Windows-1252 code, ``nnn`` a code page 437 one; ASCII is the same in both."""
    value = int(digits) % 256
    if value < 128:
        return chr(value)
    return bytes([value]).decode("cp1252" if digits.startswith("0") else "cp437", errors="replace")


def _import_evdev() -> ModuleType:
    try:
        return importlib.import_module("evdev")
    except ImportError as err:
        raise ScannerUnavailable(f"the evdev library is not installed: {err}") from err


class EvdevKeySource:
    """Key events of one Linux input device, grabbed exclusively (``EVIOCGRAB``) while open."""

    def __init__(self, path: str, *, grab: bool = True) -> None:
        self.path = path
        self.name = path
        self.grab = grab
        self._device: Any = None
        self._ev_key = 1  # EV_KEY; read from the library on open

    def open(self) -> None:
        evdev = _import_evdev()
        try:
            device = evdev.InputDevice(self.path)
        except OSError as err:
            raise ScannerDisconnected(f"cannot open {self.path}: {err}") from err
        if self.grab:
            try:
                device.grab()
            except OSError as err:
                device.close()
                raise ScannerDisconnected(f"cannot grab {self.path} (another program holds it?): {err}") from err
        self._device = device
        self._ev_key = evdev.ecodes.EV_KEY

    def read_keys(self, timeout_s: float) -> list[KeyEvent]:
        device = self._device
        if device is None:
            raise ScannerDisconnected(f"{self.path} is not open")
        try:
            ready, _, _ = select.select([device.fd], [], [], timeout_s)
            if not ready:
                return []
            return [KeyEvent(ev.code, KeyAction(ev.value)) for ev in device.read()
                    if ev.type == self._ev_key and ev.value in (0, 1, 2)]
        except BlockingIOError:
            return []
        except (OSError, ValueError) as err:
            raise ScannerDisconnected(f"read from {self.path} failed: {err}") from err

    def close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            with contextlib.suppress(OSError):
                if self.grab:
                    device.ungrab()
            with contextlib.suppress(OSError):
                device.close()


class WedgeScanner(ScannerThread):
    """A keyboard-wedge scanner: ``source`` is an input device path (opened with evdev) or a :class:`KeyEventSource`.

    Same life cycle and delivery as :class:`~device.hal.scanner.serial_scanner.SerialScanner`:
    :meth:`start` runs a reader thread, each Enter-terminated line is decoded
    (:class:`LineDecoder`) and handed to ``on_scan`` or queued for :meth:`read`; bad lines
    are counted, logged and skipped; a vanished device is reopened with backoff. Keys
    typed without Enter for ``line_timeout_s`` are dropped as unterminated.
    """

    def __init__(
        self,
        source: str | KeyEventSource,
        *,
        grab: bool = True,
        gs_substitutes: Sequence[str] = DEFAULT_GS_SUBSTITUTES,
        symbology_ids: bool = True,
        max_line: int = 4096,
        line_timeout_s: float | None = 0.5,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        on_scan: Callable[[ScanLine], None] | None = None,
    ) -> None:
        self.source: KeyEventSource = EvdevKeySource(source, grab=grab) if isinstance(source, str) else source
        self.line_timeout_s = line_timeout_s
        self.backoff_s = backoff_s
        backoff_delays(*backoff_s)  # validates
        self._keys = KeyDecoder(max_line=max_line)
        self._decoder = LineDecoder(gs_substitutes=gs_substitutes, symbology_ids=symbology_ids, max_line=max_line)
        super().__init__(ScanDelivery(f"wedge scanner {self.source.name}", on_scan),
                         thread_name=f"wedge-{self.source.name}")
        self._open = False
        self._ever_online = False
        self._last_key_at = 0.0

    @property
    def stats(self) -> ScannerStats:
        return self._delivery.stats

    def _run(self) -> None:
        delays = backoff_delays(*self.backoff_s)
        while not self._stop.is_set():
            if not self._open:
                try:
                    self.source.open()
                except ScannerDisconnected as err:
                    log.debug("%s", err.message)
                    self._stop.wait(next(delays))
                    continue
                self._open = True
                delays = backoff_delays(*self.backoff_s)
                if self._ever_online:
                    self._delivery.stats.reconnects += 1
                self._ever_online = True
                self._delivery.set_state(ScannerState.ONLINE)
            try:
                events = self.source.read_keys(0.05)
            except ScannerDisconnected as err:
                log.warning("%s disconnected: %s", self._delivery.name, err.message)
                self._delivery.stats.disconnects += 1
                self._close()
                continue
            self._handle(events, time.monotonic())

    def _handle(self, events: list[KeyEvent], now: float) -> None:
        timeout = self.line_timeout_s
        if self._keys.pending and timeout is not None and now - self._last_key_at >= timeout:
            self._drop_partial()
        for event in events:
            self._last_key_at = now
            result = self._keys.feed(event)
            if result is None:
                continue
            if isinstance(result, RejectReason):
                self._delivery.reject(ScanRejected(result, "typed line longer than max_line dropped"))
                continue
            try:
                line = self._decoder.decode_text(result, at=dt.datetime.now(dt.UTC))
            except ScanRejected as err:
                if err.reason is not RejectReason.EMPTY:
                    self._delivery.reject(err, result)
                continue
            self._delivery.deliver(line)

    def _drop_partial(self) -> None:
        if self._keys.reset():
            self._delivery.reject(ScanRejected(RejectReason.UNTERMINATED, "keys typed without Enter dropped"))

    def _close(self) -> None:
        was_open, self._open = self._open, False
        self._drop_partial()
        if was_open:
            self.source.close()
            if not self._stop.is_set():
                self._delivery.set_state(ScannerState.OFFLINE)
