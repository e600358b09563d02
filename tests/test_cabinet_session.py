"""The real cabinet agent against hw_sim: badges, PINs, unlocking, forced and ajar doors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device.cabinet.session import SessionState
from hw_sim.cabinet import LOCK_PIN, SimCabinet


@pytest.fixture
def cab(tmp_path: Path) -> Iterator[SimCabinet]:
    c = SimCabinet(tmp_path, items=12, ajar_limit_s=0.4).start()
    yield c
    c.stop()


def _access(c: SimCabinet) -> list[dict[str, object]]:
    return [e.body for e in c.events("access")]


def test_authorised_badge_unlocks_and_the_session_is_recorded(cab: SimCabinet) -> None:
    cab.badge("N0001")
    assert cab.open_door() is True
    cab.close_door()
    bodies = _access(cab)
    assert [b["result"] for b in bodies] == ["granted", "door_opened", "door_closed"]
    assert {b["user"] for b in bodies} == {"N0001"}
    assert len({b["session"] for b in bodies}) == 1
    assert bodies[0]["role"] == "nurse"
    assert cab.events("taken", "returned", "alarm") == []
    assert cab.agent.state is SessionState.IDLE
    assert cab.door.is_released is False


def test_unknown_badge_is_refused_without_unlocking(cab: SimCabinet) -> None:
    cab.agent.scan_text("DEADBEEF01")
    assert cab.wait_event("access") is not None
    assert cab.door.hand.try_open() is False
    assert [b for b in _access(cab)] == [
        {"result": "refused", "reason": "unknown_badge", "badge": "DEADBEEF01", "dept": "ICU-2"}]
    assert cab.factory.pin(LOCK_PIN).levels_since(0.0) == [False]  # the relay never moved
    assert cab.agent.state is SessionState.IDLE


def test_pin_badge_needs_the_right_pin(cab: SimCabinet) -> None:
    cab.badge("N0002", pin=False)
    assert cab.wait_state(SessionState.AWAIT_PIN)
    cab.agent.enter_pin("0000")
    cab.agent.enter_pin("4321")
    assert cab.open_door() is True
    cab.close_door()
    results = [(b["result"], b.get("reason")) for b in _access(cab)]
    assert results == [("refused", "bad_pin"), ("granted", None), ("door_opened", None), ("door_closed", None)]


def test_three_wrong_pins_lock_the_badge_out(cab: SimCabinet) -> None:
    cab.badge("N0002", pin=False)
    for _ in range(3):
        cab.agent.enter_pin("1111")
    assert cab.wait_state(SessionState.LOCKED_OUT)
    assert [b.get("locked_out") for b in _access(cab)] == [False, False, True]
    assert cab.door.hand.try_open() is False


def test_door_forced_open_raises_alarm_and_the_count_is_unattributed(cab: SimCabinet) -> None:
    cab.door.force_open()
    assert cab.wait_event("alarm") is not None
    taken = cab.take(1)
    cab.close_door()
    alarm = cab.events("alarm")[0].body
    assert (alarm["alarm"], alarm["door"], alarm["state"]) == ("door_forced", "door", "idle")
    (ev,) = cab.events("taken")
    assert ev.body["epc"] == taken[0].epc
    assert "user" not in ev.body and ev.body["session"] == alarm["session"]


def test_door_left_open_raises_ajar_alarm(cab: SimCabinet) -> None:
    cab.badge("N0001")
    assert cab.open_door()
    ev = cab.wait_event("alarm", timeout_s=3.0)
    assert ev is not None
    assert (ev.body["alarm"], ev.body["door"], ev.body["user"]) == ("door_ajar", "door", "N0001")
    assert float(ev.body["open_s"]) >= 0.4
    cab.close_door()
    assert [e.body["alarm"] for e in cab.events("alarm")] == ["door_ajar"]


def test_unlock_expires_when_nobody_opens(tmp_path: Path) -> None:
    c = SimCabinet(tmp_path, items=4, unlock_s=0.2).start()
    try:
        c.badge("N0001")
        ev = c.wait_event("access", lambda e: e.body["result"] == "expired", timeout_s=3.0)
        assert ev is not None and ev.body["reason"] == "door_not_opened"
        assert c.door.hand.try_open() is False
        assert c.agent.state is SessionState.IDLE
    finally:
        c.stop()
