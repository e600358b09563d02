"""The handheld's screen content: what a nurse reads at arm's length, in 40 columns or more."""

from __future__ import annotations

import time

from device.handheld_runtime.screen import Frame, Link, choose_screen, frame_lines
from device.handheld_runtime.station import Mode, Patient, StationView, Tone, Verdict


def _frame(view: StationView, *, connected: bool = True, backlog: int = 0) -> Frame:
    return Frame("HH01", "ICU-2", view, Link(connected, backlog), {"/dev/spd-scanner0": "online"})


def test_logged_out_the_screen_asks_for_a_badge_and_shows_the_link() -> None:
    lines = frame_lines(_frame(StationView(), connected=False, backlog=12), 40)
    text = "\n".join(t for _, t in lines)
    assert "OFFLINE  TO SEND 12" in text and "SCAN YOUR BADGE" in text
    assert all(len(t) <= 40 for _, t in lines)


def test_the_last_verdict_is_a_coloured_band_with_its_sentence_then_the_ones_before() -> None:
    now = time.monotonic()
    refused = Verdict(time.time(), False, "EXPIRED", "Stent expired on 2026-01-01. Do not use; return it to the SPD.",
                      Tone.REFUSED, "expired", 7)
    charged = Verdict(time.time(), True, "CHARGED", "Stent charged.", Tone.OK, "", 6)
    view = StationView(user="N0001", patient=Patient("ZY0000012345", "ZS", "ICU2", "", now + 125),
                       mode=Mode.CHARGE, verdicts=(refused, charged))
    lines = frame_lines(_frame(view), 40, now=now)
    assert ("plain", "PATIENT ZY0000012345  ZS  ICU2      2:05") in lines
    styles = [s for s, t in lines if "EXPIRED" in t]
    assert styles == ["refused"]
    assert any("Do not use" in t for _, t in lines)
    assert any(t.endswith("ok CHARGED") for _, t in lines)


def test_no_terminal_means_headless() -> None:
    assert choose_screen("off") == "headless"
    assert choose_screen("auto") == "headless"  # pytest's stdin is not a terminal
