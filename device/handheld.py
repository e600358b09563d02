"""The handheld scan: a patient wristband plus an item's UDI becomes one durable event.

The nurse hears the success beep only after :meth:`Handheld.scan_pair` has
returned an accepted outcome, which happens only after the event is committed
to the log. A code that cannot be read is refused with a reason, and the
refusal itself is recorded (nothing the nurse did is lost).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from device.eventlog import EventLog
from device.udi import parse_udi
from device.udi.wristband import WristbandFormat, parse_wristband
from device.wire import Event, EventKind

log = logging.getLogger(__name__)


class ScanVerdict(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """What the nurse is told: accepted (green, beep) or refused with a reason."""

    verdict: ScanVerdict
    event: Event
    reason: str = ""
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.verdict is ScanVerdict.ACCEPTED


class Handheld:
    """A scanner bound to one operator (工号) in one department."""

    def __init__(
        self,
        eventlog: EventLog,
        *,
        operator: str,
        dept: str,
        wristband_format: WristbandFormat | None = None,
        on_committed: Callable[[Event], None] | None = None,
    ) -> None:
        self.log = eventlog
        self.operator = operator
        self.dept = dept
        self.wristband_format = wristband_format or WristbandFormat.default()
        self._on_committed = on_committed

    def scan_pair(self, wristband_text: str, udi_text: str) -> ScanOutcome:
        """Record a wristband + item scan; returns only after the event is durable."""
        try:
            band = parse_wristband(wristband_text, self.wristband_format)
        except ValueError as err:
            return self._refuse("bad_wristband", err, wristband_text, udi_text)
        try:
            parse_udi(udi_text)
        except ValueError as err:
            return self._refuse("bad_udi", err, wristband_text, udi_text)
        ev = self.log.append(
            EventKind.CONSUME.value,
            {"admission": band.admission, "udi": udi_text, "operator": self.operator, "dept": self.dept},
        )
        self._committed(ev)
        return ScanOutcome(ScanVerdict.ACCEPTED, ev)

    def _refuse(self, kind: str, err: ValueError, wristband_text: str, udi_text: str) -> ScanOutcome:
        reason = str(getattr(err, "reason", kind))
        ev = self.log.append(
            EventKind.REFUSED_SCAN.value,
            {"reason": reason, "detail": str(err), "wristband": wristband_text[:200], "udi": udi_text[:200],
             "operator": self.operator, "dept": self.dept},
        )
        log.info("scan refused (seq %d): %s", ev.seq, reason)
        self._committed(ev)
        return ScanOutcome(ScanVerdict.REFUSED, ev, reason, str(err))

    def _committed(self, ev: Event) -> None:
        if self._on_committed is not None:
            try:
                self._on_committed(ev)
            except Exception:
                log.exception("on_committed callback failed")
