"""A killable simulated cabinet for the chaos run: the real cabinet agent, a scripted ward, a noisy serial reader.

``python -m hw_sim.chaos_cabinet`` runs one :class:`hw_sim.cabinet.SimCabinet`
(the real :class:`device.cabinet.agent.CabinetAgent` on simulated pins and a
pty R2000 reader that corrupts frames and mixes in garbage bytes) with its own
event log and :class:`device.sync.DeviceSync`, and scripted staff: nurses
badge in, take one to three items, close the door, then scan the patient's
wristband and each item's UDI at the cabinet; now and then an item goes back
unused in a later session (uncharged, or after it was scanned onto a patient:
the gateway must credit that one); a restocker refills when stock runs low.

The physical world (which labelled items are in the cabinet, which are in a
nurse's hand, which were used) outlives the process: it is kept in a small
JSON file outside the device's data directory, written atomically after
every physical change. A cabinet SIGKILLed or cut off from power comes back
to the same shelves; items taken while it was down are found by the agent's
start-up count. Staff stop at ``--until`` (a wall-clock time, so a restarted
cabinet keeps the same end); the process then waits for its log to drain,
compares the agent's inventory with the shelves, prints one JSON line and
exits 0 (1 if the log did not drain).

Every ``consume`` event the cabinet commits is appended to ``--nurse-journal``
as ``device seq``: those are the scans the nurse was told about.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device.cabinet.session import SessionState
from device.eventlog import EventLog
from device.sync import DeviceSync
from hw_sim.cabinet import SimCabinet, SimTaggedItem, make_items
from hw_sim.handheld import JumpingClock
from spd_common.durable import write_atomic
from spd_common.logsetup import setup_logging
from spd_common.wire import Event

log = logging.getLogger(__name__)

ANTENNAS = (1, 2, 3, 4)
RESTOCK_BELOW = 12
SCAN_ATTEMPTS = 5  # a nurse whose scan is refused for a full disk tries again later; a few times
CHARGED_BACK_RATE = 0.1  # items scanned onto a patient, then brought back unused into the cabinet (a credit)


def read_report(path: Path) -> dict[str, Any] | None:
    """A cabinet process's final report (what its staff did and what it recorded), or None if it wrote none."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc


def report_mismatches(device: str, report: dict[str, Any]) -> list[str]:
    """How a cabinet's records differ from its shelves, from its final report; [] when they match item by item."""
    out: list[str] = []
    if (report["taken"], report["added"]) != (report["taken_recorded"], report["added_recorded"]):
        out.append(f"{device}: staff took {report['taken']} and put in {report['added']} items, the cabinet recorded "
                   f"{report['taken_recorded']} taken and {report['added_recorded']} returned or restocked; "
                   f"first items that differ: {report['moves_differ'][:3]}")
    if report["inventory_missing"] or report["inventory_extra"]:
        out.append(f"{device}: not counted {report['inventory_missing'][:5]}, "
                   f"counted but not there {report['inventory_extra'][:5]}")
    return out


def _item_doc(it: SimTaggedItem) -> dict[str, object]:
    d = asdict(it)
    d["expiry"] = it.expiry.isoformat()
    return d


def _item(doc: dict[str, object]) -> SimTaggedItem:
    return SimTaggedItem(gtin=str(doc["gtin"]), serial=str(doc["serial"]), lot=str(doc["lot"]),
                         expiry=dt.date.fromisoformat(str(doc["expiry"])), epc=str(doc["epc"]), udi=str(doc["udi"]),
                         antenna=int(str(doc["antenna"])))


@dataclass(slots=True)
class Shelves:
    """The physical world of one cabinet, kept in a file so it survives the controller's crashes."""

    inside: dict[str, SimTaggedItem] = field(default_factory=dict)
    in_hand: dict[str, SimTaggedItem] = field(default_factory=dict)  # taken, to be scanned onto a patient
    unused: dict[str, SimTaggedItem] = field(default_factory=dict)  # taken, not used: goes back later
    attempts: dict[str, int] = field(default_factory=dict)
    used: int = 0
    given_up: int = 0
    next_serial: int = 0
    session: int = 0
    moves: int = 0  # physical moves journalled (``<device>-moves.txt``)
    taken: int = 0  # items staff took out, over every run
    added: int = 0  # items staff put in (back unused, or new stock)
    corrupted_frames: int = 0  # reader frames sent with a flipped byte, over every run of the cabinet
    garbage_bursts: int = 0  # random bytes the reader sent before a frame

    @classmethod
    def load(cls, path: Path) -> Shelves | None:
        if not path.exists():
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            inside={d["epc"]: _item(d) for d in doc["inside"]},
            in_hand={d["epc"]: _item(d) for d in doc["in_hand"]},
            unused={d["epc"]: _item(d) for d in doc["unused"]},
            attempts=dict(doc["attempts"]), used=int(doc["used"]), given_up=int(doc["given_up"]),
            next_serial=int(doc["next_serial"]), session=int(doc["session"]),
            moves=int(doc["moves"]), taken=int(doc["taken"]), added=int(doc["added"]),
            corrupted_frames=int(doc["corrupted_frames"]), garbage_bursts=int(doc["garbage_bursts"]),
        )

    def save(self, path: Path) -> None:
        doc = {
            "inside": [_item_doc(i) for i in self.inside.values()],
            "in_hand": [_item_doc(i) for i in self.in_hand.values()],
            "unused": [_item_doc(i) for i in self.unused.values()],
            "attempts": self.attempts, "used": self.used, "given_up": self.given_up,
            "next_serial": self.next_serial, "session": self.session,
            "moves": self.moves, "taken": self.taken, "added": self.added,
            "corrupted_frames": self.corrupted_frames, "garbage_bursts": self.garbage_bursts,
        }
        write_atomic(path, json.dumps(doc).encode("utf-8"))


class ChaosCabinet:
    """One cabinet and its staff; ``run_until`` plays sessions, ``finish`` drains and reports."""

    def __init__(self, *, device: str, site: str, data_dir: Path, world_dir: Path, broker_host: str, broker_port: int,
                 seed: int, nurse_journal: Path | None, corrupt_rate: float, garbage_rate: float,
                 clock_jumps: bool) -> None:
        self.device = device
        self.seed = seed
        world_dir.mkdir(parents=True, exist_ok=True)
        self.shelves_path = world_dir / f"{device}-shelves.json"
        shelves = Shelves.load(self.shelves_path)
        first_start = shelves is None
        if shelves is None:
            base = 10**7 * (1 + sum(device.encode()) % 89)
            start = make_items(30, first_serial=base + 1, antennas=ANTENNAS, seed=seed)
            shelves = Shelves(inside={i.epc: i for i in start}, next_serial=base + 31)
        self.shelves = shelves
        self._moves = open(world_dir / f"{device}-moves.txt", "a", encoding="ascii")  # noqa: SIM115
        self.clock = JumpingClock(random.Random(f"clock/{seed}/{device}")) if clock_jumps else None
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = EventLog(data_dir / f"{device}.db", device=device,
                            clock=self.clock.now if self.clock else time.time)
        self.sync = DeviceSync(self.log, site=site, host=broker_host, port=broker_port, resend_after_s=2.0)
        self._journal = open(nurse_journal, "a", encoding="ascii") if nurse_journal else None  # noqa: SIM115
        self.consumed_udis: set[str] = set()
        self.refused_udis: set[str] = set()
        for ev in self.log.events(limit=10**9):  # what this cabinet already charged, before a crash
            if ev.kind in ("consume", "refused_scan") and isinstance(ev.body.get("udi"), str):
                (self.consumed_udis if ev.kind == "consume" else self.refused_udis).add(ev.body["udi"])
        self.cab = SimCabinet(
            world_dir / device, device=device, site=site, items=0, seed=seed, antennas=ANTENNAS,
            tags_per_s=3000.0, sim_miss_rate=0.02, reader_corrupt_rate=corrupt_rate,
            reader_garbage_rate=garbage_rate, unlock_s=3.0, eventlog=self.log, on_committed=self._committed,
            data_dir=data_dir,
        )
        # the shelves as they are, not as the constructor stocked them
        self.cab.reader.clear_tags()
        self.cab.inside.clear()
        for it in self.shelves.inside.values():
            self.cab.reader.add_tag(it.epc, antennas=(it.antenna,))
            self.cab.inside[it.epc] = it
        self.cab.outside = {**self.shelves.in_hand, **self.shelves.unused}
        self.rng = random.Random(f"{seed}/{device}/{self.shelves.session}/{self.log.last_seq}")
        self._counted = (0, 0)
        if first_start:
            self._save()

    def _moved(self, direction: str, *items: SimTaggedItem) -> None:
        """Journal a physical move; it counts once the shelves holding it are saved (``n`` <= ``shelves.moves``)."""
        for it in items:
            self.shelves.moves += 1
            self._moves.write(f"{self.shelves.moves} {direction} {it.epc}\n")
        self._moves.flush()

    def _save(self) -> None:
        stats = self.cab.reader.stats
        self.shelves.corrupted_frames += stats.corrupted_frames - self._counted[0]
        self.shelves.garbage_bursts += stats.garbage_bursts - self._counted[1]
        self._counted = (stats.corrupted_frames, stats.garbage_bursts)
        self.shelves.save(self.shelves_path)

    def _committed(self, ev: Event) -> None:
        self.sync.notify()
        udi = ev.body.get("udi")
        if ev.kind == "consume" and isinstance(udi, str):
            self.consumed_udis.add(udi)
            if self._journal is not None:
                self._journal.write(f"{self.device} {ev.seq}\n")
                self._journal.flush()
        elif ev.kind == "refused_scan" and isinstance(udi, str):
            self.refused_udis.add(udi)

    def start(self) -> ChaosCabinet:
        self.sync.start()
        self.cab.start(timeout_s=60.0)
        return self

    # ------------------------------------------------------------ what the staff do

    def run_until(self, until_wall: float) -> None:
        while time.time() < until_wall:
            self._scan_in_hand()
            self.shelves.session += 1
            self._save()
            if len(self.shelves.inside) < RESTOCK_BELOW:
                self._restock()
            else:
                self._nurse()
            if self.clock is not None:
                self.clock.maybe_jump()
            time.sleep(self.rng.uniform(0.05, 0.3))
        self._scan_in_hand()
        self._save()

    def _restock(self) -> None:
        new = make_items(self.rng.randint(8, 14), first_serial=self.shelves.next_serial, antennas=ANTENNAS,
                         seed=self.rng.randrange(2**31))
        self.shelves.next_serial += len(new)
        self._save()
        self.cab.badge("R0001")
        if not self.cab.open_door():
            return
        self.cab.add_new(new)
        self.shelves.inside.update({i.epc: i for i in new})
        self.shelves.added += len(new)
        self._moved("in", *new)
        self._save()
        self._close()

    def _nurse(self) -> None:
        self.cab.badge(self.rng.choice(["N0001", "N0002"]))
        if not self.cab.open_door():
            return
        returned: set[str] = set()
        if self.shelves.unused and self.rng.random() < 0.5:
            epc = next(iter(self.shelves.unused))
            back = self.shelves.unused.pop(epc)
            self.cab.put_back([back])
            self.shelves.inside[epc] = back
            self.shelves.added += 1
            self._moved("in", back)
            self._save()
            returned.add(epc)
        # not the item just put back: put in and taken out within one opening, no count could see it (nor should);
        # nor one already charged and brought back (the gateway credits it; it stays on the shelf)
        choice = sorted(e for e in self.shelves.inside
                        if e not in returned and self.shelves.inside[e].udi not in self.consumed_udis)
        picked = self.rng.sample(choice, min(self.rng.randint(1, 3), len(choice)))
        for it in self.cab.take(items=[self.shelves.inside[e] for e in picked]):
            del self.shelves.inside[it.epc]
            self.shelves.taken += 1
            self._moved("out", it)
            if self.rng.random() < 0.15:
                self.shelves.unused[it.epc] = it
            else:
                self.shelves.in_hand[it.epc] = it
            self._save()
        self._close()

    def _close(self) -> None:
        self.cab.door.close()
        # the count ends the session; a cabinet whose reader is offline stays in FAULT until it comes back
        self.cab.wait_state(SessionState.IDLE, 30.0)

    def _scan_in_hand(self) -> None:
        """Scan the patient's wristband and each item in hand; an item refused for a full disk stays in hand."""
        for epc, it in list(self.shelves.in_hand.items()):
            if it.udi not in self.consumed_udis:  # (it may have been, just before a crash)
                if self.rng.random() < 0.02:
                    self.cab.agent.scan_text(self.rng.choice(["]d2019999", "not a barcode", "]C1(01)123"]))
                self.cab.scan_pair(it)
                self.cab.wait_state(SessionState.IDLE, 5.0)
            if it.udi in self.consumed_udis:
                del self.shelves.in_hand[epc]
                if self.rng.random() < CHARGED_BACK_RATE:  # charged, then not used after all: back in later
                    self.shelves.unused[epc] = it
                else:
                    self.shelves.used += 1
            elif it.udi in self.refused_udis:  # refused with a reason on record (e.g. scanned before a crash)
                del self.shelves.in_hand[epc]
                self.shelves.given_up += 1
            else:
                n = self.shelves.attempts[epc] = self.shelves.attempts.get(epc, 0) + 1
                if n >= SCAN_ATTEMPTS:
                    del self.shelves.in_hand[epc]
                    self.shelves.given_up += 1
            self._save()

    # ------------------------------------------------------------ the end

    def finish(self, drain_timeout_s: float) -> dict[str, object]:
        deadline = time.monotonic() + drain_timeout_s
        while self.log.backlog() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.cab.wait_state(SessionState.IDLE, 30.0)
        believed = set(self.cab.agent.cabinet.inventory)
        actual = set(self.shelves.inside)
        recorded = {"taken": 0, "added": 0}
        recorded_moves: dict[str, list[str]] = {}
        for ev in self.log.events(limit=10**9):
            epc = ev.body.get("epc")
            if ev.kind == "taken":
                recorded["taken"] += 1
                recorded_moves.setdefault(str(epc), []).append("out")
            elif ev.kind in ("returned", "restocked"):
                recorded["added"] += 1
                recorded_moves.setdefault(str(epc), []).append("in")
        physical = self._physical_moves()
        differ = sorted(e for e in set(physical) | set(recorded_moves) if physical.get(e) != recorded_moves.get(e))
        return {
            "device": self.device, "events": self.log.last_seq, "backlog": self.log.backlog(),
            "drained": self.log.backlog() == 0, "sessions": self.shelves.session, "used": self.shelves.used,
            "given_up": self.shelves.given_up, "inventory_missing": sorted(actual - believed),
            "inventory_extra": sorted(believed - actual),
            "taken": self.shelves.taken, "taken_recorded": recorded["taken"],
            "added": self.shelves.added, "added_recorded": recorded["added"],
            "moves_differ": [{"epc": e, "physical": physical.get(e, []), "recorded": recorded_moves.get(e, [])}
                             for e in differ[:10]],
            "corrupted_frames": self.shelves.corrupted_frames,
            "garbage_bursts": self.shelves.garbage_bursts,
        }

    def _physical_moves(self) -> dict[str, list[str]]:
        """EPC -> its moves in and out, from the journal (a line counts if its shelves were saved; last one wins)."""
        self._moves.flush()
        by_n: dict[int, tuple[str, str]] = {}
        for line in self.shelves_path.with_name(f"{self.device}-moves.txt").read_text(encoding="ascii").split("\n"):
            parts = line.split()
            if len(parts) == 3 and parts[0].isdigit() and int(parts[0]) <= self.shelves.moves:
                by_n[int(parts[0])] = (parts[1], parts[2])
        out: dict[str, list[str]] = {}
        for n in sorted(by_n):
            direction, epc = by_n[n]
            out.setdefault(epc, []).append(direction)
        return out

    def stop(self) -> None:
        self._moves.close()
        self.cab.stop()
        self.sync.stop()
        self.log.close()
        if self._journal is not None:
            self._journal.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.chaos_cabinet", description="A killable simulated cabinet.")
    p.add_argument("--device", required=True)
    p.add_argument("--site", default="H1")
    p.add_argument("--data-dir", type=Path, required=True, help="the controller's data directory (event log, snapshot)")
    p.add_argument("--world-dir", type=Path, required=True, help="the shelves and the cabinet's configuration")
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--until", type=float, required=True, help="wall-clock time (epoch seconds) the staff stop")
    p.add_argument("--corrupt-rate", type=float, default=0.02, help="share of reader frames with a flipped byte")
    p.add_argument("--garbage-rate", type=float, default=0.01, help="share of reader frames after random bytes")
    p.add_argument("--nurse-journal", type=Path, default=None)
    p.add_argument("--clock-jumps", action="store_true")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--report", type=Path, default=None, help="write the final JSON line here too")
    a = p.parse_args(argv)
    setup_logging()
    cab = ChaosCabinet(device=a.device, site=a.site, data_dir=a.data_dir, world_dir=a.world_dir,
                       broker_host=a.broker_host, broker_port=a.broker_port, seed=a.seed,
                       nurse_journal=a.nurse_journal, corrupt_rate=a.corrupt_rate, garbage_rate=a.garbage_rate,
                       clock_jumps=a.clock_jumps).start()
    try:
        cab.run_until(a.until)
        result = cab.finish(a.drain_timeout)
    finally:
        cab.stop()
    line = json.dumps(result)
    print(line, flush=True)
    if a.report is not None:
        a.report.write_text(line + "\n", encoding="utf-8")
    return 0 if result["drained"] else 1


if __name__ == "__main__":
    sys.exit(main())
