"""Driver for an R2000-based UHF RFID reader on a serial URL: multi-antenna inventory, Gen2 sessions, reconnection."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import serial

from device.hal.rfid.r2000 import (
    Command,
    ErrorCode,
    ErrorFrame,
    FirmwareVersion,
    Frame,
    InventoryRoundEnd,
    R2000Codec,
    Session,
    TagRead,
    Target,
    encode_customized_session_target_inventory,
    encode_get_firmware_version,
    encode_real_time_inventory,
    encode_set_work_antenna,
    error_name,
    frame_command,
)
from spd_common.backoff import backoff_delays

log = logging.getLogger(__name__)

SerialFactory = Callable[..., Any]
"""Opens a port from a URL, like :func:`serial.serial_for_url`."""


class ReaderError(Exception):
    """Root of the RFID reader errors; ``reason`` is a stable code."""

    reason = "reader_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReaderTimeout(ReaderError, TimeoutError):
    """The reader did not answer within ``timeout_s``."""

    reason = "reader_timeout"


class ReaderDisconnected(ReaderError, ConnectionError):
    """The serial port is gone (adapter unplugged) or cannot be opened; ``partial`` holds reads made before."""

    reason = "reader_disconnected"

    def __init__(self, message: str, *, partial: InventoryResult | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class ReaderCommandError(ReaderError, RuntimeError):
    """The reader answered a command with an error code."""

    reason = "reader_command_failed"

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class ReaderState(Enum):
    OFFLINE = "offline"
    ONLINE = "online"


@dataclass
class TagSighting:
    """What one inventory saw of one EPC."""

    count: int = 0
    best_rssi: int = -128
    antennas: set[int] = field(default_factory=set)


@dataclass
class InventoryResult:
    tags: dict[str, TagSighting] = field(default_factory=dict)  # key: EPC as upper-case hex
    rounds_completed: int = 0
    antenna_errors: dict[int, str] = field(default_factory=dict)  # antenna -> error name
    lost_round_ends: int = 0  # rounds closed by silence because their end packet was corrupted
    line_errors: dict[int, int] = field(default_factory=dict)  # antenna -> bad or lost packets during its rounds
    duration_s: float = 0.0

    def add(self, tag: TagRead) -> None:
        sighting = self.tags.setdefault(tag.epc_hex, TagSighting())
        sighting.count += 1
        sighting.best_rssi = max(sighting.best_rssi, tag.rssi_dbm)
        sighting.antennas.add(tag.antenna)

    @property
    def epcs(self) -> set[str]:
        return set(self.tags)


@dataclass
class ReaderStats:
    frames: int = 0
    bad_frames: int = 0
    garbage_bytes: int = 0
    disconnects: int = 0
    reconnects: int = 0


class RfidReader:
    """One reader module on ``url`` (``/dev/ttyUSB0``, a simulator's pty link, ``loop://``...).

    The port opens on first use. A serial failure closes it, marks the reader
    offline and raises :class:`ReaderDisconnected`; the next operation tries to
    open it again, and :meth:`wait_online` retries with exponential backoff.
    Calls are serialised by an internal lock; one reader per port.
    """

    def __init__(
        self,
        url: str,
        *,
        address: int = 0xFF,
        antennas: Sequence[int] = (1, 2, 3, 4),
        baudrate: int = 115200,
        timeout_s: float = 2.0,
        retries: int = 1,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        serial_factory: SerialFactory = serial.serial_for_url,
    ) -> None:
        if not antennas or any(not 1 <= a <= 4 for a in antennas):
            raise ValueError(f"antennas must be 1-4, got {antennas!r}")
        self.url = url
        self.address = address
        self.antennas = tuple(antennas)
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.when_state_changed: Callable[[ReaderState], None] | None = None
        self._serial_factory = serial_factory
        self._port: Any = None
        self._codec = R2000Codec()
        self._pending: deque[Frame] = deque()
        self._mutex = threading.RLock()
        self._state = ReaderState.OFFLINE
        self._ever_online = False
        self._disconnects = 0
        self._reconnects = 0
        self._last_inventory_end: float | None = None

    # --- connection -------------------------------------------------------
    @property
    def state(self) -> ReaderState:
        return self._state

    @property
    def is_online(self) -> bool:
        return self._state is ReaderState.ONLINE

    @property
    def stats(self) -> ReaderStats:
        s = self._codec.stats
        return ReaderStats(s.frames, s.bad_checksums, s.garbage_bytes, self._disconnects, self._reconnects)

    def open(self) -> None:
        """Open the port now; :class:`ReaderDisconnected` if it is not there."""
        with self._mutex:
            if self._port is not None:
                return
            try:
                port = self._serial_factory(self.url, baudrate=self.baudrate, timeout=min(0.05, self.timeout_s))
            except (serial.SerialException, OSError, ValueError) as err:
                self._set_state(ReaderState.OFFLINE)
                raise ReaderDisconnected(f"cannot open {self.url}: {err}") from err
            self._port = port
            self._codec.reset()
            self._pending.clear()
            try:
                port.reset_input_buffer()
            except (serial.SerialException, OSError) as err:
                self._drop_port(err)
                raise ReaderDisconnected(f"{self.url} failed right after opening: {err}") from err
            if self._ever_online:
                self._reconnects += 1
            self._ever_online = True
            self._set_state(ReaderState.ONLINE)
            log.info("rfid reader on %s online", self.url)

    def close(self) -> None:
        with self._mutex:
            port, self._port = self._port, None
            if port is not None:
                try:
                    port.close()
                except (serial.SerialException, OSError):
                    pass
            self._set_state(ReaderState.OFFLINE)

    def wait_online(self, timeout_s: float) -> bool:
        """Try to open the port, backing off exponentially between attempts, for up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        delays = backoff_delays(*self.backoff_s)
        while True:
            try:
                self.open()
                return True
            except ReaderDisconnected as err:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("rfid reader on %s still offline: %s", self.url, err.message)
                    return False
                time.sleep(min(next(delays), remaining))

    def __enter__(self) -> RfidReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- commands ---------------------------------------------------------
    def firmware_version(self) -> tuple[int, int]:
        frame = self._command(encode_get_firmware_version(self.address), Command.GET_FIRMWARE_VERSION)
        if not isinstance(frame, FirmwareVersion):
            raise ReaderError(f"unexpected answer to get_firmware_version: {frame!r}")
        return frame.major, frame.minor

    def set_work_antenna(self, antenna: int) -> None:
        frame = self._command(encode_set_work_antenna(antenna, self.address), Command.SET_WORK_ANTENNA)
        if isinstance(frame, ErrorFrame):
            raise ReaderCommandError(f"antenna {antenna}: {frame.name}", code=frame.code)

    def inventory(
        self,
        rounds: int = 1,
        *,
        antennas: Iterable[int] | None = None,
        repeat: int = 1,
        session: Session | None = None,
        target: Target = Target.A,
    ) -> InventoryResult:
        """Run ``rounds`` rounds, each an inventory on every antenna in turn; merge the sightings.

        Without ``session`` each antenna runs a real-time inventory (0x89), in
        which every tag in the field may answer. With ``session`` it runs a
        session/target inventory (0x8B): only tags whose inventoried flag in
        that session equals ``target`` answer, and each tag read inverts it.
        """
        ants = tuple(antennas) if antennas is not None else self.antennas
        if session is None:
            cmd, packet = Command.REAL_TIME_INVENTORY, encode_real_time_inventory(repeat, self.address)
        else:
            cmd = Command.CUSTOMIZED_SESSION_TARGET_INVENTORY
            packet = encode_customized_session_target_inventory(session, target, repeat, self.address)
        result = InventoryResult()
        started = time.monotonic()
        with self._mutex:
            try:
                for _ in range(rounds):
                    for antenna in ants:
                        self._inventory_antenna(antenna, cmd, packet, result)
                    result.rounds_completed += 1
            except ReaderDisconnected as err:
                result.duration_s = time.monotonic() - started
                err.partial = result
                raise
            finally:
                self._last_inventory_end = time.monotonic()
        result.duration_s = time.monotonic() - started
        log.info(
            "inventory%s: %d tags, %d rounds, %.2f s on %s",
            "" if session is None else f" {session.name}/{target.name}",
            len(result.tags),
            result.rounds_completed,
            result.duration_s,
            self.url,
        )
        return result

    def inventory_session(
        self, session: Session, target: Target = Target.A, rounds: int = 1, antennas: Iterable[int] | None = None
    ) -> InventoryResult:
        """``inventory(rounds, antennas=antennas, session=session, target=target)``."""
        return self.inventory(rounds, antennas=antennas, session=session, target=target)

    def seconds_since_inventory(self) -> float:
        """Time since the last inventory command ended (infinite if none ran since the driver was created)."""
        if self._last_inventory_end is None:
            return math.inf
        return time.monotonic() - self._last_inventory_end

    def _inventory_antenna(self, antenna: int, cmd: int, packet: bytes, result: InventoryResult) -> None:
        try:
            self.set_work_antenna(antenna)
        except ReaderCommandError as err:
            result.antenna_errors[antenna] = error_name(err.code)
            log.warning("antenna %d skipped: %s", antenna, err.message)
            return
        stats = self._codec.stats
        line_before = stats.bad_checksums + stats.garbage_bytes
        try:
            self._run_round(antenna, cmd, packet, result)
        finally:
            lost = stats.bad_checksums + stats.garbage_bytes - line_before
            if lost:
                result.line_errors[antenna] = result.line_errors.get(antenna, 0) + lost

    def _run_round(self, antenna: int, cmd: int, packet: bytes, result: InventoryResult) -> None:
        for attempt in range(self.retries + 1):
            self._send(packet)
            got_any = False
            while True:
                frame = self._next_frame(cmd)
                if frame is None:
                    if got_any:
                        result.lost_round_ends += 1
                        result.line_errors[antenna] = result.line_errors.get(antenna, 0) + 1
                        log.warning("antenna %d: round end lost, closing the round on silence", antenna)
                        return
                    break  # nothing at all: resend
                got_any = True
                if isinstance(frame, TagRead):
                    result.add(frame)
                elif isinstance(frame, InventoryRoundEnd):
                    return
                elif isinstance(frame, ErrorFrame):
                    if frame.code != ErrorCode.NO_TAG:
                        result.antenna_errors[antenna] = frame.name
                        log.warning("antenna %d inventory error: %s", antenna, frame.name)
                    return
            log.warning("antenna %d: no answer to inventory (attempt %d)", antenna, attempt + 1)
        raise ReaderTimeout(f"no answer to inventory on antenna {antenna} within {self.timeout_s} s")

    def _command(self, packet: bytes, cmd: int) -> Frame:
        """Send a settings command and return its one answer, resending after a silent timeout."""
        with self._mutex:
            for _ in range(self.retries + 1):
                self._send(packet)
                frame = self._next_frame(cmd)
                if frame is not None:
                    return frame
            raise ReaderTimeout(f"no answer to command 0x{cmd:02X} within {self.timeout_s} s")

    # --- transport --------------------------------------------------------
    def _send(self, packet: bytes) -> None:
        if self._port is None:
            self.open()
        try:
            self._port.write(packet)
        except (serial.SerialException, OSError) as err:
            self._drop_port(err)
            raise ReaderDisconnected(f"write to {self.url} failed: {err}") from err

    def _next_frame(self, cmd: int) -> Frame | None:
        """The next frame answering ``cmd``, or None after ``timeout_s`` without any valid frame."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            while self._pending:
                frame = self._pending.popleft()
                if frame_command(frame) == cmd:
                    return frame
                log.debug("ignoring stray frame %r", frame)
            if time.monotonic() >= deadline:
                return None
            try:
                chunk = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError) as err:
                self._drop_port(err)
                raise ReaderDisconnected(f"read from {self.url} failed: {err}") from err
            if chunk:
                frames = self._codec.feed(chunk)
                if frames:
                    self._pending.extend(frames)
                    deadline = time.monotonic() + self.timeout_s

    def _drop_port(self, err: BaseException) -> None:
        log.warning("rfid reader on %s disconnected: %s", self.url, err)
        self._disconnects += 1
        self.close()

    def _set_state(self, state: ReaderState) -> None:
        if state is self._state:
            return
        self._state = state
        callback = self.when_state_changed
        if callback is not None:
            try:
                callback(state)
            except Exception:
                log.exception("when_state_changed callback failed")
