"""A simulated R2000 UHF RFID reader on a pty (misses, line noise, Gen2 session flags) and an in-memory twin.

Gen2 sessions and inventoried flags, as modelled here (EPC UHF Gen2 Air
Interface v1.2.0, 6.3.2.2 "Sessions and inventoried flags" and Table 6.14
"Tag flags and persistence values"; 6.3.2.10.2.1 Query):

* every tag keeps one inventoried flag per session S0-S3, value A or B; a tag
  entering the field has A in every session whose persistence has run out;
* a session/target inventory (0x8B) is answered only by tags whose flag in that
  session equals the target; a tag that is read (singulated, EPC received
  valid) inverts that flag. A tag that is *missed* keeps its flag: it either
  never won a slot or was NAKed after a bad EPC reply, which returns it to
  arbitrate without inverting (Gen2 NAK; ST XRAG2 datasheet 8.2.5 shows the same);
* persistence of a B flag: S0 while the tag is energised, lost as soon as it
  is not; S1 0.5-5 s whether energised or not (drawn per flip from
  ``s1_persistence_s``); S2 and S3 indefinite while energised, and
  ``s23_persistence_s`` (spec: more than 2 s, no upper bound) once the tag
  loses power. A tag is energised only while its antenna transmits: during an
  inventory on that antenna (one transmitter, antennas in turn);
* a flag does not change during a round the tag takes part in: eligibility is
  decided at the start of each round.

The real-time inventory (0x89) and the fast-switch inventory (0x8A) are
modelled as the module's own search in which every tag in the field answers
every round (an S0 dual-target search), leaving the S1-S3 flags as they are.
"""

from __future__ import annotations

import logging
import math
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
    Session,
    TagRead,
    Target,
    encode_fast_switch_end,
    encode_frame,
    encode_round_end,
    encode_tag_read,
    pc_for_epc,
)
from device.hal.rfid.reader import InventoryResult
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
    rounds_by_command: dict[int, int] = field(default_factory=dict)  # antenna rounds per inventory command code


_A = -math.inf  # ``b_until`` of a flag that is A
_HELD = math.inf  # ``b_until`` of a B flag held while the tag is energised


@dataclass
class _Tag:
    epc: bytes
    rssi_dbm: float
    antennas: set[int] = field(default_factory=set)
    b_until: list[float] = field(default_factory=lambda: [_A] * 4)  # per session: B until this time


class Gen2TagField:
    """Tags per antenna with their Gen2 inventoried flags; the clock is passed in (real or virtual).

    ``round()`` decides which tags answer one inventory round on an antenna and
    inverts the flags of those read. Thread-safe.
    """

    def __init__(
        self,
        *,
        miss_rate: float = 0.0,
        rng: random.Random | None = None,
        s1_persistence_s: tuple[float, float] = (0.5, 5.0),
        s23_persistence_s: tuple[float, float] = (2.0, 20.0),
    ) -> None:
        self.miss_rate = miss_rate
        self.s1_persistence_s = s1_persistence_s
        self.s23_persistence_s = s23_persistence_s
        self.misses = 0
        self._rng = rng or random.Random(0)
        self._tags: dict[bytes, _Tag] = {}
        self._lock = threading.Lock()

    # --- population -------------------------------------------------------
    def add(self, epc: bytes, *, antennas: Iterable[int], rssi_dbm: float = -55.0) -> None:
        with self._lock:
            tag = self._tags.setdefault(epc, _Tag(epc, rssi_dbm))
            tag.antennas.update(antennas)
            tag.rssi_dbm = rssi_dbm

    def remove(self, epc: bytes) -> None:
        with self._lock:
            self._tags.pop(epc, None)

    def clear(self) -> None:
        with self._lock:
            self._tags.clear()

    def tags_on(self, antenna: int) -> list[bytes]:
        with self._lock:
            return [t.epc for t in self._tags.values() if antenna in t.antennas]

    def epcs(self) -> set[bytes]:
        with self._lock:
            return set(self._tags)

    def antennas_of(self, epc: bytes) -> set[int]:
        with self._lock:
            return set(self._tags[epc].antennas)

    def flag(self, epc: bytes, session: Session, now: float) -> Target:
        with self._lock:
            return Target.B if now < self._tags[epc].b_until[session] else Target.A

    # --- power --------------------------------------------------------------
    def energise(self, antenna: int, now: float) -> None:
        """The antenna starts transmitting: S2/S3 B flags still set are held again."""
        with self._lock:
            for t in self._tags.values():
                if antenna in t.antennas:
                    for s in (Session.S2, Session.S3):
                        if now < t.b_until[s]:
                            t.b_until[s] = _HELD

    def deenergise(self, antenna: int, now: float) -> None:
        """The antenna stops: S0 flags fall back to A, S2/S3 B flags start their unpowered persistence."""
        lo, hi = self.s23_persistence_s
        with self._lock:
            for t in self._tags.values():
                if antenna in t.antennas:
                    t.b_until[Session.S0] = _A
                    for s in (Session.S2, Session.S3):
                        if t.b_until[s] == _HELD:
                            t.b_until[s] = now + self._rng.uniform(lo, hi)

    # --- inventory ----------------------------------------------------------
    def round(
        self, antenna: int, now: float, *, session: Session | None = None, target: Target = Target.A,
        read_interval_s: float = 0.0,
    ) -> list[tuple[bytes, float]]:
        """One round on ``antenna`` starting at ``now``: the (EPC, RSSI) of each tag read, in reply order.

        Without ``session`` every tag on the antenna takes part; with it only
        those whose flag equals ``target``, and each one read inverts its flag
        at the moment it is read (``now`` + its position times ``read_interval_s``).
        """
        with self._lock:
            eligible = [t for t in self._tags.values() if antenna in t.antennas
                        and (session is None or (Target.B if now < t.b_until[session] else Target.A) == target)]
            self._rng.shuffle(eligible)
            out: list[tuple[bytes, float]] = []
            for t in eligible:
                if self._rng.random() < self.miss_rate:
                    self.misses += 1
                    continue
                out.append((t.epc, t.rssi_dbm))
                if session is not None:
                    self._invert(t, session, now + len(out) * read_interval_s)
            return out

    def _invert(self, t: _Tag, session: Session, at: float) -> None:
        if at < t.b_until[session]:
            t.b_until[session] = _A
        elif session is Session.S1:
            t.b_until[session] = at + self._rng.uniform(*self.s1_persistence_s)
        else:
            t.b_until[session] = _HELD  # S0, S2, S3: held while energised (it is: it was just read)


class SimR2000Reader:
    """An R2000 module on a pty: holds a tag population per antenna and answers inventories.

    ``tags_per_s`` paces tag packets like a real module (~200-400 reads/s);
    ``miss_rate`` drops each tag from each antenna round at random; ``rssi_noise_db``
    is the standard deviation added to a tag's RSSI; ``corrupt_rate`` flips a byte
    in a packet and ``garbage_rate`` puts random bytes before one.
    ``round_overhead_s`` is what a round costs besides its tag reads (carrier
    up, Query, empty and collided slots, round end) and ``antenna_switch_s``
    what moving the carrier to another antenna adds; both are assumptions, not
    measurements. Session/target inventories (0x8B) follow :class:`Gen2TagField`.
    All randomness comes from ``seed``.
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
        round_overhead_s: float = 0.01,
        antenna_switch_s: float = 0.005,
        s1_persistence_s: tuple[float, float] = (0.5, 5.0),
        s23_persistence_s: tuple[float, float] = (2.0, 20.0),
        seed: int = 0,
        link_dir: Path | None = None,
    ) -> None:
        self.address = address
        self.firmware = firmware
        self.tags_per_s = tags_per_s
        self.round_overhead_s = round_overhead_s
        self.antenna_switch_s = antenna_switch_s
        self.rssi_noise_db = rssi_noise_db
        self.corrupt_rate = corrupt_rate
        self.garbage_rate = garbage_rate
        self.connected_antennas = set(connected_antennas)
        self.stats = SimReaderStats()
        self._rng = random.Random(seed)
        self.field = Gen2TagField(miss_rate=miss_rate, rng=random.Random(seed + 1), s1_persistence_s=s1_persistence_s,
                                  s23_persistence_s=s23_persistence_s)
        self._work_antenna = 1
        self._last_antenna: int | None = None
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

    @property
    def miss_rate(self) -> float:
        return self.field.miss_rate

    @miss_rate.setter
    def miss_rate(self, value: float) -> None:
        self.field.miss_rate = value

    # --- tag population ---------------------------------------------------
    def add_tag(self, epc: bytes | str, *, antennas: Iterable[int] = (1,), rssi_dbm: float = -55.0) -> None:
        self.field.add(bytes.fromhex(epc) if isinstance(epc, str) else epc, antennas=antennas, rssi_dbm=rssi_dbm)

    def remove_tag(self, epc: bytes | str) -> None:
        self.field.remove(bytes.fromhex(epc) if isinstance(epc, str) else epc)

    def clear_tags(self) -> None:
        self.field.clear()

    def tags_on(self, antenna: int) -> list[bytes]:
        return self.field.tags_on(antenna)

    def flag(self, epc: bytes | str, session: Session) -> Target:
        """A tag's inventoried flag in ``session`` now."""
        return self.field.flag(bytes.fromhex(epc) if isinstance(epc, str) else epc, session, time.monotonic())

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
        elif cmd == Command.REAL_TIME_INVENTORY:
            self._real_time_inventory(cmd, max(1, data[-1] if data else 1))
        elif cmd == Command.CUSTOMIZED_SESSION_TARGET_INVENTORY:
            if len(data) < 3 or data[0] > 3 or data[1] > 1:
                self._reply_code(cmd, ErrorCode.PARAMETER_INVALID)
            else:
                self._real_time_inventory(cmd, max(1, data[2]), Session(data[0]), Target(data[1]))
        elif cmd == Command.FAST_SWITCH_ANT_INVENTORY:
            self._fast_switch(data)
        else:
            self._reply_code(cmd, ErrorCode.FAIL)

    def _real_time_inventory(
        self, cmd: int, repeat: int, session: Session | None = None, target: Target = Target.A
    ) -> None:
        antenna = self._work_antenna
        if antenna not in self.connected_antennas:
            self._reply_code(cmd, ErrorCode.ANTENNA_MISSING)
            return
        started = time.monotonic()
        total = self._inventory_rounds(cmd, antenna, repeat, session, target)
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

    def _inventory_rounds(
        self, cmd: int, antenna: int, repeat: int, session: Session | None = None, target: Target = Target.A
    ) -> int:
        interval = 1.0 / self.tags_per_s if self.tags_per_s > 0 else 0.0
        next_at = time.monotonic()
        self.stats.rounds_by_command[cmd] = self.stats.rounds_by_command.get(cmd, 0) + repeat
        if antenna != self._last_antenna:
            next_at += self.antenna_switch_s
            self._last_antenna = antenna
        self.field.energise(antenna, next_at)
        total = 0
        try:
            for _ in range(repeat):
                next_at += self.round_overhead_s
                misses_before = self.field.misses
                reads = self.field.round(antenna, next_at, session=session, target=target, read_interval_s=interval)
                self.stats.misses += self.field.misses - misses_before
                total += self._send_reads(cmd, antenna, reads, next_at, interval)
                next_at += len(reads) * interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        finally:
            self.field.deenergise(antenna, time.monotonic())
        return total

    def _send_reads(self, cmd: int, antenna: int, reads: list[tuple[bytes, float]], start: float,
                    interval: float) -> int:
        next_at = start
        total = 0
        for epc, rssi in reads:
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


class SimGen2Field:
    """An in-memory reader over a :class:`Gen2TagField` on a virtual clock: fast, same tag model as the pty reader.

    Implements :class:`device.cabinet.inventory.InventoryReader`. Each round on
    an antenna advances ``now`` by ``antenna_switch_s`` (when the antenna
    changes), ``round_overhead_s`` and one read interval per tag read at
    ``tags_per_s``, without sleeping; ``advance()`` lets time pass between
    counts (a door held open).
    """

    def __init__(
        self,
        *,
        antennas: tuple[int, ...] = (1, 2, 3, 4),
        miss_rate: float = 0.05,
        seed: int = 0,
        tags_per_s: float = 300.0,
        round_overhead_s: float = 0.01,
        antenna_switch_s: float = 0.005,
        s1_persistence_s: tuple[float, float] = (0.5, 5.0),
        s23_persistence_s: tuple[float, float] = (2.0, 20.0),
    ) -> None:
        self.antennas = antennas
        self.tags_per_s = tags_per_s
        self.round_overhead_s = round_overhead_s
        self.antenna_switch_s = antenna_switch_s
        self.field = Gen2TagField(miss_rate=miss_rate, rng=random.Random(seed), s1_persistence_s=s1_persistence_s,
                                  s23_persistence_s=s23_persistence_s)
        self.now = 0.0
        self.reads = 0
        self.commands: list[tuple[int, Session | None]] = []  # (antenna, session) of every antenna round
        self._last_antenna: int | None = None
        self._last_inventory_end: float | None = None

    def add_tag(self, epc: str, antennas: Iterable[int]) -> None:
        self.field.add(bytes.fromhex(epc), antennas=antennas)

    def remove_tag(self, epc: str) -> None:
        self.field.remove(bytes.fromhex(epc))

    def tags(self) -> dict[str, frozenset[int]]:
        """EPC (upper-case hex) -> antennas, of every tag in the cabinet."""
        return {e.hex().upper(): frozenset(self.field.antennas_of(e)) for e in self.field.epcs()}

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def seconds_since_inventory(self) -> float:
        return math.inf if self._last_inventory_end is None else self.now - self._last_inventory_end

    def inventory(
        self,
        rounds: int = 1,
        *,
        antennas: Iterable[int] | None = None,
        repeat: int = 1,
        session: Session | None = None,
        target: Target = Target.A,
    ) -> InventoryResult:
        ants = tuple(antennas) if antennas is not None else self.antennas
        interval = 1.0 / self.tags_per_s
        result = InventoryResult()
        started = self.now
        for _ in range(rounds):
            for a in ants:
                self.commands.append((a, session))
                if a != self._last_antenna:
                    self.now += self.antenna_switch_s
                    self._last_antenna = a
                self.field.energise(a, self.now)
                for _ in range(repeat):
                    self.now += self.round_overhead_s
                    for epc, rssi in self.field.round(a, self.now, session=session, target=target,
                                                      read_interval_s=interval):
                        result.add(TagRead(epc=epc, antenna=a, rssi_dbm=round(rssi), pc=pc_for_epc(epc), freq_idx=0))
                        self.now += interval
                        self.reads += 1
                self.field.deenergise(a, self.now)
            result.rounds_completed += 1
        result.duration_s = self.now - started
        self._last_inventory_end = self.now
        return result
