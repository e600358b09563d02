"""Codec for the serial command protocol of Impinj R2000-based UHF RFID reader modules.

Reference: "UHF RFID Reader Serial Interface Protocol" V3.x (V3.7 checked), the
document R2000 module vendors publish for their boards. Every packet, in both
directions, is::

    Head 0xA0 | Len | Address | Cmd | Data ... | Check

``Len`` counts the bytes after itself (Address through Check); ``Check`` is the
two's complement of the 8-bit sum of every byte before it (Head included), so
the sum of a whole packet is 0 mod 256. Address 0xFF is the public address.

Responses decoded here:

* ``cmd_real_time_inventory`` (0x89) and ``cmd_customized_session_target_inventory``
  (0x8B): one packet per tag read, ``FreqAnt | PC (2) | EPC (n) | RSSI``, where
  FreqAnt's high 6 bits are the frequency-channel index and low 2 bits the
  antenna (0-3); RSSI's low 7 bits give dBm as ``value - 129`` and its high bit
  selects antennas 5-8 on eight-port readers. The round ends with
  ``AntID | ReadRate (2) | TotalRead (4)`` (big-endian), or a one-byte error code.
* ``cmd_fast_switch_ant_inventory`` (0x8A): the same tag packets, ended by
  ``TotalRead (3) | CommandDuration ms (4)``; a failing antenna reports
  ``AntID | ErrorCode``.
* ``cmd_get_firmware_version`` (0x72): ``Major | Minor``.
* other settings commands answer a single ErrorCode byte, 0x10 meaning success.

0x8B's data is ``Session | Target | Repeat``: the Gen2 Query's session (S0-S3)
and the inventoried-flag value (A or B) a tag must hold to take part; a tag
that is read inverts that flag (EPC Gen2 v1.2.0, 6.3.2.2 and the Query
command, 6.3.2.10.2.1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

log = logging.getLogger(__name__)

HEAD = 0xA0
PUBLIC_ADDRESS = 0xFF
MIN_LEN = 3  # Address + Cmd + Check
RSSI_OFFSET_DBM = 129
ANTENNA_DISABLED = 0xFF  # an unused slot in cmd_fast_switch_ant_inventory


class Command(IntEnum):
    RESET = 0x70
    SET_UART_BAUDRATE = 0x71
    GET_FIRMWARE_VERSION = 0x72
    SET_READER_ADDRESS = 0x73
    SET_WORK_ANTENNA = 0x74
    GET_WORK_ANTENNA = 0x75
    SET_OUTPUT_POWER = 0x76
    GET_OUTPUT_POWER = 0x77
    REAL_TIME_INVENTORY = 0x89
    FAST_SWITCH_ANT_INVENTORY = 0x8A
    CUSTOMIZED_SESSION_TARGET_INVENTORY = 0x8B


class Session(IntEnum):
    """A Gen2 inventory session: each tag keeps one inventoried flag per session."""

    S0 = 0
    S1 = 1
    S2 = 2
    S3 = 3


class Target(IntEnum):
    """The inventoried-flag value a Query addresses (A is the value a tag powers up or decays to)."""

    A = 0
    B = 1


INVENTORY_COMMANDS = frozenset(
    {Command.REAL_TIME_INVENTORY, Command.FAST_SWITCH_ANT_INVENTORY, Command.CUSTOMIZED_SESSION_TARGET_INVENTORY}
)


class ErrorCode(IntEnum):
    """The protocol's error code table (only the codes a cabinet is likely to meet are named)."""

    SUCCESS = 0x10
    FAIL = 0x11
    MCU_RESET_ERROR = 0x20
    CW_ON_ERROR = 0x21
    ANTENNA_MISSING = 0x22
    WRITE_FLASH_ERROR = 0x23
    READ_FLASH_ERROR = 0x24
    SET_OUTPUT_POWER_ERROR = 0x25
    TAG_INVENTORY_ERROR = 0x31
    TAG_READ_ERROR = 0x32
    TAG_WRITE_ERROR = 0x33
    TAG_LOCK_ERROR = 0x34
    TAG_KILL_ERROR = 0x35
    NO_TAG = 0x36
    INVENTORY_OK_BUT_ACCESS_FAIL = 0x37
    BUFFER_IS_EMPTY = 0x38
    ACCESS_OR_PASSWORD_ERROR = 0x40
    PARAMETER_INVALID = 0x41
    READER_ADDRESS_INVALID = 0x46
    ANTENNA_ID_OUT_OF_RANGE = 0x47
    OUTPUT_POWER_OUT_OF_RANGE = 0x48
    FREQUENCY_REGION_OUT_OF_RANGE = 0x49
    BAUDRATE_OUT_OF_RANGE = 0x4A
    FAIL_TO_GET_RN16_FROM_TAG = 0x50
    PLL_LOCK_FAIL = 0x52
    RF_CHIP_FAIL_TO_RESPONSE = 0x53
    FAIL_TO_ACHIEVE_DESIRED_OUTPUT_POWER = 0x54
    SPECTRUM_REGULATION_ERROR = 0x56
    OUTPUT_POWER_TOO_LOW = 0x57


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"error_0x{code:02x}"


def checksum(data: bytes | bytearray) -> int:
    """Two's complement of the byte sum of ``data``."""
    return (-sum(data)) & 0xFF


# --- frames -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawFrame:
    """A checksum-verified packet, not yet interpreted."""

    address: int
    cmd: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TagRead:
    """One tag singulated during an inventory round."""

    epc: bytes
    antenna: int  # 1-based
    rssi_dbm: int
    pc: bytes
    freq_idx: int
    cmd: int = Command.REAL_TIME_INVENTORY
    address: int = PUBLIC_ADDRESS

    @property
    def epc_hex(self) -> str:
        return self.epc.hex().upper()


@dataclass(frozen=True, slots=True)
class InventoryRoundEnd:
    """End of a real-time (0x89/0x8B) round on one antenna."""

    antenna: int  # 1-based
    read_rate: int  # tag reads per second
    total_read: int
    cmd: int = Command.REAL_TIME_INVENTORY
    address: int = PUBLIC_ADDRESS


@dataclass(frozen=True, slots=True)
class FastSwitchRoundEnd:
    """End of a fast-switch (0x8A) inventory over several antennas."""

    total_read: int
    duration_ms: int
    address: int = PUBLIC_ADDRESS


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The reader refused or failed a command; ``antenna`` is set when the error names one (1-based)."""

    cmd: int
    code: int
    antenna: int | None = None
    address: int = PUBLIC_ADDRESS

    @property
    def name(self) -> str:
        return error_name(self.code)


@dataclass(frozen=True, slots=True)
class Ack:
    """A settings command succeeded (ErrorCode 0x10)."""

    cmd: int
    address: int = PUBLIC_ADDRESS


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    major: int
    minor: int
    address: int = PUBLIC_ADDRESS


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A valid packet this codec does not interpret."""

    cmd: int
    data: bytes
    address: int = PUBLIC_ADDRESS


Frame = TagRead | InventoryRoundEnd | FastSwitchRoundEnd | ErrorFrame | Ack | FirmwareVersion | UnknownFrame


def frame_command(frame: Frame) -> int:
    """The command a response frame answers."""
    if isinstance(frame, FirmwareVersion):
        return Command.GET_FIRMWARE_VERSION
    if isinstance(frame, FastSwitchRoundEnd):
        return Command.FAST_SWITCH_ANT_INVENTORY
    return frame.cmd


# --- encoding ---------------------------------------------------------------


def encode_frame(address: int, cmd: int, data: bytes | Sequence[int] = b"") -> bytes:
    """A complete packet with Len and Check filled in."""
    payload = bytes(data)
    if not 0 <= address <= 0xFF or not 0 <= cmd <= 0xFF:
        raise ValueError(f"address and cmd must be bytes, got {address!r}, {cmd!r}")
    if len(payload) > 0xFF - MIN_LEN:
        raise ValueError(f"payload of {len(payload)} bytes does not fit one packet")
    body = bytes((HEAD, len(payload) + MIN_LEN, address, cmd)) + payload
    return body + bytes((checksum(body),))


def encode_reset(address: int = PUBLIC_ADDRESS) -> bytes:
    return encode_frame(address, Command.RESET)


def encode_get_firmware_version(address: int = PUBLIC_ADDRESS) -> bytes:
    return encode_frame(address, Command.GET_FIRMWARE_VERSION)


def encode_set_work_antenna(antenna: int, address: int = PUBLIC_ADDRESS) -> bytes:
    """Select the antenna (1-4) the next real-time inventory uses."""
    if not 1 <= antenna <= 4:
        raise ValueError(f"antenna must be 1-4, got {antenna}")
    return encode_frame(address, Command.SET_WORK_ANTENNA, (antenna - 1,))


def encode_real_time_inventory(repeat: int = 1, address: int = PUBLIC_ADDRESS) -> bytes:
    """Inventory on the work antenna, ``repeat`` rounds (255 = the reader's shortest round)."""
    if not 1 <= repeat <= 0xFF:
        raise ValueError(f"repeat must be 1-255, got {repeat}")
    return encode_frame(address, Command.REAL_TIME_INVENTORY, (repeat,))


def encode_customized_session_target_inventory(
    session: int = Session.S1, target: int = Target.A, repeat: int = 1, address: int = PUBLIC_ADDRESS
) -> bytes:
    """Real-time inventory on the work antenna of the tags whose ``session`` flag equals ``target`` (0 = A, 1 = B)."""
    if not 0 <= session <= 3 or target not in (0, 1) or not 1 <= repeat <= 0xFF:
        raise ValueError(f"bad session/target/repeat: {session}/{target}/{repeat}")
    return encode_frame(address, Command.CUSTOMIZED_SESSION_TARGET_INVENTORY, (session, target, repeat))


def encode_fast_switch_ant_inventory(
    stays: Sequence[tuple[int, int]], *, interval_ms: int = 0, repeat: int = 1, address: int = PUBLIC_ADDRESS
) -> bytes:
    """Inventory up to four antennas in turn: ``stays`` = ((antenna 1-4, rounds), ...)."""
    if not 1 <= len(stays) <= 4:
        raise ValueError(f"fast switch takes 1-4 antennas, got {len(stays)}")
    data: list[int] = []
    for antenna, rounds in stays:
        if not 1 <= antenna <= 4 or not 1 <= rounds <= 0xFF:
            raise ValueError(f"bad antenna/rounds {antenna}/{rounds}")
        data += [antenna - 1, rounds]
    data += [ANTENNA_DISABLED, 1] * (4 - len(stays))
    data += [interval_ms & 0xFF, repeat & 0xFF]
    return encode_frame(address, Command.FAST_SWITCH_ANT_INVENTORY, data)


def encode_tag_read(tag: TagRead) -> bytes:
    """The reader's packet for one tag read (used by simulators and golden tests)."""
    if len(tag.pc) != 2:
        raise ValueError("PC is two bytes")
    high_bank = tag.antenna > 4
    ant_bits = (tag.antenna - 1) & 0x03
    rssi = (tag.rssi_dbm + RSSI_OFFSET_DBM) & 0x7F
    data = bytes(((tag.freq_idx & 0x3F) << 2 | ant_bits,)) + tag.pc + tag.epc
    data += bytes((rssi | (0x80 if high_bank else 0),))
    return encode_frame(tag.address, tag.cmd, data)


def encode_round_end(end: InventoryRoundEnd) -> bytes:
    data = bytes((end.antenna - 1,)) + end.read_rate.to_bytes(2, "big") + end.total_read.to_bytes(4, "big")
    return encode_frame(end.address, end.cmd, data)


def encode_fast_switch_end(end: FastSwitchRoundEnd) -> bytes:
    data = end.total_read.to_bytes(3, "big") + end.duration_ms.to_bytes(4, "big")
    return encode_frame(end.address, Command.FAST_SWITCH_ANT_INVENTORY, data)


def pc_for_epc(epc: bytes) -> bytes:
    """A Gen2 protocol-control word whose length field (bits 15-11) matches ``epc``."""
    if len(epc) % 2:
        raise ValueError("an EPC is a whole number of 16-bit words")
    return ((len(epc) // 2) << 11).to_bytes(2, "big")


# --- decoding ---------------------------------------------------------------


def parse_response(raw: RawFrame) -> Frame:
    """Interpret a reader-to-host packet."""
    cmd, data, address = raw.cmd, raw.data, raw.address
    if cmd in (Command.REAL_TIME_INVENTORY, Command.CUSTOMIZED_SESSION_TARGET_INVENTORY):
        if len(data) == 1:
            return ErrorFrame(cmd, data[0], address=address)
        if len(data) == 7:
            return InventoryRoundEnd(
                antenna=data[0] + 1,
                read_rate=int.from_bytes(data[1:3], "big"),
                total_read=int.from_bytes(data[3:7], "big"),
                cmd=cmd,
                address=address,
            )
        if len(data) >= 4:
            return _parse_tag(cmd, data, address)
    elif cmd == Command.FAST_SWITCH_ANT_INVENTORY:
        if len(data) == 1:
            return ErrorFrame(cmd, data[0], address=address)
        if len(data) == 2:
            return ErrorFrame(cmd, data[1], antenna=data[0] + 1, address=address)
        if len(data) == 7:
            return FastSwitchRoundEnd(
                total_read=int.from_bytes(data[0:3], "big"),
                duration_ms=int.from_bytes(data[3:7], "big"),
                address=address,
            )
        if len(data) >= 4:
            return _parse_tag(cmd, data, address)
    elif cmd == Command.GET_FIRMWARE_VERSION and len(data) == 2:
        return FirmwareVersion(data[0], data[1], address=address)
    elif len(data) == 1:
        if data[0] == ErrorCode.SUCCESS:
            return Ack(cmd, address=address)
        return ErrorFrame(cmd, data[0], address=address)
    return UnknownFrame(cmd, data, address=address)


def _parse_tag(cmd: int, data: bytes, address: int) -> TagRead:
    freq_ant, rssi_raw = data[0], data[-1]
    antenna = (freq_ant & 0x03) + 1 + (4 if rssi_raw & 0x80 else 0)
    return TagRead(
        epc=bytes(data[3:-1]),
        antenna=antenna,
        rssi_dbm=(rssi_raw & 0x7F) - RSSI_OFFSET_DBM,
        pc=bytes(data[1:3]),
        freq_idx=freq_ant >> 2,
        cmd=cmd,
        address=address,
    )


@dataclass
class CodecStats:
    frames: int = 0
    bad_checksums: int = 0
    garbage_bytes: int = 0


class R2000Codec:
    """Incremental packet splitter: ``feed(bytes)`` returns the complete, checksum-valid frames so far.

    Bytes before a Head are skipped as garbage. A packet whose checksum fails is
    counted and only its Head byte is dropped, so a real packet that started
    inside the bad one's span is still found (resynchronisation). Partial
    packets wait for the next ``feed``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = CodecStats()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """Reader-to-host direction: typed frames."""
        return [parse_response(raw) for raw in self.feed_raw(data)]

    def feed_raw(self, data: bytes | bytearray) -> list[RawFrame]:
        """Either direction: verified packets, uninterpreted (a simulator parses host commands with this)."""
        buf = self._buf
        buf += data
        out: list[RawFrame] = []
        while True:
            start = buf.find(HEAD)
            if start < 0:
                self._skip(len(buf))
                break
            if start:
                self._skip(start)
            if len(buf) < 2:
                break
            length = buf[1]
            if length < MIN_LEN:
                self._skip(1)
                continue
            total = length + 2
            if len(buf) < total:
                break
            if sum(buf[:total]) & 0xFF:
                self.stats.bad_checksums += 1
                log.debug("bad checksum in %s", bytes(buf[:total]).hex())
                del buf[:1]
                continue
            out.append(RawFrame(buf[2], buf[3], bytes(buf[4 : total - 1])))
            self.stats.frames += 1
            del buf[:total]
        return out

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget any partial packet (after a reconnect)."""
        self._buf.clear()

    def _skip(self, n: int) -> None:
        if n:
            self.stats.garbage_bytes += n
            del self._buf[:n]
