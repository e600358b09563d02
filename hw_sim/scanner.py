"""Simulated barcode scanners: a serial line scanner on a pty and a keyboard-wedge key event source, with faults."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from device.hal.scanner import KeyAction, KeyEvent, ScannerDisconnected, split_symbology_id
from hw_sim.pty_serial import PtyPort

GS = "\x1d"


class GsStyle(Enum):
    """How a scanner transmits the GS1 separator (FNC1)."""

    RAW = "\x1d"
    CARET = "^]"
    ANGLE = "<GS>"
    TILDE = "~d029"


@dataclass
class SerialNoise:
    """Fault probabilities applied to every scan, drawn from the scanner's seeded generator."""

    garbage_rate: float = 0.0  # random bytes (then a pause) before a scan
    split_rate: float = 0.0  # the scan written in several chunks with short pauses
    drop_suffix_rate: float = 0.0  # the suffix lost


@dataclass
class SimScannerStats:
    scans: int = 0
    garbage_bursts: int = 0
    split_scans: int = 0
    dropped_suffixes: int = 0


class SimSerialScanner:
    """A USB-CDC / RS-232 line scanner behind a pty at :attr:`url`: each :meth:`scan` transmits one code.

    ``code`` is given as :func:`hw_sim.udi_gen.make_udi` writes it (AIM identifier first,
    GS separators); the scanner sends it with ``gs_style`` separators, with or without
    the identifier (``symbology_ids``), followed by ``suffix``.
    """

    def __init__(self, *, suffix: bytes = b"\r", gs_style: GsStyle = GsStyle.RAW, symbology_ids: bool = True,
                 noise: SerialNoise | None = None, seed: int = 0, name: str = "ttyACM0") -> None:
        self.suffix = suffix
        self.gs_style = gs_style
        self.symbology_ids = symbology_ids
        self.noise = noise or SerialNoise()
        self.stats = SimScannerStats()
        self._rng = random.Random(seed)
        self._port = PtyPort(name=name)

    @property
    def url(self) -> str:
        return self._port.url

    def encode(self, code: str) -> bytes:
        """The bytes this scanner sends for ``code``, suffix included."""
        if not self.symbology_ids:
            code = split_symbology_id(code)[2]
        body = code.replace(GS, self.gs_style.value).encode("utf-8")
        prefix = b"\x02" if self.suffix == b"\x03" else b""
        return prefix + body + self.suffix

    def scan(self, code: str, *, drop_suffix: bool | None = None, chunks: int | None = None,
             pause_s: float = 0.005) -> None:
        """Transmit one scan; ``drop_suffix`` / ``chunks`` force a fault, otherwise :attr:`noise` decides."""
        noise = self.noise
        if self._rng.random() < noise.garbage_rate:
            self.send_garbage()
            time.sleep(0.05)
        data = self.encode(code)
        if drop_suffix is None:
            drop_suffix = self._rng.random() < noise.drop_suffix_rate
        if drop_suffix:
            data = data[: -len(self.suffix)]
            self.stats.dropped_suffixes += 1
        if chunks is None:
            chunks = self._rng.randint(2, 5) if self._rng.random() < noise.split_rate else 1
        if chunks > 1:
            self.stats.split_scans += 1
        cuts = sorted(self._rng.sample(range(1, len(data)), min(chunks, len(data)) - 1))
        for i, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(data)], strict=True)):
            if i:
                time.sleep(pause_s)
            self._port.write(data[start:end])
        self.stats.scans += 1

    def send_garbage(self, data: bytes | None = None) -> None:
        """Line noise: ``data`` or 3-12 random bytes."""
        if data is None:
            data = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(3, 12)))
        self._port.write(data)
        self.stats.garbage_bursts += 1

    def write_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self._port.write(data)

    def unplug(self) -> None:
        self._port.unplug()

    def replug(self) -> None:
        self._port.replug()

    @property
    def is_plugged(self) -> bool:
        return self._port.is_plugged

    def close(self) -> None:
        self._port.close()

    def __enter__(self) -> SimSerialScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WedgeGs(Enum):
    """How a wedge scanner types the GS separator."""

    CTRL_BRACKET = "ctrl+]"
    ALT_029 = "alt+029"
    CARET = "^]"  # typed as the two characters


def _us_layout() -> dict[str, tuple[str, bool]]:
    """Character -> (evdev key name, shift) on a US keyboard, built from the key names, not from the driver's table."""
    keys: dict[str, tuple[str, bool]] = {}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        keys[ch] = (f"KEY_{ch.upper()}", False)
        keys[ch.upper()] = (f"KEY_{ch.upper()}", True)
    for digit, shifted in zip("1234567890", "!@#$%^&*()", strict=True):
        keys[digit] = (f"KEY_{digit}", False)
        keys[shifted] = (f"KEY_{digit}", True)
    for name, plain, shifted in [("MINUS", "-", "_"), ("EQUAL", "=", "+"), ("LEFTBRACE", "[", "{"),
                                 ("RIGHTBRACE", "]", "}"), ("SEMICOLON", ";", ":"), ("APOSTROPHE", "'", '"'),
                                 ("GRAVE", "`", "~"), ("BACKSLASH", "\\", "|"), ("COMMA", ",", "<"),
                                 ("DOT", ".", ">"), ("SLASH", "/", "?"), ("SPACE", " ", " ")]:
        keys[plain] = (f"KEY_{name}", False)
        keys[shifted] = (f"KEY_{name}", shifted != plain)
    return keys


class SimWedgeSource:
    """A keyboard-wedge scanner's key events, served through the same interface as the evdev source.

    :meth:`type_scan` queues the key presses a wedge scanner makes for one code: Shift
    around capitals and symbols, the GS separator as ``gs`` says, Enter at the end.
    :meth:`unplug` makes the next read fail and opening impossible until :meth:`replug`.
    """

    def __init__(self, *, name: str = "sim-wedge", gs: WedgeGs = WedgeGs.CTRL_BRACKET, symbology_ids: bool = True,
                 right_shift: bool = False) -> None:
        import evdev  # the key codes come from the library's table

        self._codes = evdev.ecodes.ecodes
        self._layout = _us_layout()
        self.name = name
        self.gs = gs
        self.symbology_ids = symbology_ids
        self.shift_key = "KEY_RIGHTSHIFT" if right_shift else "KEY_LEFTSHIFT"
        self.is_open = False
        self.grabbed = False
        self.open_count = 0
        self._plugged = True
        self._events: deque[KeyEvent] = deque()
        self._cond = threading.Condition()

    # --- KeyEventSource -------------------------------------------------------
    def open(self) -> None:
        with self._cond:
            if not self._plugged:
                raise ScannerDisconnected(f"{self.name} is not plugged in")
            self.is_open = self.grabbed = True
            self.open_count += 1

    def read_keys(self, timeout_s: float) -> list[KeyEvent]:
        with self._cond:
            if not self._plugged or not self.is_open:
                raise ScannerDisconnected(f"{self.name} went away")
            if not self._events:
                self._cond.wait(timeout_s)
            if not self._plugged:
                raise ScannerDisconnected(f"{self.name} went away")
            events = list(self._events)
            self._events.clear()
            return events

    def close(self) -> None:
        with self._cond:
            self.is_open = self.grabbed = False

    # --- simulation -------------------------------------------------------------
    def key_events_for(self, code: str, *, enter: bool = True) -> list[KeyEvent]:
        """The key events for typing ``code`` (GS separators as ``\\x1d``)."""
        if not self.symbology_ids:
            code = split_symbology_id(code)[2]
        events: list[KeyEvent] = []
        for ch in code:
            if ch == GS:
                events += self._gs_events()
                continue
            if ch not in self._layout:
                raise ValueError(f"character {ch!r} cannot be typed on a US layout")
            key, shift = self._layout[ch]
            events += self._press(key, shift=shift)
        if enter:
            events += self._press("KEY_ENTER")
        return events

    def type_scan(self, code: str, *, enter: bool = True) -> None:
        self.send_events(self.key_events_for(code, enter=enter))

    def send_events(self, events: Iterable[KeyEvent]) -> None:
        with self._cond:
            self._events.extend(events)
            self._cond.notify_all()

    def unplug(self) -> None:
        with self._cond:
            self._plugged = False
            self.is_open = self.grabbed = False
            self._events.clear()
            self._cond.notify_all()

    def replug(self) -> None:
        with self._cond:
            self._plugged = True

    def _gs_events(self) -> list[KeyEvent]:
        if self.gs is WedgeGs.CTRL_BRACKET:
            return self._press("KEY_RIGHTBRACE", modifier="KEY_LEFTCTRL")
        if self.gs is WedgeGs.ALT_029:
            alt = self._codes["KEY_LEFTALT"]
            events = [KeyEvent(alt, KeyAction.DOWN)]
            for digit in "029":
                events += self._press(f"KEY_KP{digit}")
            return [*events, KeyEvent(alt, KeyAction.UP)]
        return self._press("KEY_6", shift=True) + self._press("KEY_RIGHTBRACE")

    def _press(self, key: str, *, shift: bool = False, modifier: str | None = None) -> list[KeyEvent]:
        code = self._codes[key]
        held = [self._codes[m] for m in ((self.shift_key,) if shift else ()) + ((modifier,) if modifier else ())]
        return ([KeyEvent(m, KeyAction.DOWN) for m in held]
                + [KeyEvent(code, KeyAction.DOWN), KeyEvent(code, KeyAction.UP)]
                + [KeyEvent(m, KeyAction.UP) for m in reversed(held)])
