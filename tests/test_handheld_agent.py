"""The handheld agent on a pty scanner and simulated pins: words on the screen, sounds on the buzzer, events in the log.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from device.config import HandheldConfig
from device.eventlog import EventLog
from device.handheld_runtime.agent import HandheldAgent
from device.handheld_runtime.station import Verdict
from hw_sim.pins import SimPinFactory
from hw_sim.scanner import SimSerialScanner
from hw_sim.udi_gen import make_udi
from spd_common.allowlist import Badge, Role, write_allowlist

BUZZER, LED = 22, 23


def _wait(cond: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    assert cond(), "timed out"  # type: ignore[operator]


def _highs(levels: list[bool]) -> int:
    return sum(1 for level in levels if level)


def test_scans_are_told_in_words_and_sounds_and_a_garbled_line_is_refused_too(tmp_path: Path) -> None:
    write_allowlist(tmp_path / "allow.json", [Badge("04A1B2C3", "N0001", Role.NURSE)])
    with SimSerialScanner(name="ttyAgent") as scanner:
        cfg = HandheldConfig(dept="ICU-2", allowlist_file=tmp_path / "allow.json", pin_factory="sim",
                             buzzer_pin=BUZZER, led_pin=LED, scanner_ports=(scanner.url,))
        log = EventLog(tmp_path / "events.db", device="HH01")
        factory = SimPinFactory()
        agent = HandheldAgent(cfg, eventlog=log, pin_factory=factory)
        told: list[Verdict] = []
        agent.add_verdict_listener(told.append)
        agent.start()
        try:
            _wait(lambda: agent.scanner_states.get(scanner.url) == "online")
            t0 = factory.clock.now()
            scanner.scan("]C004A1B2C3")
            _wait(lambda: len(told) == 1)
            _wait(lambda: not factory.pin(BUZZER).level)
            assert told[0].title == "HELLO N0001" and _highs(factory.pin(BUZZER).levels_since(t0)) == 1
            t1 = factory.clock.now()
            scanner.write_raw(b"no symbology identifier\r")  # a scanner misconfigured, or line noise
            _wait(lambda: len(told) == 2)
            assert told[1].title == "NOT READ" and "missing_symbology_id" in told[1].message
            _wait(lambda: _highs(factory.pin(BUZZER).levels_since(t1)) == 3, 3)  # the refusal pattern: three beeps
            scanner.scan("]C0ZY0000012345")
            expiry = dt.date.today() + dt.timedelta(days=300)
            scanner.scan(make_udi(gtin="06954321754613", lot="L1", serial="S1", expiry=expiry, symbology="]d2"))
            _wait(lambda: len(told) == 4)
            assert [v.title for v in told[2:]] == ["PATIENT", "CHARGED"]
            assert agent.view.patient is not None and agent.view.user == "N0001"
        finally:
            agent.stop()
        kinds = [(e.kind, e.body.get("reason")) for e in log.events()]
        assert kinds == [("access", None), ("refused_scan", "unreadable"), ("consume", None)]
        log.close()


def test_a_usb_hid_wedge_scanner_drives_the_station_like_a_serial_one(tmp_path: Path) -> None:
    from hw_sim.scanner import SimWedgeSource

    write_allowlist(tmp_path / "allow.json", [Badge("04A1B2C3", "N0001", Role.NURSE)])
    wedge = SimWedgeSource(name="sim-hid")
    cfg = HandheldConfig(dept="ICU-2", allowlist_file=tmp_path / "allow.json",
                         wedge_devices=("/dev/input/spd-scanner-hid",))
    log = EventLog(tmp_path / "events.db", device="HH01")
    agent = HandheldAgent(cfg, eventlog=log, key_sources={"/dev/input/spd-scanner-hid": wedge})
    told: list[Verdict] = []
    agent.add_verdict_listener(told.append)
    agent.start()
    try:
        _wait(lambda: agent.scanner_states.get("/dev/input/spd-scanner-hid") == "online")
        assert wedge.grabbed  # its keystrokes never reach the console
        wedge.type_scan("]C004A1B2C3")
        wedge.type_scan("]C0ZY0000012345")
        expiry = dt.date.today() + dt.timedelta(days=300)
        wedge.type_scan(make_udi(gtin="06954321754613", lot="L1", serial="S1", expiry=expiry, symbology="]d2"))
        _wait(lambda: len(told) == 3)
        assert [v.title for v in told] == ["HELLO N0001", "PATIENT", "CHARGED"]
    finally:
        agent.stop()
        log.close()
