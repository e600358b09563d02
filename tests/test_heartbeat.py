"""The heartbeat registry and the watchdog built on it: pings stop while a loop is silent, and it says which."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spd_common.heartbeat import HeartbeatRegistry
from spd_common.sdnotify import Watchdog

from watchdog_helpers import FakeClock, NotifySocket


def test_a_loop_is_silent_past_its_deadline_and_not_before() -> None:
    clock = FakeClock()
    reg = HeartbeatRegistry(clock=clock)
    a = reg.register("a", deadline_s=10)
    reg.register("b", deadline_s=30)
    clock.advance(9)
    assert reg.silent() == []
    clock.advance(2)
    [s] = reg.silent()
    assert (s.name, s.deadline_s) == ("a", 10) and 11 <= s.silent_s < 12
    assert str(s).startswith("a silent for 11 s (deadline 10 s)")
    a()
    assert reg.silent() == []
    clock.advance(31)
    assert [s.name for s in reg.silent()] == ["b", "a"]  # longest silent first


def test_blocking_declares_a_longer_deadline_for_one_call() -> None:
    clock = FakeClock()
    reg = HeartbeatRegistry(clock=clock)
    hb = reg.register("his-sender-0", deadline_s=10)
    with hb.blocking(100):
        clock.advance(99)
        assert reg.silent() == []
        clock.advance(2)
        assert [s.deadline_s for s in reg.silent()] == [100]
    assert reg.silent() == []  # leaving the call beats
    clock.advance(11)
    assert [s.deadline_s for s in reg.silent()] == [10]


def test_a_retired_or_unwatched_loop_is_not_watched() -> None:
    clock = FakeClock()
    reg = HeartbeatRegistry(clock=clock)
    hb = reg.heartbeat("charging", deadline_s=1)
    clock.advance(5)
    assert reg.silent() == [] and reg.names() == []
    hb.watch()
    assert reg.names() == ["charging"] and reg.silent() == []  # watching counts as a beat
    hb.retire()
    clock.advance(5)
    assert reg.silent() == []


def test_the_watchdog_stops_pinging_names_the_loop_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    clock = FakeClock()
    reg = HeartbeatRegistry(clock=clock)
    lane = reg.register("his-sender-2", deadline_s=60)
    wd = Watchdog(lambda: True, interval_s=0.02, heartbeats=reg).start()
    try:
        notify.wait_for(lambda m: m == "WATCHDOG=1")
        with caplog.at_level(logging.ERROR, logger="spd_common.sdnotify"):
            clock.advance(61)
            status = notify.wait_for(lambda m: m.startswith("STATUS=") and "loop his-sender-2 silent for" in m)
            assert status.endswith("s (deadline 60 s)")
            checks, pings = wd.checks, wd.pings
            assert wd.wait_checks(checks + 3, 10) and wd.pings == pings
        assert any("his-sender-2 silent for" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
        lane()  # the loop comes back: pings resume
        notify.seen.clear()
        notify.wait_for(lambda m: m == "STATUS=running")
        notify.wait_for(lambda m: m == "WATCHDOG=1")
    finally:
        wd.stop()
        notify.close()


def test_the_health_check_still_gates_the_pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    healthy = [True]
    wd = Watchdog(lambda: healthy[0], interval_s=0.02, heartbeats=HeartbeatRegistry()).start()
    try:
        notify.wait_for(lambda m: m == "WATCHDOG=1")
        healthy[0] = False
        notify.wait_for(lambda m: m == "STATUS=not pinging the watchdog: health check failed")
        pings = wd.pings
        assert wd.wait_checks(wd.checks + 3, 10) and wd.pings == pings
    finally:
        wd.stop()
        notify.close()


def test_without_watchdogsec_the_heartbeats_are_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Watchdog(lambda: True).interval_s is None  # nothing to watch: no thread
    assert Watchdog(lambda: True, heartbeats=HeartbeatRegistry()).interval_s == 10.0
