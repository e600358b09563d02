"""The handheld's screens as a nurse sees them, captured from the real ``spd-device run`` in tmux (docs/handheld.md).

``python -m hw_sim.handheld_screens`` starts the spine (Mosquitto, simulated HIS, gateway) and one handheld
in a 50x16 tmux window — the size of a 7" 800x480 panel with a 16x32 console font — walks a nurse's round,
and prints each screen under a heading, ready to paste.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from hw_sim.harness import SpineHarness
from hw_sim.nurse import CODE128, PIN_NURSE_BADGE, PIN_NURSE_PIN, HandheldProcess, item_udi


def _show(title: str, screen: str) -> None:
    lines = [line.rstrip() for line in screen.rstrip("\n").split("\n")]
    print(f"### {title}\n\n```\n" + "\n".join(lines) + "\n```\n", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="spd-hh-screens-") as tmp:
        h = SpineHarness(Path(tmp) / "spine").start()
        hh = HandheldProcess(Path(tmp) / "hh", device="HH-ICU2-01", broker_port=h.broker.port, tmux=True)
        try:
            hh.start()
            _show("Logged out", hh.wait_screen("LINK OK"))
            hh.scan(CODE128 + PIN_NURSE_BADGE)
            hh.wait_screen("PIN for N0002")
            hh.keys(*PIN_NURSE_PIN[:3])
            _show("Badge scanned, PIN asked (typed on the keypad, shown as stars)", hh.wait_screen("***"))
            hh.keys(PIN_NURSE_PIN[3], "Enter")
            hh.wait_screen("NURSE N0002")
            hh.scan(f"{CODE128}ZY0000012345")
            hh.wait_screen("PATIENT ZY0000012345")
            for n in (1, 2):
                hh.scan(item_udi("HH-ICU2-01", n))
                hh.wait_screen(f"serial HH-ICU2-01S0000000{n}")
            _show("Patient in context, an item charged", hh.wait_screen("ALL SENT"))
            hh.scan(item_udi("HH-ICU2-01", 3, expired=True))
            _show("An expired item refused", hh.wait_screen("EXPIRED"))
            hh.keys("F2")
            hh.wait_screen("RETURN MODE")
            hh.scan(item_udi("HH-ICU2-01", 1))
            _show("Return mode: an item back unused", hh.wait_screen("RETURNED"))
            hh.keys("F1")
            hh.wait_screen("CHARGE MODE")
            h.broker.kill()
            hh.wait_screen("OFFLINE", timeout_s=30)
            hh.scan(f"{CODE128}ZY0000012345")
            for n in (4, 5, 6):
                hh.scan(item_udi("HH-ICU2-01", n))
            time.sleep(1.0)  # the backlog figure is refreshed every half second
            _show("Network down: scans go on, the backlog waits on the device", hh.wait_screen("TO SEND 3"))
        finally:
            hh.stop()
            h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
