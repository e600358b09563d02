"""The nurse at the handheld: log in, patient first, then items (or returns), every outcome told and recorded.

:class:`ScanStation` is the state machine of one scanning station. It is
driven by one thread (the agent's loop), takes the monotonic time with each
input, and answers each input with a :class:`Verdict` — the words and the
tone the nurse gets. What it decides is committed to the event log before
the verdict is returned (through :class:`device.handheld.Handheld`), so a
"charged" on the screen is always a durable ``consume`` event.

Inputs, in the order a scan is told apart:

1. a mode card (``[handheld.codes]``): log out, return mode, charge mode;
2. a staff badge on the allow-list: log in (a PIN is asked on the console
   when the badge has one); another nurse's badge hands the station over;
3. logged out: anything else is refused (``not_logged_in``, or an access
   refusal ``unknown_badge`` for what looks like a card number);
4. a patient wristband: opens the patient context, after the cached census
   says the patient is not discharged or unknown;
5. an item UDI: in charge mode, a ``consume`` for the patient in context
   (refused ``no_patient`` without one, or by the scan policy); in return
   mode, a ``return_unused`` (the gateway credits the charge); a fixed-quantity
   pack label (GS1 with a count, AI 30) in charge mode is a ``pack_opened``,
   with or without a patient in context (the department's use, not charged);
6. anything else: refused ``unreadable``.

Time-outs (checked by :meth:`ScanStation.tick`): log-out after
``idle_logout_s`` without a scan or key, the patient context closes
``patient_hold_s`` after the last scan for that patient, return mode falls
back to charge mode ``return_mode_s`` after its last scan, a PIN not typed
within ``pin_timeout_s`` is refused.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from device.cabinet.allowlist import AllowList
from device.catalog_cache import PatientStatus
from device.config import HandheldConfig
from device.eventlog import EventLog, LogWriteFailed
from device.handheld import Handheld, ScanOutcome, pack_count
from device.scan_policy import ScanPolicy
from device.udi import parse_udi
from device.udi.wristband import Wristband, WristbandFormat, parse_wristband
from spd_common.allowlist import Badge, Role
from spd_common.wire import EventKind

log = logging.getLogger(__name__)

_AIM_PREFIX = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
MAX_VERDICTS = 6
ROLES_ALLOWED = frozenset({Role.NURSE})  # who may charge items to patients


class Mode(StrEnum):
    CHARGE = "charge"
    RETURN = "return"


class Tone(StrEnum):
    """What the nurse hears (and the LED shows)."""

    OK = "ok"
    REFUSED = "refused"
    INFO = "info"


class Key(StrEnum):
    """Console keys the station understands (the TUI maps function keys to these)."""

    CHARGE_MODE = "charge_mode"
    RETURN_MODE = "return_mode"
    LOGOUT = "logout"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One outcome as the nurse gets it: a short title in large type, a sentence, a tone."""

    at: float  # wall-clock time
    ok: bool
    title: str
    message: str
    tone: Tone
    reason: str = ""
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Patient:
    admission: str
    initials: str
    ward: str
    raw: str
    until: float  # monotonic


@dataclass(frozen=True, slots=True)
class StationView:
    """What the screen shows about the station; replaced whole after each input."""

    user: str | None = None
    pin_for: str | None = None  # a user asked for their PIN
    patient: Patient | None = None
    mode: Mode = Mode.CHARGE
    verdicts: tuple[Verdict, ...] = ()
    lockdown: str | None = None
    typed: str = ""  # what the console has typed so far (PINs shown as *)


# short titles of refusals, in the words shown in large type
REFUSAL_TITLES = {
    "expired": "EXPIRED", "recalled_lot": "RECALLED", "serial_already_consumed": "ALREADY USED",
    "unknown_item": "UNKNOWN ITEM", "missing_serial": "NO SERIAL", "not_stocked_in_dept": "WRONG DEPT",
    "patient_discharged": "DISCHARGED", "patient_unknown": "NOT ADMITTED", "not_logged_in": "NOT LOGGED IN",
    "no_patient": "NO PATIENT", "unreadable": "NOT READ", "bad_udi": "BAD ITEM CODE",
    "bad_wristband": "BAD WRISTBAND", "log_unavailable": "NOT SAVED", "unknown_badge": "UNKNOWN BADGE",
    "bad_pin": "WRONG PIN", "pin_timeout": "PIN TIMED OUT", "unknown_user": "UNKNOWN STAFF ID",
    "no_pin_set": "NO PIN", "role_not_allowed": "NOT ALLOWED", "lockdown": "LOCKED DOWN",
}
MESSAGES = {
    "not_logged_in": "Not logged in: scan your staff badge first. Nothing was recorded as used.",
    "no_patient": "No patient: scan the patient's wristband first, then the item. Nothing was charged.",
    "unreadable": "Code not recognised (not a badge, wristband or item label). Scan again or call the SPD desk.",
    "log_unavailable": "The handheld cannot save: NOTHING was recorded. Scan again; if it repeats, use the paper "
                       "form and call IT.",
    "unknown_badge": "Badge not on this handheld's staff list. Call the ward manager.",
    "bad_pin": "Wrong PIN. Scan your badge (or type your staff id) again.",
    "pin_timeout": "No PIN typed in time. Scan your badge again.",
    "unknown_user": "Staff id not on this handheld's staff list.",
    "no_pin_set": "This staff id has no PIN: log in with your badge.",
    "role_not_allowed": "Only nurses can charge items with this handheld.",
}


class ScanStation:
    """The state machine; every method runs on one thread and takes ``now`` (monotonic seconds)."""

    def __init__(
        self,
        config: HandheldConfig,
        *,
        eventlog: EventLog,
        allowlist: AllowList,
        policy: ScanPolicy | None = None,
        wristband_format: WristbandFormat | None = None,
        on_committed: Callable[..., None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.log = eventlog
        self.allowlist = allowlist
        self.policy = policy
        self.wristband_format = wristband_format or WristbandFormat.default()
        self._on_committed = on_committed
        self._wall = wall
        self.view = StationView()
        self._badge: Badge | None = None  # logged in
        self._pin_badge: Badge | None = None  # waiting for this badge's PIN
        self._pin_until = 0.0
        self._last_activity = 0.0
        self._mode_until = 0.0

    # ------------------------------------------------------------ inputs

    def on_scan(self, text: str, now: float) -> Verdict | None:
        """One line from a scanner."""
        code = _AIM_PREFIX.sub("", text.strip())
        codes = self.config.codes
        if code == codes.logout:
            return self.on_key(Key.LOGOUT, now)
        if code == codes.return_mode:
            return self.on_key(Key.RETURN_MODE, now)
        if code == codes.charge_mode:
            return self.on_key(Key.CHARGE_MODE, now)
        badge = self.allowlist.lookup(code) if code else None
        if badge is not None:
            return self._login(badge, now, via="badge")
        if self._badge is None:
            return self._logged_out_scan(text, code, now)
        self._last_activity = now
        try:
            band = parse_wristband(text, self.wristband_format)
        except ValueError:
            band = None
        if band is not None:
            return self._open_patient(band, now)
        try:
            parse_udi(text)
        except ValueError:
            if _looks_like_badge(code):
                return self._access_refused("unknown_badge", now, badge=code[:64])
            return self._refuse_scan("unreadable", MESSAGES["unreadable"], udi_text=text)
        if self.view.mode is Mode.RETURN:
            self._mode_until = now + self.config.return_mode_s
            return self._return(text)
        return self._charge(text, now)

    def on_unreadable(self, why: str, now: float) -> Verdict:
        """The scanner read something it could not pass on (cut off, garbled, no symbology identifier)."""
        if self._badge is not None:
            self._last_activity = now
        return self._refuse_scan("unreadable", MESSAGES["unreadable"] + f" (scanner: {why})")

    def on_console_line(self, text: str, now: float) -> Verdict | None:
        """A line typed on the console keypad and Enter: a PIN when one is asked, else a staff id to log in.

        Logged in, another nurse's staff id hands the station over (after her PIN); anything else typed is refused:
        wristbands and items are scanned, never typed.
        """
        text = text.strip()
        if not text:
            return None
        if self._pin_badge is not None:
            return self._check_pin(text, now)
        badge = self.allowlist.by_user(text)
        if self._badge is not None and badge is None:
            return self._say(False, "USE THE SCANNER", "Codes are scanned, not typed: scan the wristband or item.",
                             Tone.REFUSED)
        if badge is None:
            return self._access_refused("unknown_user", now, user=text[:64])
        if not badge.needs_pin:
            return self._access_refused("no_pin_set", now, user=badge.user)
        return self._login(badge, now, via="staff_id")

    def on_key(self, key: Key, now: float) -> Verdict | None:
        if key is Key.LOGOUT:
            if self._badge is None and self._pin_badge is None:
                return None
            return self._logout("by_user", now)
        if self._badge is None:
            return self._refuse_scan("not_logged_in", MESSAGES["not_logged_in"])
        self._last_activity = now
        if key is Key.RETURN_MODE:
            self._mode_until = now + self.config.return_mode_s
            self.view = replace(self.view, mode=Mode.RETURN)
            return self._say(True, "RETURN MODE", "Scan each item that comes back unused; it is credited. "
                             "Scan the CHARGE card (or F1) when done.", Tone.INFO)
        self.view = replace(self.view, mode=Mode.CHARGE)
        return self._say(True, "CHARGE MODE", "Scan the patient's wristband, then each item used.", Tone.INFO)

    def set_lockdown(self, reason: str | None, now: float) -> Verdict | None:
        """A signed lockdown from the gateway: the nurse is logged out and nobody can log in until it is lifted."""
        self.view = replace(self.view, lockdown=reason)
        if reason is not None and (self._badge is not None or self._pin_badge is not None):
            return self._logout("lockdown", now)
        return None

    def set_typed(self, typed: str) -> None:
        self.view = replace(self.view, typed=typed)

    def tick(self, now: float) -> Verdict | None:
        """Time-outs; call often (every 100 ms or so)."""
        if self._pin_badge is not None and now >= self._pin_until:
            badge, self._pin_badge = self._pin_badge, None
            self.view = replace(self.view, pin_for=None, typed="")
            return self._access_refused("pin_timeout", now, user=badge.user, badge=badge.badge)
        if self._badge is None:
            return None
        if now - self._last_activity >= self.config.idle_logout_s:
            return self._logout("idle", now)
        patient = self.view.patient
        if patient is not None and now >= patient.until:
            self.view = replace(self.view, patient=None)
            return self._say(True, "PATIENT CLOSED", f"No scan for {patient.admission} for a while: scan the "
                             "wristband again for the next item.", Tone.INFO)
        if self.view.mode is Mode.RETURN and now >= self._mode_until:
            self.view = replace(self.view, mode=Mode.CHARGE)
            return self._say(True, "CHARGE MODE", "Return mode ended: scans charge items again.", Tone.INFO)
        return None

    @property
    def user(self) -> str | None:
        return self._badge.user if self._badge is not None else None

    # ------------------------------------------------------------ log in and out

    def _logged_out_scan(self, text: str, code: str, now: float) -> Verdict:
        if self._is_wristband(text):
            return self._refuse_scan("not_logged_in", MESSAGES["not_logged_in"], wristband_text=text)
        if _parses_as_udi(text):
            return self._refuse_scan("not_logged_in", MESSAGES["not_logged_in"], udi_text=text)
        if _looks_like_badge(code):
            return self._access_refused("unknown_badge", now, badge=code[:64])
        return self._refuse_scan("unreadable", MESSAGES["unreadable"], udi_text=text)

    def _login(self, badge: Badge, now: float, *, via: str) -> Verdict:
        if self.view.lockdown is not None:
            return self._access_refused("lockdown", now, user=badge.user, badge=badge.badge)
        if badge.role not in ROLES_ALLOWED:
            return self._access_refused("role_not_allowed", now, user=badge.user, role=badge.role.value)
        if self._badge is not None and self._badge.user == badge.user:
            self._last_activity = now
            return self._say(True, f"HELLO {badge.user}", "Already logged in.", Tone.INFO)
        if badge.needs_pin:
            self._pin_badge = badge
            self._pin_until = now + self.config.pin_timeout_s
            self.view = replace(self.view, pin_for=badge.user, typed="")
            return self._say(True, "TYPE YOUR PIN", f"{badge.user}: type your PIN and press Enter.", Tone.INFO)
        return self._grant(badge, now, via=via)

    def _check_pin(self, pin: str, now: float) -> Verdict:
        badge, self._pin_badge = self._pin_badge, None
        assert badge is not None
        self.view = replace(self.view, pin_for=None, typed="")
        try:
            ok = badge.verify_pin(pin)
        except ValueError:
            ok = False
        if not ok:
            return self._access_refused("bad_pin", now, user=badge.user, badge=badge.badge)
        return self._grant(badge, now, via="pin")

    def _grant(self, badge: Badge, now: float, *, via: str) -> Verdict:
        previous = self._badge
        if previous is not None:
            self._logout("handover", now, quiet=True)
        try:
            ev = self.log.append(EventKind.ACCESS.value, self._access_body(
                "granted", type="login", user=badge.user, role=badge.role.value, via=via))
        except LogWriteFailed:
            return self._say(False, "NOT SAVED", MESSAGES["log_unavailable"], Tone.REFUSED, reason="log_unavailable")
        self._committed(ev)
        self._badge = badge
        self._last_activity = now
        self.view = replace(self.view, user=badge.user, patient=None, mode=Mode.CHARGE, pin_for=None)
        return self._say(True, f"HELLO {badge.user}", "Scan the patient's wristband, then each item used.",
                         Tone.OK, seq=ev.seq)

    def _logout(self, reason: str, now: float, *, quiet: bool = False) -> Verdict:
        user = self._badge.user if self._badge is not None else (self._pin_badge.user if self._pin_badge else None)
        self._badge = self._pin_badge = None
        self.view = replace(self.view, user=None, pin_for=None, patient=None, mode=Mode.CHARGE, typed="")
        seq = None
        try:
            ev = self.log.append(EventKind.ACCESS.value, self._access_body("logged_out", type="logout", user=user,
                                                                           reason=reason))
            self._committed(ev)
            seq = ev.seq
        except LogWriteFailed as err:
            log.warning("log-out of %s not recorded: %s", user, err)
        words = {"idle": "Logged out after a quiet while.", "lockdown": "Logged out: the handheld is locked down.",
                 "handover": "Handed over to the next nurse.", "by_user": "Logged out. Goodbye."}
        if quiet:
            return Verdict(self._wall(), True, "LOGGED OUT", words.get(reason, reason), Tone.INFO, reason, seq)
        return self._say(True, "LOGGED OUT", words.get(reason, "Logged out."), Tone.INFO, reason=reason, seq=seq)

    # ------------------------------------------------------------ patient and items

    def _is_wristband(self, text: str) -> bool:
        try:
            parse_wristband(text, self.wristband_format)
        except ValueError:
            return False
        return True

    def _open_patient(self, band: Wristband, now: float) -> Verdict:
        status = self.policy.cache.patient_status(band.admission) if self.policy is not None else None
        if status in (PatientStatus.DISCHARGED, PatientStatus.UNKNOWN):
            reason = "patient_discharged" if status is PatientStatus.DISCHARGED else "patient_unknown"
            message = (f"Patient {band.admission} has been discharged: check the wristband." if
                       status is PatientStatus.DISCHARGED else
                       f"Patient {band.admission} is not an admitted inpatient: check the wristband.")
            self.view = replace(self.view, patient=None)
            return self._refuse_scan(reason, message, wristband_text=band.raw)
        # the wristband's own initials and ward first; the census fills in what the hospital's band leaves out
        info = self.policy.cache.patient(band.admission) if self.policy is not None else None
        initials = band.initials or (info.initials if info is not None else "")
        ward = band.ward or (info.ward if info is not None else "")
        patient = Patient(band.admission, initials, ward, band.raw, now + self.config.patient_hold_s)
        self.view = replace(self.view, patient=patient, mode=Mode.CHARGE)
        who = " ".join(x for x in (band.admission, initials, ward) if x)
        return self._say(True, "PATIENT", f"{who}: now scan each item used.", Tone.OK)

    def _charge(self, udi_text: str, now: float) -> Verdict:
        qty = pack_count(udi_text)
        if qty is not None:
            return self._open_pack(udi_text, qty)
        patient = self.view.patient
        if patient is None:
            return self._refuse_scan("no_patient", MESSAGES["no_patient"], udi_text=udi_text)
        self.view = replace(self.view, patient=replace(patient, until=now + self.config.patient_hold_s))
        outcome = self._handheld().scan_pair(patient.raw, udi_text)
        if not outcome.accepted:
            return self._refusal(outcome)
        return self._say(True, "CHARGED", f"{self._item_name(udi_text)} charged to {patient.admission}.", Tone.OK,
                         seq=outcome.event.seq if outcome.event else None)

    def _open_pack(self, udi_text: str, qty: int) -> Verdict:
        outcome = self._handheld().open_pack(udi_text)
        if not outcome.accepted:
            return self._refusal(outcome)
        return self._say(True, "PACK OPENED", f"{self._item_name(udi_text)}: pack of {qty} recorded as used by "
                         f"{self.config.dept}.", Tone.OK, seq=outcome.event.seq if outcome.event else None)

    def _return(self, udi_text: str) -> Verdict:
        outcome = self._handheld().return_unused(udi_text, restocked=True, reason="returned unused at the handheld")
        if not outcome.accepted:
            return self._refusal(outcome)
        return self._say(True, "RETURNED", f"{self._item_name(udi_text)} returned unused: its charge is credited.",
                         Tone.OK, seq=outcome.event.seq if outcome.event else None)

    def _item_name(self, udi_text: str) -> str:
        try:
            udi = parse_udi(udi_text)
        except ValueError:
            return "Item"
        key = udi.device_identifier or "?"
        item = self.policy.cache.item(key) if self.policy is not None and udi.gtin else None
        name = item.name if item is not None else f"Item {key}"
        return f"{name} (serial {udi.serial})" if udi.serial else name

    # ------------------------------------------------------------ recording and telling

    def _handheld(self) -> Handheld:
        return Handheld(self.log, operator=self.user or "", dept=self.config.dept,
                        wristband_format=self.wristband_format, on_committed=self._on_committed, policy=self.policy)

    def _refuse_scan(self, reason: str, message: str, *, wristband_text: str = "", udi_text: str = "") -> Verdict:
        outcome = self._handheld().refuse(reason, message, wristband_text=wristband_text, udi_text=udi_text)
        return self._refusal(outcome)

    def _refusal(self, outcome: ScanOutcome) -> Verdict:
        reason = outcome.reason
        if outcome.event is None:  # the log could not take it: say so, nothing is recorded
            return self._say(False, "NOT SAVED", MESSAGES["log_unavailable"], Tone.REFUSED, reason="log_unavailable")
        message = outcome.detail if reason in ("not_logged_in", "no_patient", "unreadable") else None
        if message is None:
            message = outcome.detail if reason in REFUSAL_TITLES and reason not in ("bad_udi", "bad_wristband") \
                else f"Code not accepted ({outcome.detail}). Scan again or call the SPD desk."
        return self._say(False, REFUSAL_TITLES.get(reason, "REFUSED"), message, Tone.REFUSED, reason=reason,
                         seq=outcome.event.seq)

    def _access_body(self, result: str, **fields: object) -> dict[str, object]:
        body: dict[str, object] = {"result": result, "dept": self.config.dept, "station": "handheld"}
        body.update({k: v for k, v in fields.items() if v is not None})
        return body

    def _access_refused(self, reason: str, now: float, **fields: object) -> Verdict:
        seq = None
        try:
            ev = self.log.append(EventKind.ACCESS.value, self._access_body("refused", type="login", reason=reason,
                                                                           **fields))
            self._committed(ev)
            seq = ev.seq
        except LogWriteFailed as err:
            log.warning("refused log-in not recorded: %s", err)
        message = MESSAGES.get(reason, "")
        if reason == "lockdown":
            message = f"The handheld is locked down ({self.view.lockdown}): nobody can log in. Call the ward manager."
        return self._say(False, REFUSAL_TITLES.get(reason, "REFUSED"), message, Tone.REFUSED, reason=reason,
                         seq=seq)

    def _say(self, ok: bool, title: str, message: str, tone: Tone, *, reason: str = "",
             seq: int | None = None) -> Verdict:
        verdict = Verdict(self._wall(), ok, title, message, tone, reason, seq)
        self.view = replace(self.view, verdicts=(verdict, *self.view.verdicts)[:MAX_VERDICTS])
        log.info("%s: %s — %s", "ok" if ok else "refused", title, message)
        return verdict

    def _committed(self, ev: object) -> None:
        if self._on_committed is not None:
            try:
                self._on_committed(ev)
            except Exception:
                log.exception("on_committed callback failed")


def _parses_as_udi(text: str) -> bool:
    try:
        parse_udi(text)
    except ValueError:
        return False
    return True


def _looks_like_badge(text: str) -> bool:
    t = text.strip()
    return 4 <= len(t) <= 32 and t.isalnum() and not t.startswith("]")
