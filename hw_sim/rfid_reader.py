"""A simulated R2000 UHF RFID reader speaking the module's serial protocol on a pty, with misses and line noise."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from device.hal.rfid.r2000 import (
    ANTENNA_DISABLED,
    Command,
    ErrorCode,
    FastSwitchRoundEnd,
    InventoryRoundEnd,
    R2000Codec,
    RawFrame,
    TagRead,
    encode_fast_switch_end,
    encode_frame,
    encode_round_end,
    encode_tag_read,
    pc_for_epc,
)
from hw_sim.pty_serial import PtyPort, PtyUnplugged

log = logging.getLogger(__name__)


@dataclass
class SimReaderStats:
    commands: int = 0
    tag_reads_sent: int = 0
    misses: int = 0
    corrupted_frames: int = 0
    garbage_bursts: int = 0
    rounds: int = 0


@dataclass
class _Tag:
    epc: bytes
    rssi_dbm: float
    antennas: set[int] = field(default_factory=set)


class SimR2000Reader:
    """An R2000 module on a pty: holds a tag population per antenna and answers inventories.

    ``tags_per_s`` paces tag packets like a real module (~200-400 reads/s);
    ``miss_rate`` drops each tag from each antenna round at random; ``rssi_noise_db``
    is the standard deviation added to a tag's RSSI; ``corrupt_rate`` flips a byte
    in a packet and ``garbage_rate`` puts random bytes before one. All randomness
    comes from ``seed``.
    """

    def __init__(
        self,
        *,
        address: int = 0x01,
        firmware: tuple[int, int] = (1, 8),
        tags_per_s: float = 300.0,
        miss_rate: float = 0.0,
        rssi_noise_db: float = 2.0,
        corrupt_rate: float = 0.0,
        garbage_rate: float = 0.0,
        connected_antennas: Iterable[int] = (1, 2, 3, 4),
        seed: int = 0,
        link_dir: Path | None = None,
    ) -> None:
        self.address = address
        self.firmware = firmware
        self.tags_per_s = tags_per_s
        self.miss_rate = miss_rate
        self.rssi_noise_db = rssi_noise_db
        self.corrupt_rate = corrupt_rate
        self.garbage_rate = garbage_rate
        self.connected_antennas = set(connected_antennas)
        self.stats = SimReaderStats()
        self._rng = random.Random(seed)
        self._tags: dict[bytes, _Tag] = {}
        self._tags_lock = threading.Lock()
        self._work_antenna = 1
        self._port = PtyPort(link_dir=link_dir)
        self._codec = R2000Codec()
        self._fresh_line = threading.Event()  # replugged: drop any half-received command
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sim-r2000", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Stable path for :func:`serial.serial_for_url`."""
        return self._port.url

    # --- tag population ---------------------------------------------------
    def add_tag(self, epc: bytes | str, *, antennas: Iterable[int] = (1,), rssi_dbm: float = -55.0) -> None:
        epc_b = bytes.fromhex(epc) if isinstance(epc, str) else epc
        with self._tags_lock:
            tag = self._tags.setdefault(epc_b, _Tag(epc_b, rssi_dbm))
            tag.antennas.update(antennas)
            tag.rssi_dbm = rssi_dbm

    def remove_tag(self, epc: bytes | str) -> None:
        epc_b = bytes.fromhex(epc) if isinstance(epc, str) else epc
        with self._tags_lock:
            self._tags.pop(epc_b, None)

    def clear_tags(self) -> None:
        with self._tags_lock:
            self._tags.clear()

    def tags_on(self, antenna: int) -> list[bytes]:
        with self._tags_lock:
            return [t.epc for t in self._tags.values() if antenna in t.antennas]

    # --- faults -----------------------------------------------------------
    def unplug(self) -> None:
        """Pull the USB adapter: the path vanishes and the open port errors."""
        log.info("sim reader unplugged")
        self._port.unplug()

    def replug(self) -> None:
        log.info("sim reader plugged back in")
        self._fresh_line.set()
        self._port.replug()

    def close(self) -> None:
        self._stop.set()
        self._port.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> SimR2000Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- serving ----------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._port.is_plugged:
                time.sleep(0.01)
                continue
            if self._fresh_line.is_set():
                self._fresh_line.clear()
                self._codec.reset()
            try:
                data = self._port.read(0.05)
                for raw in self._codec.feed_raw(data):
                    self.stats.commands += 1
                    self._handle(raw)
            except PtyUnplugged:
                continue
            except Exception:
                log.exception("simulated reader failed")

    def _handle(self, raw: RawFrame) -> None:
        cmd, data = raw.cmd, raw.data
        if raw.address not in (self.address, 0xFF):
            return
        if cmd == Command.RESET:
            self._work_antenna = 1
        elif cmd == Command.GET_FIRMWARE_VERSION:
            self._send(encode_frame(self.address, cmd, bytes(self.firmware)))
        elif cmd == Command.SET_WORK_ANTENNA:
            if len(data) != 1 or data[0] > 3:
                self._reply_code(cmd, ErrorCode.ANTENNA_ID_OUT_OF_RANGE)
            else:
                self._work_antenna = data[0] + 1
                self._reply_code(cmd, ErrorCode.SUCCESS)
        elif cmd == Command.GET_WORK_ANTENNA:
            self._send(encode_frame(self.address, cmd, (self._work_antenna - 1,)))
        elif cmd in (Command.REAL_TIME_INVENTORY, Command.CUSTOMIZED_SESSION_TARGET_INVENTORY):
            repeat = data[-1] if data else 1
            self._real_time_inventory(cmd, max(1, repeat))
        elif cmd == Command.FAST_SWITCH_ANT_INVENTORY:
            self._fast_switch(data)
        else:
            self._reply_code(cmd, ErrorCode.FAIL)

    def _real_time_inventory(self, cmd: int, repeat: int) -> None:
        antenna = self._work_antenna
        if antenna not in self.connected_antennas:
            self._reply_code(cmd, ErrorCode.ANTENNA_MISSING)
            return
        started = time.monotonic()
        total = self._inventory_rounds(cmd, antenna, repeat)
        elapsed = max(time.monotonic() - started, 1e-3)
        end = InventoryRoundEnd(antenna, min(0xFFFF, round(total / elapsed)), total, cmd=cmd, address=self.address)
        self._send(encode_round_end(end))
        self.stats.rounds += 1

    def _fast_switch(self, data: bytes) -> None:
        if len(data) < 10:
            self._reply_code(Command.FAST_SWITCH_ANT_INVENTORY, ErrorCode.PARAMETER_INVALID)
            return
        started = time.monotonic()
        total = 0
        for _ in range(max(1, data[-1])):
            for slot in range(4):
                ant_byte, stay = data[2 * slot], data[2 * slot + 1]
                if ant_byte == ANTENNA_DISABLED or ant_byte > 3:
                    continue
                antenna = ant_byte + 1
                if antenna not in self.connected_antennas:
                    self._send(
                        encode_frame(
                            self.address, Command.FAST_SWITCH_ANT_INVENTORY, (ant_byte, ErrorCode.ANTENNA_MISSING)
                        )
                    )
                    continue
                total += self._inventory_rounds(Command.FAST_SWITCH_ANT_INVENTORY, antenna, max(1, stay))
        duration_ms = round((time.monotonic() - started) * 1000)
        self._send(encode_fast_switch_end(FastSwitchRoundEnd(total, duration_ms, address=self.address)))
        self.stats.rounds += 1

    def _inventory_rounds(self, cmd: int, antenna: int, repeat: int) -> int:
        with self._tags_lock:
            visible = [(t.epc, t.rssi_dbm) for t in self._tags.values() if antenna in t.antennas]
        interval = 1.0 / self.tags_per_s if self.tags_per_s > 0 else 0.0
        next_at = time.monotonic()
        total = 0
        for _ in range(repeat):
            order = list(visible)
            self._rng.shuffle(order)
            for epc, rssi in order:
                if self._rng.random() < self.miss_rate:
                    self.stats.misses += 1
                    continue
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                noisy = round(rssi + self._rng.gauss(0.0, self.rssi_noise_db)) if self.rssi_noise_db else round(rssi)
                read = TagRead(
                    epc=epc,
                    antenna=antenna,
                    rssi_dbm=max(-128, min(-2, noisy)),
                    pc=pc_for_epc(epc),
                    freq_idx=self._rng.randrange(0, 50),
                    cmd=cmd,
                    address=self.address,
                )
                self._send(encode_tag_read(read))
                self.stats.tag_reads_sent += 1
                total += 1
        return total

    def _reply_code(self, cmd: int, code: int) -> None:
        self._send(encode_frame(self.address, cmd, (code,)))

    def _send(self, packet: bytes) -> None:
        out = bytearray(packet)
        if self.garbage_rate and self._rng.random() < self.garbage_rate:
            self.stats.garbage_bursts += 1
            out[:0] = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 12)))
        if self.corrupt_rate and self._rng.random() < self.corrupt_rate:
            self.stats.corrupted_frames += 1
            i = len(out) - len(packet) + self._rng.randrange(2, len(packet))
            out[i] ^= 1 << self._rng.randrange(8)
        self._port.write(bytes(out))
