"""Barcode scanners on a serial line (RS-232, USB-CDC): suffix framing, a reader thread, reconnection after unplug."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import serial

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
    ScanRejected,
)
from spd_common.backoff import backoff_delays

log = logging.getLogger(__name__)

SerialFactory = Callable[..., Any]
"""Opens a port from a URL, like :func:`serial.serial_for_url`."""


class Suffix(Enum):
    """What a scanner sends after each scan."""

    CR = b"\r"
    LF = b"\n"
    CRLF = b"\r\n"
    ETX = b"\x03"  # usually with an STX (0x02) prefix, which is dropped


_TRIM_START = b"\r\n\x02"  # the other half of a CRLF when the suffix is CR or LF; STX before an ETX-framed scan
_TRIM_END = b"\r\n"


class LineFramer:
    """Cuts a byte stream into lines at ``suffix``.

    A line longer than ``max_line`` bytes is dropped up to its suffix and reported once
    as :attr:`RejectReason.OVERLONG`. Bytes left without a suffix for ``line_timeout_s``
    (a scan cut off by an unplug, line noise, a scanner that lost its suffix) are dropped
    as :attr:`RejectReason.UNTERMINATED`: a cut-off code may still parse, with a wrong serial.
    """

    def __init__(self, suffix: bytes, *, max_line: int = 4096, line_timeout_s: float | None = 0.5) -> None:
        if not suffix:
            raise ValueError("the suffix cannot be empty")
        self.suffix = suffix
        self.max_line = max_line
        self.line_timeout_s = line_timeout_s
        self._buf = bytearray()
        self._discarding = False
        self._last_byte_at = 0.0

    def feed(self, data: bytes, now: float) -> list[bytes | RejectReason]:
        """Lines completed by ``data`` (without suffix) and reasons for what was dropped, in order."""
        out = self.expire(now)
        if not data:
            return out
        self._last_byte_at = now
        self._buf += data
        while (end := self._buf.find(self.suffix)) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + len(self.suffix)]
            if self._discarding:
                self._discarding = False
                continue
            line = line.lstrip(_TRIM_START).rstrip(_TRIM_END)
            out.append(RejectReason.OVERLONG if len(line) > self.max_line else line)
        if self._discarding:
            del self._buf[: max(0, len(self._buf) - len(self.suffix) + 1)]  # keep a possibly split suffix
        elif len(self._buf) > self.max_line:
            out.append(RejectReason.OVERLONG)
            self._discarding = True
            del self._buf[: len(self._buf) - len(self.suffix) + 1]
        return out

    def expire(self, now: float) -> list[bytes | RejectReason]:
        """Drop a partial line older than ``line_timeout_s``."""
        if not self._buf or self.line_timeout_s is None or now - self._last_byte_at < self.line_timeout_s:
            return []
        return self.reset()

    def reset(self) -> list[bytes | RejectReason]:
        """Forget any partial line (the port was closed); reports it if it held anything but line breaks."""
        partial = bytes(self._buf).strip(_TRIM_START + _TRIM_END)
        self._buf.clear()
        discarding, self._discarding = self._discarding, False
        return [RejectReason.UNTERMINATED] if partial and not discarding else []


class SerialScanner(ScannerThread):
    """A line scanner on ``url`` (``/dev/ttyACM0``, ``/dev/serial/by-id/...``, a simulator's pty, ``loop://``).

    :meth:`start` runs a reader thread that opens the port, frames lines at ``suffix``,
    decodes them (:class:`LineDecoder`) and hands each :class:`ScanLine` to ``on_scan``
    (called on the reader thread; an exception in it is logged, never fatal) or, without
    one, queues it for :meth:`read` / :meth:`scans`. A bad line is counted in
    :attr:`stats`, logged with its reason and skipped. When the port fails or vanishes,
    the reader goes :attr:`ScannerState.OFFLINE` and reopens the same URL with
    exponential backoff. One scanner per port.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        suffix: Suffix | bytes = Suffix.CR,
        gs_substitutes: Sequence[str] = DEFAULT_GS_SUBSTITUTES,
        symbology_ids: bool = True,
        max_line: int = 4096,
        line_timeout_s: float | None = 0.5,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        on_scan: Callable[[ScanLine], None] | None = None,
        serial_factory: SerialFactory = serial.serial_for_url,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.suffix = suffix.value if isinstance(suffix, Suffix) else bytes(suffix)
        self.backoff_s = backoff_s
        backoff_delays(*backoff_s)  # validates
        self._decoder = LineDecoder(gs_substitutes=gs_substitutes, symbology_ids=symbology_ids, max_line=max_line)
        self._framer = LineFramer(self.suffix, max_line=max_line, line_timeout_s=line_timeout_s)
        super().__init__(ScanDelivery(f"scanner {url}", on_scan), thread_name=f"scanner-{url}")
        self._serial_factory = serial_factory
        self._port: Any = None
        self._ever_online = False

    # --- public -----------------------------------------------------------
    @property
    def stats(self) -> ScannerStats:
        return self._delivery.stats

    # --- reader thread ------------------------------------------------------
    def _run(self) -> None:
        delays = backoff_delays(*self.backoff_s)
        while not self._stop.is_set():
            if self._port is None:
                try:
                    self._open()
                except ScannerDisconnected as err:
                    log.debug("%s", err.message)
                    self._stop.wait(next(delays))
                    continue
                delays = backoff_delays(*self.backoff_s)
            try:
                chunk = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as err:
                # pyserial may fail with TypeError/AttributeError when the fd vanishes under it
                log.warning("scanner on %s disconnected: %s", self.url, err)
                self._delivery.stats.disconnects += 1
                self._close()
                continue
            self._handle(self._framer.feed(chunk, time.monotonic()))

    def _handle(self, items: list[bytes | RejectReason]) -> None:
        for item in items:
            if isinstance(item, RejectReason):
                self._delivery.reject(ScanRejected(item, _FRAMER_MESSAGES[item]))
                continue
            try:
                line = self._decoder.decode_bytes(item)
            except ScanRejected as err:
                if err.reason is not RejectReason.EMPTY:
                    self._delivery.reject(err, item)
                continue
            self._delivery.deliver(line)

    def _open(self) -> None:
        try:
            port = self._serial_factory(self.url, baudrate=self.baudrate, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as err:
            raise ScannerDisconnected(f"cannot open {self.url}: {err}") from err
        self._port = port
        if self._ever_online:
            self._delivery.stats.reconnects += 1
        self._ever_online = True
        self._delivery.set_state(ScannerState.ONLINE)

    def _close(self) -> None:
        port, self._port = self._port, None
        self._handle(self._framer.reset())
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass
            if not self._stop.is_set():
                self._delivery.set_state(ScannerState.OFFLINE)


_FRAMER_MESSAGES = {
    RejectReason.OVERLONG: "line longer than max_line dropped up to its suffix",
    RejectReason.UNTERMINATED: "bytes without a suffix dropped",
}
