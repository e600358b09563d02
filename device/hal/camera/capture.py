"""The camera scanner: an OpenCV capture loop that decodes frames, limits the frame rate and deduplicates sightings.

OpenCV comes from ``opencv-python-headless``: the same ``cv2`` bindings without the
GUI toolkits (no X11/Qt libraries on a cabinet controller or in CI); the loop never
opens a window.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from device.hal.camera.decoders import CameraError, Decoder, Frame, load_decoder
from device.hal.scanner.symbology import (
    ScanDelivery,
    ScanLine,
    ScannerState,
    ScannerThread,
    Symbology,
)
from spd_common.backoff import backoff_delays

log = logging.getLogger(__name__)


class CameraDisconnected(CameraError, ConnectionError):
    """The camera cannot be opened or stopped delivering frames."""

    reason = "camera_disconnected"


class FrameSource(Protocol):
    """What :class:`cv2.VideoCapture` offers and the loop uses."""

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


@dataclass
class CameraStats:
    frames: int = 0
    codes_seen: int = 0  # every decode, duplicates included
    scans: int = 0  # delivered after deduplication
    read_failures: int = 0
    reopens: int = 0
    decode_s: float = 0.0  # total time spent decoding

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.decode_s / self.frames if self.frames else 0.0


class Deduplicator:
    """Passes a code once per presentation: a code seen again within ``window_s`` of its last sighting is a
    repeat (the same label held in front of the lens over many frames) and is suppressed."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last_seen: dict[str, float] = {}

    def is_new(self, text: str, now: float) -> bool:
        last = self._last_seen.get(text)
        self._last_seen[text] = now
        if len(self._last_seen) > 256:
            self._last_seen = {t: s for t, s in self._last_seen.items() if now - s <= self.window_s}
        return last is None or now - last > self.window_s


class CameraScanner(ScannerThread):
    """Reads codes from ``source``: a camera index or a path/URL for :class:`cv2.VideoCapture` (opened here, and
    reopened with backoff when it fails), or an object with ``read() -> (ok, frame)`` and ``release()``.

    ``decoder`` is a :class:`Decoder` or a registered backend name built for ``symbologies``.
    At most ``fps_limit`` frames a second are decoded. Each new code becomes a
    :class:`ScanLine` (``raw`` is its UTF-8 text) handed to ``on_scan`` on the capture
    thread (under ``logging.exception``) or queued for :meth:`read`. ``stop_at_end``
    ends the loop when the source has no more frames (a recorded video) instead of
    reopening it.
    """

    def __init__(
        self,
        source: int | str | FrameSource,
        *,
        decoder: Decoder | str = "zxingcpp",
        symbologies: Iterable[Symbology] | None = None,
        fps_limit: float | None = 10.0,
        dedupe_window_s: float = 2.0,
        on_scan: Callable[[ScanLine], None] | None = None,
        stop_at_end: bool = False,
        backoff_s: tuple[float, float] = (0.5, 5.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fps_limit is not None and fps_limit <= 0:
            raise ValueError(f"fps_limit must be positive, got {fps_limit}")
        self.source = source
        self.decoder = load_decoder(decoder, symbologies) if isinstance(decoder, str) else decoder
        self.fps_limit = fps_limit
        self.stop_at_end = stop_at_end
        self.backoff_s = backoff_s
        backoff_delays(*backoff_s)  # validates
        self.stats = CameraStats()
        self._clock = clock
        self._dedupe = Deduplicator(dedupe_window_s)
        super().__init__(ScanDelivery(f"camera {source!r}", on_scan), thread_name="camera-scanner")
        self._capture: Any = None
        self._finished = threading.Event()
        self._ever_open = False

    # --- synchronous use ----------------------------------------------------------
    def process_frame(self, frame: Frame, now: float | None = None) -> list[ScanLine]:
        """Decode one frame and return (and deliver) the codes not seen within the dedupe window."""
        now = self._clock() if now is None else now
        started = time.perf_counter()
        found = self.decoder.decode(frame)
        self.stats.decode_s += time.perf_counter() - started
        self.stats.frames += 1
        self.stats.codes_seen += len(found)
        lines = []
        for code in found:
            if self._dedupe.is_new(code.text, now):
                line = ScanLine(code.text, code.symbology, code.text.encode("utf-8"), dt.datetime.now(dt.UTC))
                lines.append(line)
                self.stats.scans += 1
                self._delivery.deliver(line)
        return lines

    # --- capture thread -----------------------------------------------------------
    def _on_start(self) -> None:
        self._finished.clear()

    def _close(self) -> None:
        self._release()

    def wait_finished(self, timeout_s: float | None = None) -> bool:
        """With ``stop_at_end``: wait until the source ran out of frames."""
        return self._finished.wait(timeout_s)

    def _run(self) -> None:
        delays = backoff_delays(*self.backoff_s)
        period = 1.0 / self.fps_limit if self.fps_limit else 0.0
        next_frame_at = 0.0
        try:
            while not self._stop.is_set():
                if self._capture is None:
                    try:
                        self._open()
                    except CameraDisconnected as err:
                        log.warning("%s", err.message)
                        self._stop.wait(next(delays))
                        continue
                wait = next_frame_at - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
                next_frame_at = time.monotonic() + period
                ok, frame = self._capture.read()
                if not ok or frame is None:
                    self.stats.read_failures += 1
                    if self.stop_at_end:
                        log.info("camera %r: end of frames", self.source)
                        break
                    log.warning("camera %r delivered no frame; reopening", self.source)
                    self._release()
                    self._stop.wait(next(delays))
                    continue
                delays = backoff_delays(*self.backoff_s)
                try:
                    self.process_frame(frame)
                except CameraError as err:
                    log.warning("camera %r: frame skipped (%s): %s", self.source, err.reason, err.message)
        finally:
            self._finished.set()

    def _open(self) -> None:
        if not isinstance(self.source, int | str):
            capture: Any = self.source  # an object that already delivers frames
        else:
            cv2 = importlib.import_module("cv2")
            capture = cv2.VideoCapture(self.source)
            if not capture.isOpened():
                capture.release()
                raise CameraDisconnected(f"cannot open camera {self.source!r}")
            if isinstance(self.source, int):
                capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # decode the newest frame, not a queued one
        self._capture = capture
        if self._ever_open:
            self.stats.reopens += 1
        self._ever_open = True
        self._delivery.set_state(ScannerState.ONLINE)

    def _release(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None and isinstance(self.source, int | str):
            try:
                capture.release()
            except Exception:  # a driver failing on release must not stop the loop
                log.debug("release failed", exc_info=True)
        if not self._stop.is_set() and capture is not None:
            self._delivery.set_state(ScannerState.OFFLINE)
