"""The cabinet survives its event log failing to write (disk full, I/O error): nothing lost, doubled, misattributed."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.cabinet.session import SessionState, Signal
from device.eventlog import EventLog, LogWriteFailed
from hw_sim.cabinet import LOCK_PIN, SimCabinet
from hw_sim.powerfs import fuse_unavailable
from spd_common.wire import Event

from conftest import wait_for


class FillableDisk:
    """Stands between an :class:`EventLog` and its SQLite connection and fails writes as a full disk does.

    While ``full`` every INSERT fails with SQLite's own "database or disk is
    full" error; with ``inserts_left`` set, that many more rows fit, then the
    disk is full. The event log's real error handling (rollback, LogWriteFailed)
    runs on top of it.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.full = False
        self.inserts_left: int | None = None
        self.refused = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.lstrip().upper().startswith("INSERT"):
            if self.inserts_left is not None:
                if self.inserts_left <= 0:
                    self.full = True
                self.inserts_left -= 1
            if self.full:
                self.refused += 1
                raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def heal(self) -> None:
        self.full = False
        self.inserts_left = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.fixture
def cab(tmp_path: Path) -> Iterator[SimCabinet]:
    c = SimCabinet(tmp_path, items=12, link_within_s=1800.0).start()  # with the cabinet's own not_linked check on
    yield c
    c.stop()


def _disk(c: SimCabinet) -> FillableDisk:
    disk = FillableDisk(c.log._db)
    c.log._db = disk  # type: ignore[assignment]
    return disk


def _signals(c: SimCabinet) -> list[Signal]:
    """Every signal the agent shows from now on (the real LED and buzzer still get it)."""
    seen: list[Signal] = []
    show = c.agent._signal

    def spy(signal: Signal) -> None:
        seen.append(signal)
        show(signal)

    c.agent._signal = spy  # type: ignore[method-assign]
    return seen


def _summary(events: list[Event]) -> list[tuple[str, str, str | None]]:
    """kind, what (access result, alarm code or EPC), user: in log order."""
    return [(e.kind, str(e.body.get("result") or e.body.get("alarm") or e.body.get("epc")), e.body.get("user"))
            for e in events]


def _handler_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "handler failed" in r.getMessage()
            or "tick failed" in r.getMessage()]


# ---------------------------------------------------------------- the log itself


def test_append_many_commits_every_event_in_one_transaction_and_continues_the_chain(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d.db", device="CAB01")
    first = log.append("access", {"result": "granted"})
    evs = log.append_many([("taken", {"epc": "A"}), ("taken", {"epc": "B"}), ("alarm", {"alarm": "x"})],
                          ts_ms=1_700_000_000_000)
    assert [e.seq for e in evs] == [2, 3, 4]
    assert evs[0].prev == first.hash and evs[1].prev == evs[0].hash and evs[2].prev == evs[1].hash
    assert all(e.hash_ok() and e.ts_ms == 1_700_000_000_000 for e in evs)
    assert [(e.seq, e.kind, e.body) for e in log.events()][1:] == [(e.seq, e.kind, e.body) for e in evs]
    assert log.append_many([]) == []
    assert log.append("access", {"result": "door_opened"}).seq == 5
    assert log.verify_chain() == []


def test_append_many_writes_nothing_when_the_disk_fills_in_the_middle(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d.db", device="CAB01")
    log.append("access", {"result": "granted"})
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]
    log._db.execute(f"PRAGMA max_page_count = {pages + 8}")  # room for a few events, not for the whole batch
    batch = [("taken", {"epc": f"E{i}", "pad": "x" * 3000}) for i in range(20)]
    log.append_many(batch[:1])  # one fits
    with pytest.raises(LogWriteFailed):
        log.append_many(batch[1:])
    assert log.last_seq == 2 and [e.seq for e in log.events()] == [1, 2]
    assert log.integrity_check() == "ok" and log.verify_chain() == []
    log._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
    evs = log.append_many(batch[1:])
    assert [e.seq for e in evs] == list(range(3, 22))
    assert log.verify_chain() == []


def test_append_many_through_a_full_disk_raises_and_leaves_no_row(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d.db", device="CAB01")
    disk = FillableDisk(log._db)
    log._db = disk  # type: ignore[assignment]
    disk.inserts_left = 2
    with pytest.raises(LogWriteFailed):
        log.append_many([("taken", {"epc": f"E{i}"}) for i in range(3)])
    assert log.last_seq == 0 and log.events() == []
    disk.heal()
    assert [e.seq for e in log.append_many([("taken", {"epc": "E0"})])] == [1]
    assert log.verify_chain() == []


# ---------------------------------------------------------------- the cabinet


def test_count_that_cannot_be_recorded_does_not_wedge_and_is_recorded_once_after_the_disk_heals(
        cab: SimCabinet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    disk = _disk(cab)
    cab.badge("N0001")
    assert cab.open_door()
    taken = cab.take(3)
    before = len(cab.agent.counts)
    disk.inserts_left = 2  # door_closed and one more row fit, then the disk is full: mid-way through the count
    cab.close_door(wait=False)
    assert cab.wait_state(SessionState.FAULT, 10.0)
    refused_before = disk.refused
    wait_for(lambda: disk.refused > refused_before, timeout=3.0)  # it keeps trying
    assert cab.events("taken") == []  # nothing half-written
    assert cab.door.hand.try_open() is False
    cab.badge("N0002")  # nobody gets in while the count is not recorded
    time.sleep(0.3)
    assert cab.door.is_released is False and cab.agent.state is SessionState.FAULT
    assert [e.body["result"] for e in cab.events("access")] == ["granted", "door_opened", "door_closed"]
    disk.heal()
    assert cab.wait_counted(before, 5.0)
    assert cab.wait_state(SessionState.IDLE, 2.0)
    assert sorted((e.body["epc"], e.body["user"]) for e in cab.events("taken")) == sorted(
        (t.epc, "N0001") for t in taken)
    assert set(cab.agent.cabinet.inventory) == set(cab.inside)
    snapshot = json.loads(cab.agent.snapshot_path.read_text(encoding="utf-8"))
    assert set(snapshot["tags"]) == set(cab.inside) and snapshot["seq"] == cab.events("taken")[-1].seq
    cab.badge("N0002")  # the next nurse gets in, and what she takes is hers
    assert cab.open_door()
    mine = cab.take(1)
    cab.close_door()
    taken_by = {e.body["epc"]: e.body["user"] for e in cab.events("taken")}
    assert taken_by[mine[0].epc] == "N0002" and len(taken_by) == 4 == len(cab.events("taken"))
    assert _handler_failures(caplog) == []
    assert cab.log.verify_chain() == []


def test_grant_that_cannot_be_recorded_is_refused_and_the_door_stays_locked(
        cab: SimCabinet, caplog: pytest.LogCaptureFixture) -> None:
    disk = _disk(cab)
    signals = _signals(cab)
    disk.full = True
    cab.badge("N0001")
    wait_for(lambda: Signal.REFUSED in signals, timeout=3.0)
    assert cab.wait_state(SessionState.IDLE, 2.0)
    assert cab.agent.cabinet.session is None
    assert Signal.GRANTED not in signals
    assert cab.door.hand.try_open() is False
    assert cab.factory.pin(LOCK_PIN).levels_since(0.0) == [False]  # the relay never moved
    assert _handler_failures(caplog) == []
    assert any("access refused" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    disk.heal()
    refusal = cab.wait_event("access", timeout_s=3.0)  # the refusal itself is recorded once the log takes it
    assert refusal is not None
    assert (refusal.body["result"], refusal.body["reason"], refusal.body["user"]) == (
        "refused", "log_unavailable", "N0001")
    cab.badge("N0001")
    assert cab.open_door()
    cab.close_door()
    assert [e.body["result"] for e in cab.events("access")] == [
        "refused", "granted", "door_opened", "door_closed"]
    assert cab.log.verify_chain() == []


def test_remote_unlock_that_cannot_be_recorded_is_refused_and_leaves_no_session(
        cab: SimCabinet, caplog: pytest.LogCaptureFixture) -> None:
    disk = _disk(cab)
    signals = _signals(cab)
    disk.full = True
    cab.agent.post(cab.agent.cabinet.grant_remote, "T0001", 2.0, time.monotonic())
    wait_for(lambda: Signal.REFUSED in signals, timeout=3.0)
    assert cab.wait_state(SessionState.IDLE, 2.0)
    assert cab.agent.cabinet.session is None  # a forced door later is not credited to the remote requester
    assert cab.door.hand.try_open() is False
    assert cab.factory.pin(LOCK_PIN).levels_since(0.0) == [False]
    assert _handler_failures(caplog) == []
    disk.heal()
    refusal = cab.wait_event("access", timeout_s=3.0)
    assert refusal is not None
    assert (refusal.body["result"], refusal.body["reason"], refusal.body["user"]) == (
        "refused", "log_unavailable", "T0001")
    cab.agent.post(cab.agent.cabinet.grant_remote, "T0001", 2.0, time.monotonic())
    assert cab.open_door()
    cab.close_door()
    assert [e.body["result"] for e in cab.events("access")] == [
        "refused", "granted", "door_opened", "door_closed"]
    assert cab.log.verify_chain() == []


def test_door_events_that_cannot_be_recorded_are_recorded_once_in_order_and_the_count_still_happens(
        cab: SimCabinet, caplog: pytest.LogCaptureFixture) -> None:
    disk = _disk(cab)
    cab.badge("N0001")
    assert cab.wait_event("access") is not None  # granted, recorded
    disk.full = True
    assert cab.open_door()  # the door physically opens: the cabinet follows
    taken = cab.take(2)
    before = len(cab.agent.counts)
    cab.close_door(wait=False)
    assert cab.wait_state(SessionState.FAULT, 10.0)  # counted, not yet recorded
    assert [e.kind for e in cab.events()] == ["access"]
    disk.heal()
    assert cab.wait_counted(before, 5.0)
    assert cab.wait_state(SessionState.IDLE, 2.0)
    cab.badge("N0002")
    assert cab.open_door()
    theirs = cab.take(1)
    cab.close_door()
    first = sorted(t.epc for t in taken)
    assert _summary(cab.events()) == [
        ("access", "granted", "N0001"), ("access", "door_opened", "N0001"), ("access", "door_closed", "N0001"),
        *[("taken", epc, "N0001") for epc in first],
        ("access", "granted", "N0002"), ("access", "door_opened", "N0002"), ("access", "door_closed", "N0002"),
        ("taken", theirs[0].epc, "N0002"),
    ]
    sessions = [e.body["session"] for e in cab.events()]
    assert len(set(sessions[:5])) == 1 and len(set(sessions[5:])) == 1 and sessions[0] != sessions[5]
    assert set(cab.agent.cabinet.inventory) == set(cab.inside)
    assert _handler_failures(caplog) == []
    assert cab.log.verify_chain() == []


def test_door_forced_open_while_a_count_is_held_is_its_own_unattributed_session(cab: SimCabinet) -> None:
    disk = _disk(cab)
    cab.badge("N0001")
    assert cab.open_door()
    mine = cab.take(1)
    disk.full = True
    cab.close_door(wait=False)
    assert cab.wait_state(SessionState.FAULT, 10.0)
    cab.door.force_open()
    assert cab.wait_state(SessionState.DOOR_OPEN, 3.0)
    crowbar = cab.take(1)
    before = len(cab.agent.counts)
    cab.close_door(wait=False)
    assert cab.wait_state(SessionState.FAULT, 10.0)
    disk.heal()
    assert cab.wait_counted(before, 5.0) and cab.wait_state(SessionState.IDLE, 3.0)
    assert [(k, what) for k, what, _ in _summary(cab.events())] == [
        ("access", "granted"), ("access", "door_opened"), ("access", "door_closed"), ("taken", mine[0].epc),
        ("alarm", "door_forced"), ("access", "door_closed"), ("taken", crowbar[0].epc)]
    forced_taken = cab.events("taken")[1].body
    assert "user" not in forced_taken and forced_taken["session"] == cab.events("alarm")[0].body["session"]
    assert cab.events("taken")[0].body["user"] == "N0001"
    assert set(cab.agent.cabinet.inventory) == set(cab.inside)
    assert cab.log.verify_chain() == []


def test_an_event_recorded_directly_through_the_ports_never_goes_ahead_of_held_ones(cab: SimCabinet) -> None:
    from spd_common.wire import EventKind

    disk = _disk(cab)
    outcomes: list[str] = []

    def remote_note() -> None:  # what a signed remote command records, on the loop thread
        try:
            cab.agent.cabinet.ports.record(EventKind.ACCESS, {"type": "lockdown", "on": False, "dept": "ICU-2"})
            outcomes.append("recorded")
        except LogWriteFailed:
            outcomes.append("refused")

    disk.full = True
    cab.agent.scan_text("DEADBEEF01")  # an unknown badge: its refusal is held
    assert cab.wait_state(SessionState.IDLE, 2.0) and cab.agent.cabinet.unrecorded == 1
    cab.agent.post(remote_note)
    wait_for(lambda: outcomes == ["refused"], timeout=2.0)
    disk.heal()
    cab.agent.post(remote_note)
    wait_for(lambda: outcomes == ["refused", "recorded"], timeout=2.0)
    assert [e.body.get("reason") or e.body.get("type") for e in cab.events()] == ["unknown_badge", "lockdown"]
    assert cab.log.verify_chain() == []


def test_consume_scan_at_the_cabinet_is_refused_while_the_log_fails(cab: SimCabinet) -> None:
    disk = _disk(cab)
    cab.badge("N0001")
    assert cab.open_door()
    (item,) = cab.take(1)
    cab.close_door()
    key = (item.gtin, item.serial)
    assert key in cab.agent.pending_links()
    signals = _signals(cab)
    disk.full = True
    cab.scan_pair(item)
    wait_for(lambda: Signal.REFUSED in signals, timeout=3.0)
    assert cab.wait_state(SessionState.IDLE, 2.0)
    assert cab.events("consume") == []
    assert key in cab.agent.pending_links()  # still waiting for its patient
    disk.heal()
    cab.scan_pair(item)
    consume = cab.wait_event("consume", timeout_s=3.0)
    assert consume is not None and consume.body["udi"] == item.udi
    wait_for(lambda: key not in cab.agent.pending_links() and signals[-1] is Signal.DONE, timeout=2.0)
    assert cab.log.verify_chain() == []


def test_consume_scan_after_the_disk_heals_is_recorded_after_the_held_count(cab: SimCabinet) -> None:
    disk = _disk(cab)
    cab.agent.cabinet.timings.log_retry_s = 60.0  # only the scan itself brings the held count in
    cab.badge("N0001")
    assert cab.open_door()
    (item,) = cab.take(1)
    disk.full = True
    cab.close_door(wait=False)
    assert cab.wait_state(SessionState.FAULT, 10.0)
    disk.heal()
    cab.scan_pair(item)
    consume = cab.wait_event("consume", timeout_s=3.0)
    assert consume is not None
    (taken,) = cab.events("taken")
    assert taken.seq < consume.seq and taken.body["user"] == "N0001"
    assert cab.agent.pending_links() == {}  # linked: no not_linked alarm will follow
    assert cab.wait_state(SessionState.IDLE, 2.0)
    time.sleep(1.2)
    assert cab.events("alarm") == []


def test_alarms_raised_while_the_log_fails_are_recorded_once_after_it_heals(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cab = SimCabinet(tmp_path, items=12, ajar_limit_s=0.4, link_within_s=1.0).start()
    try:
        _alarms_while_the_log_fails(cab, caplog)
    finally:
        cab.stop()


def _alarms_while_the_log_fails(cab: SimCabinet, caplog: pytest.LogCaptureFixture) -> None:
    disk = _disk(cab)
    cab.badge("N0001")
    assert cab.open_door()
    cab.take(1)
    cab.close_door()
    cab.badge("N0001")
    assert cab.open_door()
    disk.full = True
    time.sleep(1.5)  # the door is ajar (0.4 s) and the taken item is not linked (1 s) while nothing can be written
    assert cab.events("alarm") == []
    disk.heal()
    wait_for(lambda: len(cab.events("alarm")) >= 2, timeout=3.0)
    cab.close_door()
    time.sleep(0.3)
    assert sorted(str(e.body["alarm"]) for e in cab.events("alarm")) == ["door_ajar", "not_linked"]
    assert _handler_failures(caplog) == []
    assert cab.log.verify_chain() == []


# ---------------------------------------------------------------- a real full disk


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_cabinet_on_a_disk_that_fills_during_the_count_records_each_item_once_after_it_heals(tmp_path: Path) -> None:
    from hw_sim.powerfs import PowerLossFs

    with PowerLossFs(tmp_path / "disk", tmp_path / "mnt") as fs:
        log = EventLog(fs.mount_dir / "CAB01.db", device="CAB01")
        c = SimCabinet(tmp_path / "cab", items=10, eventlog=log).start()
        try:
            c.badge("N0001")
            assert c.open_door()
            taken = c.take(3)
            fs.disk_full()
            before = len(c.agent.counts)
            c.close_door(wait=False)
            assert c.wait_state(SessionState.FAULT, 10.0)
            assert c.events("taken") == []
            fs.heal()
            assert c.wait_counted(before, 5.0)
            assert sorted(e.body["epc"] for e in c.events("taken")) == sorted(t.epc for t in taken)
            assert [e.body["result"] for e in c.events("access")] == ["granted", "door_opened", "door_closed"]
            assert set(c.agent.cabinet.inventory) == set(c.inside)
            assert log.integrity_check() == "ok" and log.verify_chain() == []
        finally:
            c.stop()
            log.close()


@pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))
def test_inventory_snapshot_survives_a_power_cut_so_items_taken_while_down_are_recorded(tmp_path: Path) -> None:
    """The snapshot's rename is made durable: after a power cut the start-up count compares, it does not re-baseline."""
    from hw_sim.powerfs import PowerLossFs

    with PowerLossFs(tmp_path / "disk", tmp_path / "mnt") as fs:
        data = fs.mount_dir / "data"
        log = EventLog(fs.mount_dir / "CAB01.db", device="CAB01")
        c = SimCabinet(tmp_path / "cab", items=10, eventlog=log, data_dir=data).start()
        c.badge("N0001")
        assert c.open_door()
        first = c.take(1)
        c.close_door()
        c.badge("N0001")
        assert c.open_door()
        second = c.take(2)  # the power fails with the door open: no count for these yet
        c.stop()
        log.close()
        fs.power_cut()
        assert (data / "inventory.json").exists()
        log = EventLog(fs.mount_dir / "CAB01.db", device="CAB01")
        again = SimCabinet(tmp_path / "cab", items=10, eventlog=log, data_dir=data)
        again.reader.clear_tags()
        for it in c.inside.values():
            again.reader.add_tag(it.epc, antennas=(it.antenna,))
        try:
            again.start()
            assert again.wait_state(SessionState.IDLE, 10.0)
            taken = again.events("taken")
            assert sorted(e.body["epc"] for e in taken) == sorted(t.epc for t in first + second)
            assert [e.body.get("user") for e in taken if e.body["epc"] in {t.epc for t in second}] == [None, None]
        finally:
            again.stop()
            log.close()


def test_refused_swipes_past_the_held_limit_are_counted_and_recorded_as_one(
        cab: SimCabinet, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone badging again and again while the disk is full does not grow the cabinet's memory without end."""
    import device.cabinet.session as session

    monkeypatch.setattr(session, "HELD_LIMIT", 5)
    disk = _disk(cab)
    disk.full = True
    for i in range(17):
        cab.agent.scan_text(f"STRANGER{i:02d}")
    wait_for(lambda: cab.agent.cabinet.unrecorded == 5 + 1, timeout=3.0)
    assert len(cab.agent.cabinet._unrecorded) == 5
    assert any("only counted" in r.getMessage() for r in caplog.records)
    disk.heal()
    wait_for(lambda: cab.agent.cabinet.unrecorded == 0, timeout=3.0)
    refusals = cab.events("access")
    assert [e.body["badge"] for e in refusals[:5]] == [f"STRANGER{i:02d}" for i in range(5)]
    summary = refusals[5]
    assert len(refusals) == 6 and summary.body["reason"] == "not_held"
    assert summary.body["refusals"] == {"unknown_badge": 12}
    assert summary.body["first_ms"] <= summary.body["last_ms"] == summary.ts_ms
    assert _handler_failures(caplog) == []
    assert cab.log.verify_chain() == []
