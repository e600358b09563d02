"""The handheld scan: a patient wristband plus an item's UDI becomes one durable event.

The nurse hears the success beep only after :meth:`Handheld.scan_pair` has
returned an accepted outcome, which happens only after the event is committed
to the log. A code that cannot be read is refused with a reason, and the
refusal itself is recorded (nothing the nurse did is lost). With a
:class:`~device.scan_policy.ScanPolicy`, a readable pair is also checked
against the cached catalog and lists (expired, recalled, re-used serial...)
before it is consumed; a refusal is committed as a ``refused_scan`` event and
nothing is charged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from device.eventlog import EventLog, LogWriteFailed
from device.udi import Udi, parse_udi
from device.udi.wristband import WristbandFormat, parse_wristband
from spd_common.wire import Event, EventKind

if TYPE_CHECKING:
    from device.scan_policy import ScanPolicy

log = logging.getLogger(__name__)


class ScanVerdict(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """What the nurse is told: accepted (green, beep) or refused with a reason."""

    verdict: ScanVerdict
    event: Event | None  # None only when the log itself could not record anything (disk full, I/O error)
    reason: str = ""
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.verdict is ScanVerdict.ACCEPTED


def pack_count(udi_text: str) -> int | None:
    """The count of a fixed-quantity pack label (a GS1 code with AI 30, VAR. COUNT), None for any other code.

    The SPD operator prints such a label on each pack of a non-chargeable item it sends a department:
    (01) the item's GTIN, (10) its lot, (30) how many units the pack holds, (21) the pack's own number.
    """
    try:
        udi = parse_udi(udi_text)
    except ValueError:
        return None
    if not isinstance(udi, Udi):
        return None
    count = udi.get("30")
    return int(count) if count is not None and count.isdigit() and int(count) > 0 else None


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
        policy: ScanPolicy | None = None,
    ) -> None:
        self.log = eventlog
        self.operator = operator
        self.dept = dept
        self.wristband_format = wristband_format or WristbandFormat.default()
        self._on_committed = on_committed
        self.policy = policy

    def scan_pair(self, wristband_text: str, udi_text: str) -> ScanOutcome:
        """Record a wristband + item scan; returns only after the event is durable.

        If the log cannot record (disk full, I/O error) the outcome is refused
        with reason ``log_unavailable`` and no event: the nurse is told to scan
        again, so the scan is not lost, and nothing is charged.
        """
        try:
            return self._scan_pair(wristband_text, udi_text)
        except LogWriteFailed as err:
            return ScanOutcome(ScanVerdict.REFUSED, None, "log_unavailable", str(err))

    def _scan_pair(self, wristband_text: str, udi_text: str) -> ScanOutcome:
        try:
            band = parse_wristband(wristband_text, self.wristband_format)
        except ValueError as err:
            return self._refuse("bad_wristband", err, wristband_text, udi_text)
        try:
            udi = parse_udi(udi_text)
        except ValueError as err:
            return self._refuse("bad_udi", err, wristband_text, udi_text)
        if self.policy is not None:
            refusal = self.policy.check(admission=band.admission, udi=udi, dept=self.dept)
            if refusal is not None:
                return self._commit_refusal(
                    refusal.reason.value, refusal.message, wristband_text, udi_text,
                    catalog_version=self.policy.cache.version,
                )
        ev = self.log.append(
            EventKind.CONSUME.value,
            {"admission": band.admission, "udi": udi_text, "operator": self.operator, "dept": self.dept},
        )
        if self.policy is not None:
            try:
                self.policy.committed(ev)
            except Exception:  # the event is durable; the policy catches up from the log at next start
                log.exception("recording consumed serial of seq %d failed", ev.seq)
        self._committed(ev)
        return ScanOutcome(ScanVerdict.ACCEPTED, ev)

    def return_unused(self, udi_text: str, *, restocked: bool = True, reason: str = "") -> ScanOutcome:
        """Record an item brought back unused; the gateway credits its charge, if it had one.

        ``restocked`` says the item went back into stock (it may be used, and
        charged, again once the credit is booked); False means it was discarded.
        """
        try:
            parse_udi(udi_text)
        except ValueError as err:
            return self._refuse("bad_udi", err, "", udi_text)
        try:
            return self._return_unused(udi_text, restocked=restocked, reason=reason)
        except LogWriteFailed as err:
            return ScanOutcome(ScanVerdict.REFUSED, None, "log_unavailable", str(err))

    def _return_unused(self, udi_text: str, *, restocked: bool, reason: str) -> ScanOutcome:
        body: dict[str, object] = {"udi": udi_text, "operator": self.operator, "dept": self.dept,
                                   "restocked": restocked}
        if reason:
            body["reason"] = reason[:200]
        ev = self.log.append(EventKind.RETURN_UNUSED.value, body)
        self._committed(ev)
        return ScanOutcome(ScanVerdict.ACCEPTED, ev)

    def open_pack(self, udi_text: str) -> ScanOutcome:
        """Record a fixed-quantity pack opened in the department (its label's count is the department's use).

        No patient: a pack of non-chargeable items is consumed by the department, not charged. With a scan
        policy an unknown item, a recalled lot or an expired pack is refused (recorded as a ``refused_scan``).
        """
        qty = pack_count(udi_text)
        if qty is None:
            return self.refuse("not_a_pack", "not a pack label (a GS1 code with a count, AI 30)", udi_text=udi_text)
        udi = parse_udi(udi_text)
        try:
            if self.policy is not None:
                refusal = self.policy.check_pack(udi=udi)
                if refusal is not None:
                    return self._commit_refusal(refusal.reason.value, refusal.message, "", udi_text,
                                                catalog_version=self.policy.cache.version)
        except LogWriteFailed as err:
            return ScanOutcome(ScanVerdict.REFUSED, None, "log_unavailable", str(err))
        body: dict[str, object] = {"udi": udi_text, "operator": self.operator, "dept": self.dept, "qty": qty,
                                   "gtin": udi.gtin or "", "lot": udi.lot or ""}
        try:
            ev = self.log.append(EventKind.PACK_OPENED.value, body)
        except LogWriteFailed as err:
            return ScanOutcome(ScanVerdict.REFUSED, None, "log_unavailable", str(err))
        self._committed(ev)
        return ScanOutcome(ScanVerdict.ACCEPTED, ev)

    def refuse(self, reason: str, detail: str, *, wristband_text: str = "", udi_text: str = "") -> ScanOutcome:
        """Record a scan refused before it reached :meth:`scan_pair` (not logged in, no patient, unreadable ...)."""
        try:
            return self._commit_refusal(reason, detail, wristband_text, udi_text)
        except LogWriteFailed as err:
            return ScanOutcome(ScanVerdict.REFUSED, None, "log_unavailable", str(err))

    def _refuse(self, kind: str, err: ValueError, wristband_text: str, udi_text: str) -> ScanOutcome:
        return self._commit_refusal(str(getattr(err, "reason", kind)), str(err), wristband_text, udi_text)

    def _commit_refusal(
        self, reason: str, detail: str, wristband_text: str, udi_text: str, *, catalog_version: int | None = None
    ) -> ScanOutcome:
        body: dict[str, object] = {
            "reason": reason, "detail": detail, "wristband": wristband_text[:200], "udi": udi_text[:200],
            "operator": self.operator, "dept": self.dept,
        }
        if catalog_version is not None:
            body["catalog_version"] = catalog_version
        ev = self.log.append(EventKind.REFUSED_SCAN.value, body)
        log.info("scan refused (seq %d): %s", ev.seq, reason)
        self._committed(ev)
        return ScanOutcome(ScanVerdict.REFUSED, ev, reason, detail)

    def _committed(self, ev: Event) -> None:
        if self._on_committed is not None:
            try:
                self._on_committed(ev)
            except Exception:
                log.exception("on_committed callback failed")
