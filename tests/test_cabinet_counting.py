"""The real cabinet agent against hw_sim: taken/returned/restocked events, linking, reader faults, line noise."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from device.cabinet.session import SessionState
from hw_sim.cabinet import SimCabinet, SimTaggedItem, make_items
from hw_sim.udi_gen import make_udi


def _items(c: SimCabinet, kind: str) -> list[tuple[str, str | None, str]]:
    return sorted((str(e.body["epc"]), e.body.get("user"), str(e.body["role"])) for e in c.events(kind))


def test_take_three_then_return_one_gives_exact_events(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=20).start()
    try:
        c.badge("N0001")
        assert c.open_door()
        taken = c.take(3)
        c.close_door()
        c.badge("N0002")
        assert c.open_door()
        c.put_back(taken[:1])
        c.close_door()
        assert _items(c, "taken") == sorted((t.epc, "N0001", "nurse") for t in taken)
        assert _items(c, "returned") == [(taken[0].epc, "N0002", "nurse")]
        ev = c.events("taken")[0]
        item = next(t for t in taken if t.epc == ev.body["epc"])
        assert (ev.body["gtin"], ev.body["serial"]) == (item.gtin, item.serial)
        sessions = {e.body["session"] for e in c.events("taken")} | {e.body["session"] for e in c.events("returned")}
        assert len(sessions) == 2
        assert set(c.agent.cabinet.inventory) == set(c.inside)
    finally:
        c.stop()


def test_taking_and_putting_back_in_one_session_records_nothing_for_that_item(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=10).start()
    try:
        c.badge("N0001")
        assert c.open_door()
        taken = c.take(2)
        c.put_back(taken[:1])
        c.close_door()
        assert _items(c, "taken") == [(taken[1].epc, "N0001", "nurse")]
        assert c.events("returned") == []
    finally:
        c.stop()


def test_restocker_session_records_restocked_and_taken(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=8).start()
    try:
        new = make_items(3, first_serial=5000001, antennas=(1, 2, 3, 4), seed=9)
        c.badge("R0001")
        assert c.open_door()
        c.add_new(new)
        removed = c.take(1)
        c.close_door()
        assert _items(c, "restocked") == sorted((i.epc, "R0001", "restocker") for i in new)
        assert _items(c, "taken") == [(removed[0].epc, "R0001", "restocker")]
        assert c.agent.pending_links() == {}  # a restocker's removal is not waiting for a patient
    finally:
        c.stop()


def test_taken_item_not_linked_in_time_raises_alarm_and_linked_one_does_not(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=10, link_within_s=1.0).start()
    try:
        c.badge("N0001")
        assert c.open_door()
        a, b = c.take(2)
        c.close_door()
        c.scan_pair(a)
        consume = c.wait_event("consume")
        assert consume is not None and consume.body["udi"] == a.udi and consume.body["operator"] == "N0001"
        alarm = c.wait_event("alarm", timeout_s=3.0)
        assert alarm is not None
        assert (alarm.body["alarm"], alarm.body["gtin"], alarm.body["serial"]) == ("not_linked", b.gtin, b.serial)
        assert alarm.body["user"] == "N0001"
        assert [e.body["alarm"] for e in c.events("alarm")] == ["not_linked"]
    finally:
        c.stop()


def test_by_default_the_cabinet_leaves_not_linked_to_the_gateway(tmp_path: Path) -> None:
    """A handheld in the ward may charge what was taken here: only the gateway sees that (gateway/linking.py)."""
    c = SimCabinet(tmp_path, items=10).start()
    try:
        c.badge("N0001")
        assert c.open_door()
        c.take(1)
        c.close_door()
        assert c.wait_event("taken") is not None
        assert c.agent.pending_links() == {}  # no local deadline: no false alarm for a charge made elsewhere
    finally:
        c.stop()


def test_unknown_tag_and_expired_item_raise_alarms(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=6).start()
    try:
        old = make_items(1, first_serial=7000001, antennas=(2,), seed=4)[0]
        past = dt.date.today() - dt.timedelta(days=3)
        expired = SimTaggedItem(old.gtin, old.serial, old.lot, past, old.epc,
                                make_udi(gtin=old.gtin, lot=old.lot, serial=old.serial, expiry=past), 2)
        stranger = SimTaggedItem("", "", "", past, "E2801160600002054E2E3C8A", "", 1)
        c.badge("R0001")
        assert c.open_door()
        c.agent.scan_text(expired.udi)  # the restocker scans the label: its expiry becomes known
        c.add_new([expired, stranger])
        c.close_door()
        alarms = sorted((e.body["alarm"], e.body.get("epc") or e.body.get("serial")) for e in c.events("alarm"))
        assert alarms == [("expired_in_stock", expired.serial), ("unknown_tag", stranger.epc)]
        assert _items(c, "restocked") == [(expired.epc, "R0001", "restocker")]
    finally:
        c.stop()


def test_reader_unplugged_and_back_raises_both_alarms_and_the_count_completes(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=12, poll_s=0.1).start()
    try:
        c.badge("N0001")
        assert c.open_door()
        taken = c.take(2)
        c.reader.unplug()
        assert c.wait_event("alarm", lambda e: e.body["alarm"] == "reader_offline", timeout_s=3.0) is not None
        before = len(c.agent.counts)
        c.close_door(wait=False)
        assert c.wait_state(SessionState.FAULT, 3.0)
        c.reader.replug()
        assert c.wait_counted(before, 10.0)
        assert [e.body["alarm"] for e in c.events("alarm")] == ["reader_offline", "reader_online"]
        assert _items(c, "taken") == sorted((t.epc, "N0001", "nurse") for t in taken)
    finally:
        c.stop()


def test_garbage_and_corrupted_frames_on_the_serial_line_do_not_change_the_count(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=24, reader_timeout_s=0.15).start()
    try:
        c.reader.garbage_rate = 0.3
        c.reader.corrupt_rate = 0.03
        c.badge("N0001")
        assert c.open_door()
        taken = c.take(3)
        c.close_door()
        assert _items(c, "taken") == sorted((t.epc, "N0001", "nurse") for t in taken)
        assert c.events("returned", "restocked") == []
        assert c.agent.reader.stats.garbage_bytes > 0
    finally:
        c.stop()


def test_restart_keeps_the_inventory_and_records_changes_made_while_down(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=10).start()
    c.badge("N0001")
    assert c.open_door()
    c.take(1)
    c.close_door()
    c.agent.stop()
    gone = sorted(c.inside.values(), key=lambda i: i.epc)[0]
    c.reader.remove_tag(gone.epc)  # taken while the controller was off
    from device.cabinet.agent import CabinetAgent
    from device.cabinet.config import cabinet_config

    c.agent = CabinetAgent(cabinet_config(c.config), eventlog=c.log, data_dir=c.config.data_dir,
                           pin_factory=c.factory)
    try:
        c.agent.start()
        ev = c.wait_event("taken", lambda e: e.body["epc"] == gone.epc, timeout_s=5.0)
        assert ev is not None and "user" not in ev.body
        assert len(c.events("taken")) == 2
        assert c.events("returned") == []
    finally:
        c.stop()


def test_a_count_after_the_door_was_held_open_confirms_with_session_rounds(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=40).start()
    try:
        c.badge("N0001")
        assert c.open_door()
        taken = c.take(2)
        time.sleep(5.2)  # the reader idles longer than the S1 persistence ceiling: every flag is back to A
        before = dict(c.reader.stats.rounds_by_command)
        c.close_door()
        after = c.reader.stats.rounds_by_command
        assert after.get(0x8B, 0) - before.get(0x8B, 0) >= 4  # round 1 and the confirming rounds
        assert after.get(0x89, 0) - before.get(0x89, 0) >= 1  # the deciding round
        assert _items(c, "taken") == sorted((t.epc, "N0001", "nurse") for t in taken)
        assert c.events("returned") == []
    finally:
        c.stop()


def test_one_lost_answer_to_the_idle_poll_is_not_an_offline_reader(tmp_path: Path) -> None:
    from device.hal.rfid.reader import ReaderDisconnected, ReaderTimeout

    c = SimCabinet(tmp_path, items=4).start()
    try:
        answers: list[Exception | None] = []
        real = c.agent.reader.firmware_version

        def flaky() -> object:
            outcome = answers.pop(0) if answers else None
            if outcome is not None:
                raise outcome
            return real()

        c.agent.reader.firmware_version = flaky  # type: ignore[method-assign]
        answers[:] = [ReaderTimeout("garbled"), ReaderTimeout("garbled")]
        assert c.agent._poll_reader() is None  # the third try answers: online, no alarm
        answers[:] = [ReaderTimeout("garbled")] * 3
        assert c.agent._poll_reader() == "garbled"  # three in a row: offline
        answers[:] = [ReaderDisconnected("port gone")]
        assert c.agent._poll_reader() == "port gone"  # a vanished port is not retried
        assert answers == []
    finally:
        c.stop()


def test_a_count_that_loses_one_answer_is_counted_again_without_an_offline_alarm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import device.cabinet.agent as cabinet_agent
    from device.hal.rfid.reader import ReaderTimeout

    real = cabinet_agent.count_stable
    failures = [ReaderTimeout("no answer to command 0x74 within 0.3 s")]

    def garbled_once(*args: object, **kw: object) -> object:
        if failures:
            raise failures.pop()
        return real(*args, **kw)  # type: ignore[arg-type]

    c = SimCabinet(tmp_path, items=12).start()
    try:
        monkeypatch.setattr(cabinet_agent, "count_stable", garbled_once)
        c.badge("N0001")
        assert c.open_door()
        taken = c.take(1)
        c.close_door()
        assert failures == []
        assert _items(c, "taken") == [(taken[0].epc, "N0001", "nurse")]
        assert c.events("alarm") == []
    finally:
        c.stop()


def test_the_not_linked_deadline_rebuilt_after_a_restart_is_clamped_against_clock_steps() -> None:
    from device.cabinet.agent import link_deadline

    taken_ms, within = 1_700_000_000_000, 1800.0
    wall = taken_ms / 1000
    assert link_deadline(taken_ms, within, wall=wall + 600, mono=50.0) == 50.0 + 1200  # 10 min gone, 20 left
    assert link_deadline(taken_ms, within, wall=wall - 86400, mono=50.0) == 50.0 + within  # clock set back a day
    assert link_deadline(taken_ms, within, wall=wall + 86400, mono=50.0) == 50.0  # clock set forward: due now
