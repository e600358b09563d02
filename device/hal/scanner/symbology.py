"""AIM symbology identifiers, the scan line every scanner backend delivers, the checks that turn raw lines into it.

A scanner configured to transmit AIM symbology identifiers (ISO/IEC 15424)
prefixes each scan with ``]`` + a code character + a modifier: ``]C1`` is
GS1-128, ``]d2`` GS1 DataMatrix, ``]Q3`` GS1 QR, ``]E0`` EAN-13/UPC-A,
``]e0`` GS1 DataBar. :class:`LineDecoder` takes what a serial scanner or a
keyboard wedge assembled between two suffixes, normalises the FNC1 separator
to the GS character (``\\x1d``), reads the identifier into a
:class:`Symbology` and refuses what cannot be a scan with a
:class:`ScanRejected` whose ``reason`` is a :class:`RejectReason`.
:class:`ScanDelivery` is the hand-over both backends share: callback or queue,
counters, state.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Final, Self

from device.hal.pins import HalError

log = logging.getLogger(__name__)

GS: Final = "\x1d"
DEFAULT_GS_SUBSTITUTES: Final[tuple[str, ...]] = ("<GS>", "^]", "~d029")
"""Texts some scanners send instead of the GS character for FNC1 when they cannot transmit control characters."""

_AIM_ID = re.compile(r"\][A-Za-z][0-9A-Za-z]")


class Symbology(Enum):
    """A barcode family as identified by its AIM symbology identifier; the value is the canonical identifier."""

    GS1_128 = "]C1"
    CODE128 = "]C0"
    GS1_DATAMATRIX = "]d2"
    DATAMATRIX = "]d1"
    GS1_QR = "]Q3"
    QR = "]Q1"
    EAN13 = "]E0"
    EAN8 = "]E4"
    CODE39 = "]A0"
    ITF = "]I0"
    GS1_DATABAR = "]e0"
    PDF417 = "]L2"
    AZTEC = "]z0"
    OTHER = "]?"  # a well-formed identifier of a family not listed here
    NONE = ""  # no identifier transmitted

    @property
    def is_gs1(self) -> bool:
        """True for the GS1 variants, whose data is a GS1 element string."""
        return self in _GS1_FAMILIES


_GS1_FAMILIES: Final = frozenset({Symbology.GS1_128, Symbology.GS1_DATAMATRIX, Symbology.GS1_QR, Symbology.GS1_DATABAR})

# Exact identifiers whose family depends on the modifier (ISO/IEC 15424 tables).
_BY_ID: Final[dict[str, Symbology]] = {
    "]C1": Symbology.GS1_128,
    "]d2": Symbology.GS1_DATAMATRIX,
    "]d5": Symbology.GS1_DATAMATRIX,  # GS1 with ECI
    "]Q3": Symbology.GS1_QR,
    "]Q4": Symbology.GS1_QR,  # GS1 with ECI
    "]E4": Symbology.EAN8,
}
# Otherwise the code character alone decides.
_BY_CODE: Final[dict[str, Symbology]] = {
    "C": Symbology.CODE128,
    "d": Symbology.DATAMATRIX,
    "Q": Symbology.QR,
    "E": Symbology.EAN13,  # ]E0 EAN-13/UPC-A, ]E1-]E3 with add-on
    "A": Symbology.CODE39,
    "I": Symbology.ITF,
    "e": Symbology.GS1_DATABAR,
    "L": Symbology.PDF417,
    "z": Symbology.AZTEC,
}


def split_symbology_id(text: str) -> tuple[Symbology, str, str]:
    """``(symbology, identifier, data)``: ``"]d2010..."`` gives ``(GS1_DATAMATRIX, "]d2", "010...")``.

    Text without a well-formed identifier gives ``(Symbology.NONE, "", text)``.
    """
    if not _AIM_ID.match(text):
        return Symbology.NONE, "", text
    aim_id = text[:3]
    symbology = _BY_ID.get(aim_id) or _BY_CODE.get(aim_id[1], Symbology.OTHER)
    return symbology, aim_id, text[3:]


@dataclass(frozen=True, slots=True)
class ScanLine:
    """One scan as the scanner transmitted it: ``text`` keeps the symbology identifier, separators are GS.

    ``text`` is what :func:`device.udi.parse_udi` and :func:`device.udi.parse_wristband`
    take; ``raw`` is the line as received, framing removed (for a keyboard wedge, the characters typed);
    ``at`` is the wall-clock time the line was completed (UTC).
    """

    text: str
    symbology: Symbology
    raw: bytes
    at: dt.datetime = field(compare=False)

    @property
    def aim_id(self) -> str:
        """The identifier as received (``"]d2"``), or ``""``."""
        return split_symbology_id(self.text)[1]

    @property
    def data(self) -> str:
        """The text without its symbology identifier."""
        return split_symbology_id(self.text)[2]


class ScannerError(HalError):
    """Root of the barcode scanner errors; ``reason`` is a stable code."""

    reason = "scanner_error"


class ScannerDisconnected(ScannerError, ConnectionError):
    """The scanner is gone (unplugged) or cannot be opened."""

    reason = "scanner_disconnected"


class ScannerUnavailable(ScannerError, ImportError):
    """A scanner backend's library is missing (``evdev``)."""

    reason = "scanner_unavailable"


class RejectReason(StrEnum):
    """Why a received line was not delivered as a scan; the values are stable and safe to count."""

    EMPTY = "empty"
    NOT_UTF8 = "not_utf8"
    CONTROL_CHARACTER = "control_character"
    OVERLONG = "overlong"
    UNTERMINATED = "unterminated"
    MISSING_SYMBOLOGY_ID = "missing_symbology_id"
    EMBEDDED_SYMBOLOGY_ID = "embedded_symbology_id"


class ScanRejected(ScannerError, ValueError):
    """A received line that is not a usable scan; ``reason`` is a :class:`RejectReason`."""

    reason: RejectReason

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ScannerStats:
    """Counters of one scanner since it was created."""

    scans: int = 0
    rejected: dict[RejectReason, int] = field(default_factory=dict)
    disconnects: int = 0
    reconnects: int = 0

    def reject(self, reason: RejectReason) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class LineDecoder:
    """Turns one line (without its suffix) into a :class:`ScanLine`, or refuses it with :class:`ScanRejected`.

    ``gs_substitutes`` are replaced by GS. An identifier at the start of a line is always
    read; ``symbology_ids=True`` means the scanner is configured to send one with every
    scan, so a line without one, or with a second one of the same family inside (two
    scans run together after a lost suffix), is refused.
    Control characters other than GS are refused: a scanner never sends them inside
    a scan, line noise does.
    """

    def __init__(self, *, gs_substitutes: Sequence[str] = DEFAULT_GS_SUBSTITUTES, symbology_ids: bool = True,
                 max_line: int = 4096) -> None:
        if any(not s for s in gs_substitutes):
            raise ValueError("a GS substitute cannot be empty")
        if max_line < 1:
            raise ValueError(f"max_line must be positive, got {max_line}")
        self.gs_substitutes = tuple(gs_substitutes)
        self.symbology_ids = symbology_ids
        self.max_line = max_line

    def decode_bytes(self, raw: bytes, *, at: dt.datetime | None = None) -> ScanLine:
        """Decode a line of bytes received on a serial line (UTF-8, of which ASCII is the usual subset)."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            message = f"byte 0x{raw[err.start]:02X} at {err.start} is not UTF-8"
            raise ScanRejected(RejectReason.NOT_UTF8, message) from err
        return self.decode_text(text, raw=raw, at=at)

    def decode_text(self, text: str, *, raw: bytes | None = None, at: dt.datetime | None = None) -> ScanLine:
        """Decode a line of characters (what a keyboard wedge typed)."""
        if len(text) > self.max_line:
            raise ScanRejected(RejectReason.OVERLONG, f"line of {len(text)} characters exceeds {self.max_line}")
        for substitute in self.gs_substitutes:
            text = text.replace(substitute, GS)
        if not text.strip(" " + GS):
            raise ScanRejected(RejectReason.EMPTY, "empty line")
        for pos, ch in enumerate(text):
            if (ch < " " and ch != GS) or "\x7f" <= ch <= "\x9f":
                raise ScanRejected(RejectReason.CONTROL_CHARACTER, f"control character 0x{ord(ch):02X} at {pos}")
        symbology, aim_id, data = split_symbology_id(text)
        if self.symbology_ids:
            if not aim_id:
                raise ScanRejected(RejectReason.MISSING_SYMBOLOGY_ID, "line does not start with a symbology identifier")
            inner = _AIM_ID.search(data)
            if inner is not None and inner.group()[1] == aim_id[1]:
                raise ScanRejected(RejectReason.EMBEDDED_SYMBOLOGY_ID,
                                   f"a second {aim_id[:2]} identifier at {inner.start() + 3}: two scans run together")
        return ScanLine(text, symbology, raw if raw is not None else text.encode("utf-8"),
                        at or dt.datetime.now(dt.UTC))


class ScannerState(Enum):
    STOPPED = "stopped"
    OFFLINE = "offline"  # started, the device is absent: reopening with backoff
    ONLINE = "online"


class ScanDelivery:
    """Hands a scanner's lines on: to ``on_scan`` on the reader thread, or, without one, to a queue for
    :meth:`read`; counts scans and rejects and reports state changes. Shared by the scanner backends."""

    def __init__(self, name: str, on_scan: Callable[[ScanLine], None] | None) -> None:
        self.name = name
        self.on_scan = on_scan
        self.when_state_changed: Callable[[ScannerState], None] | None = None
        self.when_rejected: Callable[[ScanRejected], None] | None = None  # a line skipped, so the user can be told
        self.stats = ScannerStats()
        self.state = ScannerState.STOPPED
        self._queue: queue.SimpleQueue[ScanLine] = queue.SimpleQueue()

    def deliver(self, line: ScanLine) -> None:
        self.stats.scans += 1
        log.debug("%s scan %s %r", self.name, line.symbology.name, line.text)
        if self.on_scan is None:
            self._queue.put(line)
            return
        try:
            self.on_scan(line)
        except Exception:
            log.exception("%s: on_scan callback failed", self.name)

    def reject(self, err: ScanRejected, raw: bytes | str = b"") -> None:
        self.stats.reject(err.reason)
        log.warning("%s: line skipped (%s): %s", self.name, err.reason, err.message)
        log.debug("%s: skipped line was %r", self.name, raw)
        callback = self.when_rejected
        if callback is not None:
            try:
                callback(err)
            except Exception:
                log.exception("%s: when_rejected callback failed", self.name)

    def set_state(self, state: ScannerState) -> None:
        if state is self.state:
            return
        self.state = state
        log.info("%s %s", self.name, state.value)
        callback = self.when_state_changed
        if callback is not None:
            try:
                callback(state)
            except Exception:
                log.exception("%s: when_state_changed callback failed", self.name)

    def read(self, timeout_s: float | None = None) -> ScanLine | None:
        """The next scan, waiting up to ``timeout_s`` (forever for None); None on timeout."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None


class ScannerThread:
    """What every scanner backend shares: one reader thread handing :class:`ScanLine` s to a :class:`ScanDelivery`.

    A backend implements ``_run`` (the reader loop, until ``_stop`` is set) and
    ``_close`` (release the device); ``_on_start`` may reset per-run state.
    """

    def __init__(self, delivery: ScanDelivery, *, thread_name: str) -> None:
        self._delivery = delivery
        self._thread_name = thread_name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> ScannerState:
        return self._delivery.state

    @property
    def when_state_changed(self) -> Callable[[ScannerState], None] | None:
        return self._delivery.when_state_changed

    @when_state_changed.setter
    def when_state_changed(self, callback: Callable[[ScannerState], None] | None) -> None:
        self._delivery.when_state_changed = callback

    @property
    def when_rejected(self) -> Callable[[ScanRejected], None] | None:
        return self._delivery.when_rejected

    @when_rejected.setter
    def when_rejected(self, callback: Callable[[ScanRejected], None] | None) -> None:
        self._delivery.when_rejected = callback

    def start(self) -> None:
        """Start the reader thread (it opens the device, retrying while it is absent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._on_start()
        self._delivery.set_state(ScannerState.OFFLINE)
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the reader thread and close the device."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout_s)
        self._close()
        self._delivery.set_state(ScannerState.STOPPED)

    def read(self, timeout_s: float | None = None) -> ScanLine | None:
        """The next scan (when no ``on_scan`` was given), waiting up to ``timeout_s``; None on timeout."""
        return self._delivery.read(timeout_s)

    def scans(self, *, idle_timeout_s: float | None = None) -> Iterator[ScanLine]:
        """Scans as they come; ends after ``idle_timeout_s`` without one (never, for None)."""
        while (line := self._delivery.read(idle_timeout_s)) is not None:
            yield line

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_start(self) -> None:
        """Reset per-run state before the thread starts (nothing by default)."""

    def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError
