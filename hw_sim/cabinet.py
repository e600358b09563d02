"""A complete simulated cabinet: sim pins, a door wired to its lock, a pty RFID reader with a tag population, a hand.

:class:`SimCabinet` builds the same TOML configuration a field technician
writes (``pin_factory = "sim"``, the reader URL of a :class:`SimR2000Reader`),
parses it with :func:`device.config.parse_config`, and runs the real
:class:`device.cabinet.agent.CabinetAgent` on it; the only difference from a
real cabinet is the pin factory object, shared so the simulated door moves
when the lock relay releases it. The scripting helpers (``badge``, ``open_door``,
``take``, ``put_back``, ``close_door``, ``scan_pair``) are what a nurse does.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import device.cabinet.config  # noqa: F401 - registers [cabinet]
from device.cabinet.agent import CabinetAgent
from device.cabinet.config import cabinet_config
from device.cabinet.epc import encode_sgtin96
from device.cabinet.session import SessionState
from device.config import parse_config
from device.eventlog import EventLog
from hw_sim.catalog import sim_catalog
from hw_sim.pins import SimCabinetDoor, SimPinFactory
from hw_sim.rfid_reader import SimR2000Reader
from hw_sim.udi_gen import DEFAULT_COMPANY_PREFIX, make_udi, make_wristband
from spd_common.allowlist import Badge, Role, hash_pin, write_allowlist
from spd_common.wire import Event

LOCK_PIN, DOOR_PIN, BUZZER_PIN, LED_PIN = 17, 27, 22, 23
TEST_PIN_COST = 2**4  # scrypt cost for simulated staff PINs (fast); real lists use the default


@dataclass(frozen=True, slots=True)
class SimTaggedItem:
    """One labelled item: its UDI barcode and the SGTIN-96 tag stuck on it."""

    gtin: str
    serial: str
    lot: str
    expiry: dt.date
    epc: str
    udi: str
    antenna: int


def make_items(count: int, *, first_serial: int, antennas: tuple[int, ...], seed: int,
               today: dt.date | None = None) -> list[SimTaggedItem]:
    """``count`` items over the simulated catalogue, spread over ``antennas`` round-robin."""
    rng = random.Random(seed)
    catalog = sim_catalog()
    today = today or dt.date.today()
    out = []
    for i in range(count):
        item = catalog[rng.randrange(len(catalog))]
        serial = str(first_serial + i)
        expiry = today + dt.timedelta(days=rng.randrange(200, 900))
        lot = f"L{rng.randrange(1000, 9999)}"
        out.append(SimTaggedItem(
            gtin=item.gtin, serial=serial, lot=lot, expiry=expiry,
            epc=encode_sgtin96(item.gtin, serial, company_prefix_digits=len(DEFAULT_COMPANY_PREFIX)),
            udi=make_udi(gtin=item.gtin, lot=lot, serial=serial, expiry=expiry, symbology="]d2"),
            antenna=antennas[i % len(antennas)],
        ))
    return out


@dataclass(frozen=True, slots=True)
class SimStaff:
    badge: str
    user: str
    role: Role
    pin: str | None = None


DEFAULT_STAFF = (
    SimStaff("04A1B2C3", "N0001", Role.NURSE),
    SimStaff("04A1B2C4", "N0002", Role.NURSE, pin="4321"),
    SimStaff("04FFEE01", "R0001", Role.RESTOCKER),
    SimStaff("04TECH01", "T0001", Role.TECHNICIAN),
)


class SimCabinet:
    """One simulated cabinet with its agent; ``start()`` then script it; ``stop()`` at the end."""

    def __init__(
        self,
        workdir: Path,
        *,
        device: str = "CAB01",
        site: str = "H1",
        dept: str = "ICU-2",
        items: int = 20,
        first_serial: int = 1000001,
        antennas: tuple[int, ...] = (1, 2, 3, 4),
        seed: int = 1,
        tags_per_s: float = 3000.0,
        sim_miss_rate: float = 0.0,
        reader_corrupt_rate: float = 0.0,
        reader_garbage_rate: float = 0.0,
        miss_rate: float = 0.05,
        phantom_target: float = 1e-5,
        reader_timeout_s: float = 0.3,
        unlock_s: float = 2.0,
        ajar_limit_s: float = 30.0,
        link_within_s: float = 0.0,
        pin_timeout_s: float = 5.0,
        poll_s: float = 0.5,
        staff: tuple[SimStaff, ...] = DEFAULT_STAFF,
        eventlog: EventLog | None = None,
        on_committed: Callable[[Event], None] | None = None,
        extra_toml: str = "",
        data_dir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.rng = random.Random(seed)
        self.staff = {s.user: s for s in staff}
        self.factory = SimPinFactory()
        self.door = SimCabinetDoor(self.factory, lock_pin=LOCK_PIN, sensor_pin=DOOR_PIN)
        self.reader = SimR2000Reader(tags_per_s=tags_per_s, miss_rate=sim_miss_rate, seed=seed,
                                     connected_antennas=antennas, corrupt_rate=reader_corrupt_rate,
                                     garbage_rate=reader_garbage_rate)
        self.items = make_items(items, first_serial=first_serial, antennas=antennas, seed=seed)
        self.inside: dict[str, SimTaggedItem] = {}
        self.outside: dict[str, SimTaggedItem] = {}
        for it in self.items:
            self._put(it)
        write_allowlist(self.workdir / "allowlist.json", [
            Badge(s.badge, s.user, s.role, hash_pin(s.pin, n=TEST_PIN_COST) if s.pin else None) for s in staff])
        self.toml_path = self.workdir / "cabinet.toml"
        self.toml_path.write_text(f"""
[device]
id = "{device}"
site = "{site}"
data_dir = "{Path(data_dir).resolve() if data_dir is not None else 'data'}"

[cabinet]
dept = "{dept}"
pin_factory = "sim"
allowlist_file = "allowlist.json"
unlock_s = {unlock_s}
pin_timeout_s = {pin_timeout_s}
buzzer_pin = {BUZZER_PIN}
led_pin = {LED_PIN}

[[cabinet.doors]]
name = "door"
lock_pin = {LOCK_PIN}
door_pin = {DOOR_PIN}
max_energised_s = {max(unlock_s, 0.05)}
ajar_limit_s = {ajar_limit_s}
debounce_s = 0.01

[cabinet.reader]
url = "{self.reader.url}"
antennas = {list(antennas)}
timeout_s = {reader_timeout_s}
miss_rate = {miss_rate}
phantom_target = {phantom_target}
poll_s = {poll_s}
offline_retry_s = 0.1

[cabinet.alarms]
link_within_s = {link_within_s}
{extra_toml}
""", encoding="utf-8")
        self.config = parse_config(tomllib.loads(self.toml_path.read_text(encoding="utf-8")),
                                   source=str(self.toml_path), base_dir=self.workdir)
        self.log = eventlog or EventLog(self.config.log_path, device=device)
        self.agent = CabinetAgent(cabinet_config(self.config), eventlog=self.log, data_dir=self.config.data_dir,
                                  pin_factory=self.factory, on_committed=on_committed)

    # ------------------------------------------------------------ lifecycle

    def start(self, *, timeout_s: float = 10.0) -> SimCabinet:
        self.agent.start()
        deadline = time.monotonic() + timeout_s
        while not self.agent.snapshot_path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.agent.wait_state(SessionState.IDLE, max(0.1, deadline - time.monotonic()))
        return self

    def stop(self) -> None:
        self.agent.stop()
        self.reader.close()

    # ------------------------------------------------------------ what a person does

    def badge(self, user: str, *, pin: bool = True) -> None:
        s = self.staff[user]
        self.agent.scan_text(s.badge)
        if s.pin and pin:
            self.agent.enter_pin(s.pin)

    def open_door(self, *, timeout_s: float = 3.0) -> bool:
        """Wait for the latch to release (the unlock happens on the agent's loop), then pull the handle."""
        deadline = time.monotonic() + timeout_s
        while not self.door.is_released and time.monotonic() < deadline:
            time.sleep(0.005)
        opened = self.door.hand.try_open()
        if opened:
            self.wait_state(SessionState.DOOR_OPEN, timeout_s)
        return opened

    def take(self, n: int | None = None, *, items: list[SimTaggedItem] | None = None) -> list[SimTaggedItem]:
        """Take ``items`` (or ``n`` random ones) out of the open cabinet."""
        if not self.door.is_open:
            raise RuntimeError("the door is shut")
        chosen = items if items is not None else self.rng.sample(sorted(self.inside.values(), key=lambda i: i.epc),
                                                                  n or 1)
        for it in chosen:
            self.reader.remove_tag(it.epc)
            del self.inside[it.epc]
            self.outside[it.epc] = it
        return chosen

    def put_back(self, items: list[SimTaggedItem]) -> None:
        if not self.door.is_open:
            raise RuntimeError("the door is shut")
        for it in items:
            self.outside.pop(it.epc, None)
            self._put(it)

    def add_new(self, items: list[SimTaggedItem]) -> None:
        """A restocker puts new items in."""
        self.put_back(items)

    def close_door(self, *, wait: bool = True, timeout_s: float = 20.0) -> float:
        """Shut the door; with ``wait``, return once the count after it is committed. Returns the close time."""
        before = len(self.agent.counts)
        self.door.close()
        t = time.monotonic()
        if wait and not self.wait_counted(before, timeout_s):
            raise TimeoutError(f"no count committed within {timeout_s}s (state {self.agent.state.value})")
        return t

    def wait_counted(self, before: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.agent.counts) > before:
                return True
            time.sleep(0.005)
        return False

    def wait_state(self, state: SessionState, timeout_s: float = 5.0) -> bool:
        return self.agent.wait_state(state, timeout_s)

    def scan_pair(self, item: SimTaggedItem, *, admission: str | None = None) -> None:
        """Scan a patient's wristband, then the item's UDI, at the cabinet's scanner."""
        band = admission or make_wristband(self.rng)
        self.agent.scan_text(band)
        self.agent.scan_text(item.udi)

    # ------------------------------------------------------------ looking at the record

    def events(self, *kinds: str, after_seq: int = 0) -> list[Event]:
        return [e for e in self.log.events(from_seq=after_seq + 1, limit=100000) if not kinds or e.kind in kinds]

    def wait_event(self, kind: str, predicate: Callable[[Event], bool] = lambda e: True, *, after_seq: int = 0,
                   timeout_s: float = 5.0) -> Event | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in self.events(kind, after_seq=after_seq):
                if predicate(e):
                    return e
            time.sleep(0.01)
        return None

    def _put(self, it: SimTaggedItem) -> None:
        self.reader.add_tag(it.epc, antennas=(it.antenna,))
        self.inside[it.epc] = it


class SimTagField:
    """An in-memory reader for driving the counting logic fast: tags per antenna, independent per-round misses.

    Implements :class:`device.cabinet.inventory.InventoryReader`. ``sim_time_s``
    adds up what the rounds would take on a reader doing ``tags_per_s`` reads
    plus ``antenna_overhead_s`` per antenna switch, without sleeping.
    """

    def __init__(self, *, antennas: tuple[int, ...] = (1, 2, 3, 4), miss_rate: float = 0.05, seed: int = 0,
                 tags_per_s: float = 300.0, antenna_overhead_s: float = 0.005) -> None:
        from device.hal.rfid.reader import InventoryResult, TagSighting  # noqa: F401 - used below

        self.antennas = antennas
        self.miss_rate = miss_rate
        self.tags_per_s = tags_per_s
        self.antenna_overhead_s = antenna_overhead_s
        self.tags: dict[str, set[int]] = {}
        self.rng = random.Random(seed)
        self.sim_time_s = 0.0
        self.reads = 0

    def inventory(self, rounds: int = 1, *, antennas: object = None, repeat: int = 1) -> object:
        from device.hal.rfid.reader import InventoryResult, TagSighting

        ants = tuple(antennas) if antennas is not None else self.antennas  # type: ignore[call-overload]
        result = InventoryResult()
        for _ in range(rounds * repeat):
            for a in ants:
                self.sim_time_s += self.antenna_overhead_s
                for epc, where in self.tags.items():
                    if a in where and self.rng.random() >= self.miss_rate:
                        s = result.tags.setdefault(epc, TagSighting())
                        s.count += 1
                        s.antennas.add(a)
                        self.reads += 1
                        self.sim_time_s += 1.0 / self.tags_per_s
            result.rounds_completed += 1
        return result
