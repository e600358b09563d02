"""The real ``spd-device run`` handheld process, as systemd starts it, with a pty scanner, sim pins, Mosquitto and a
gateway: a nurse's round on its screen (tmux), and 1,000 scans taken offline then delivered once each."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from device.eventlog import EventLog
from hw_sim.harness import SpineHarness
from hw_sim.nurse import (
    CODE128,
    NURSE_BADGE,
    PIN_NURSE_BADGE,
    PIN_NURSE_PIN,
    HandheldProcess,
    item_udi,
)

pytestmark = pytest.mark.slow

PATIENT = f"{CODE128}ZY0000012345"


def _events(db: Path, device: str) -> list[tuple[str, dict[str, object]]]:
    log = EventLog(db, device=device)
    try:
        return [(e.kind, e.body) for e in log.events(limit=100000)]
    finally:
        log.close()


def _gateway_rows(db: Path, device: str) -> tuple[int, int, int]:
    gw = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        events = gw.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM events WHERE device = ?", (device,)).fetchone()
        charges = gw.execute("SELECT COUNT(DISTINCT item_key) FROM charges WHERE device = ?", (device,)).fetchone()
        return int(events[0]), int(events[1]), int(charges[0])
    finally:
        gw.close()


def _drained(db: Path, device: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = EventLog(db, device=device)
        try:
            if log.backlog() == 0:
                return True
        finally:
            log.close()
        time.sleep(0.1)
    return False


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is in the Makefile's Debian packages")
def test_a_nurse_round_on_the_handheld_screen_reaches_the_gateway_once(tmp_path: Path) -> None:
    h = SpineHarness(tmp_path / "spine").start()
    hh = HandheldProcess(tmp_path / "hh", device="HH01", broker_port=h.broker.port, tmux=True)
    h.device_db_paths["HH01"] = hh.db_path
    try:
        hh.start()
        # log in: badge, then the PIN typed on the console keypad
        hh.scan(CODE128 + PIN_NURSE_BADGE)
        hh.wait_screen("PIN for N0002")
        hh.keys(*PIN_NURSE_PIN, "Enter")
        hh.wait_screen("NURSE N0002")
        # an item before the wristband is refused: no patient
        hh.scan(item_udi("HH01", 9))
        hh.wait_screen("NO PATIENT")
        hh.scan(PATIENT)
        hh.wait_screen("PATIENT ZY0000012345")
        for n in (1, 2, 3):
            hh.scan(item_udi("HH01", n))
            hh.wait_screen(f"serial HH01S0000000{n}")
        hh.scan(item_udi("HH01", 4, expired=True))
        screen = hh.wait_screen("EXPIRED")
        assert "Do not use" in screen
        # the first item comes back unused: return mode from the console (F2), then charge mode again (F1)
        hh.keys("F2")
        hh.wait_screen("RETURN MODE")
        hh.scan(item_udi("HH01", 1))
        hh.wait_screen("RETURNED")
        hh.keys("F1")
        hh.wait_screen("CHARGE MODE")
        hh.wait_screen("LINK OK")
        hh.keys("F10")
        hh.wait_screen("SCAN YOUR BADGE")
        hh.wait_screen("ALL SENT", timeout_s=20)
    finally:
        hh.stop()
    try:
        t = h.wait_settled(timeout_s=60)
    finally:
        h.close()
    kinds = [(k, b.get("result") if k == "access" else b.get("reason") if k == "refused_scan" else None)
             for k, b in _events(hh.db_path, "HH01")]
    assert kinds == [("access", "granted"), ("refused_scan", "no_patient"), ("consume", None), ("consume", None),
                     ("consume", None), ("refused_scan", "expired"), ("return_unused", None),
                     ("access", "logged_out")]
    assert (t.scans, t.stored, t.charged, t.returns, t.refused_at_scan) == (3, 3, 3, 1, 2)
    assert (t.lost, t.duplicates, t.invented, t.chain_breaks) == (0, 0, 0, 0)
    assert _gateway_rows(h.gateway_db, "HH01")[:2] == (8, 8)  # every event stored once


def test_a_thousand_scans_taken_offline_are_each_delivered_once_when_the_broker_returns(tmp_path: Path) -> None:
    h = SpineHarness(tmp_path / "spine").start()
    h.broker.kill()  # the ward's network is down from the start
    hh = HandheldProcess(tmp_path / "hh", device="HH02", broker_port=h.broker.port)
    h.device_db_paths["HH02"] = hh.db_path
    try:
        hh.start()
        hh.scan(CODE128 + NURSE_BADGE)
        assert "HELLO N0001" in hh.wait_line(" verdict ")
        hh.scan(PATIENT)
        assert " verdict PATIENT" in hh.wait_line(" verdict ")
        for start in range(1, 1001, 50):  # a nurse scans steadily; the station keeps up
            for n in range(start, start + 50):
                hh.scan(item_udi("HH02", n))
            for line in hh.verdicts(50, timeout_s=30):
                assert " verdict CHARGED " in line, line
        log = EventLog(hh.db_path, device="HH02")
        try:
            assert (log.last_seq, log.backlog()) == (1001, 1001)  # the log-in and 1,000 charges, none sent
        finally:
            log.close()
        h.broker.start()
        hh.wait_line(r"link online backlog=\d+", 30)
        t = h.wait_settled(timeout_s=180)
        hh.scan(CODE128 + "SPD-LOGOUT")
        hh.wait_line(" verdict LOGGED OUT")
        assert _drained(hh.db_path, "HH02", 30)
        assert hh.stop() == 0
    finally:
        hh.stop()
        h.close()
    assert (t.scans, t.stored, t.charged) == (1000, 1000, 1000)
    assert (t.lost, t.duplicates, t.invented, t.chain_breaks) == (0, 0, 0, 0)
    events, distinct, items = _gateway_rows(h.gateway_db, "HH02")
    assert (events, distinct, items) == (1002, 1002, 1000)
    log = EventLog(hh.db_path, device="HH02")
    try:
        assert (log.last_seq, log.acked_seq, log.backlog()) == (1002, 1002, 0)
    finally:
        log.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is in the Makefile's Debian packages")
def test_a_terminal_curses_cannot_drive_leaves_the_station_working_headless(tmp_path: Path) -> None:
    hh = HandheldProcess(tmp_path / "hh", device="HH03", broker_port=1, tmux=True, term="no-such-terminal")
    try:
        hh.start()
        hh.scan(CODE128 + NURSE_BADGE)
        hh.wait_screen("HH03 verdict HELLO N0001")
    finally:
        hh.stop()
    assert "console screen unavailable" in hh.log_text()
