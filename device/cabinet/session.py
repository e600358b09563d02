"""The cabinet's state machine: badge and PIN, unlock, door open and close, counting, and the alarms around them.

:class:`Cabinet` is driven by one thread (the agent loop) through its ``on_*``
methods and :meth:`Cabinet.tick`; it acts through :class:`CabinetPorts`
(record events durably, unlock, lock, signal, start a count). Every event
is recorded (committed to the log) before the user is signalled success; an
alarm sounds even while its event waits for the log (see below).

States::

    IDLE --badge ok, no PIN--> UNLOCKED --door opens--> DOOR_OPEN --all closed--> COUNTING --count--> IDLE
    IDLE --badge ok, PIN--> AWAIT_PIN --right PIN--> UNLOCKED;  3 wrong PINs --> LOCKED_OUT --time--> IDLE
    UNLOCKED --nobody opens in time--> IDLE
    COUNTING --reader offline--> FAULT --reader back--> COUNTING
    COUNTING --the log cannot take the count's events--> FAULT --they are committed--> IDLE
    any door opening outside UNLOCKED/DOOR_OPEN: door_forced alarm, then DOOR_OPEN (the count is unattributed
    if no session was open)

Lockdown (:meth:`Cabinet.set_lockdown`) is orthogonal to the states: while it
is on every lock is held, every badge is refused (``reason = lockdown``), a
session waiting for a PIN or for the door to open ends at once, and any door
opening is forced; a door already open is counted as usual when it closes.

When the event log cannot be written (disk full, I/O error), the door still
moves the state machine and the count still happens: what could not be
recorded waits in memory, in order, and is committed when the log takes it
again (see :meth:`Cabinet.record_unrecorded`). Only a grant needs the log at
once: no record of who opens, no opening.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Protocol

from device.cabinet.allowlist import AllowList
from device.cabinet.catalog import ItemCatalog, ItemKey
from device.cabinet.epc import EpcError, Sgtin, decode_sgtin96
from device.cabinet.inventory import CountResult
from device.eventlog import LogWriteFailed
from spd_common.allowlist import Badge, Role
from spd_common.wire import Event, EventKind

log = logging.getLogger(__name__)

MAX_PIN_ATTEMPTS = 3


class SessionState(Enum):
    IDLE = "idle"
    AWAIT_PIN = "await_pin"
    LOCKED_OUT = "locked_out"
    UNLOCKED = "unlocked"
    DOOR_OPEN = "door_open"
    COUNTING = "counting"
    FAULT = "fault"


class AlarmCode(StrEnum):
    DOOR_FORCED = "door_forced"
    DOOR_AJAR = "door_ajar"
    READER_OFFLINE = "reader_offline"
    READER_ONLINE = "reader_online"
    UNKNOWN_TAG = "unknown_tag"
    EXPIRED_IN_STOCK = "expired_in_stock"
    NOT_LINKED = "not_linked"
    COUNT_INCOMPLETE = "count_incomplete"


class AccessResult(StrEnum):
    GRANTED = "granted"
    REFUSED = "refused"
    DOOR_OPENED = "door_opened"
    DOOR_CLOSED = "door_closed"
    EXPIRED = "expired"


class Signal(Enum):
    """What the user sees and hears; the agent maps these to LEDs and beeps."""

    ASK_PIN = "ask_pin"
    GRANTED = "granted"
    REFUSED = "refused"
    COUNTING = "counting"
    DONE = "done"
    ALARM = "alarm"
    AJAR = "ajar"


Recordable = tuple[EventKind, dict[str, Any]]


class CabinetPorts(Protocol):
    def record(self, kind: EventKind, body: dict[str, Any]) -> Event:
        """Append one event durably now, after every event the cabinet still holds; returns after the commit.

        Raises :class:`~device.eventlog.LogWriteFailed` if it (or what the cabinet holds) cannot be committed.
        """

    def record_many(self, events: Sequence[Recordable], *, ts_ms: int) -> list[Event]:
        """Append ``events`` durably, in order, in one commit; returns after it.

        Raises :class:`~device.eventlog.LogWriteFailed`, with nothing written, if the log cannot take them.
        """

    def unlock(self, seconds: float) -> float:
        """Release every lock for ``seconds``; returns the time granted."""

    def lock(self, door: str | None = None) -> None:
        """Lock ``door`` (every door when None) now."""

    def signal(self, signal: Signal) -> None: ...

    def start_count(self, previous: Mapping[str, frozenset[int]], count_id: int) -> None:
        """Begin a stable count in the background; the result comes back through ``on_count_done``."""

    def save_inventory(self, inventory: Mapping[str, frozenset[int]], seq: int) -> None:
        """Persist the inventory as of event ``seq``: a count's events are committed."""


@dataclass(slots=True)
class UserSession:
    id: str
    user: str | None
    role: Role | None
    badge: str | None
    started: float
    forced: bool = False


@dataclass(slots=True)
class PendingLink:
    deadline: float
    session: str
    user: str | None
    epc: str


@dataclass(slots=True)
class Timings:
    unlock_s: float = 8.0
    pin_timeout_s: float = 15.0
    ajar_limits_s: dict[str, float] = field(default_factory=dict)
    ajar_repeat_s: float = 300.0
    link_within_s: float = 0.0  # the cabinet's own not_linked check; 0: off (the gateway's check decides)
    expiry_check_s: float = 3600.0
    lockout_s: float = 30.0
    door_grace_s: float = 0.5
    log_retry_s: float = 1.0  # how often events the log could not take are tried again
    count_snapshot_s: float = 0.0  # a stock_counted snapshot after a complete count at most this often; 0: never


SNAPSHOT_ITEMS_PER_EVENT = 300
"""Items per ``stock_counted`` event: 300 ``[gtin, serial]`` pairs stay well inside a 16 KiB body."""

HELD_LIMIT = 1000
"""Entries the cabinet holds for a failing log before refused badge swipes are only counted.

Everything else it holds is bounded by the physical world (a door opens only
for a recorded grant, a count follows a door); refused swipes are not, so past
this many held entries they are summed per reason and recorded as one refused
access with ``refusals`` once the log takes writes again.
"""


@dataclass(slots=True)
class _Unrecorded:
    """Events the log could not take yet: committed together, then ``then`` runs with them."""

    events: list[Recordable]
    ts_ms: int  # when they happened; kept across retries
    then: Callable[[list[Event]], None] | None = None


class Cabinet:
    """The state machine of one cabinet (all its doors share one session and one reader)."""

    def __init__(
        self,
        ports: CabinetPorts,
        *,
        allowlist: AllowList,
        catalog: ItemCatalog,
        dept: str,
        doors: list[str],
        timings: Timings,
        inventory: Mapping[str, frozenset[int]] | None = None,
        today: Callable[[], dt.date] = dt.date.today,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ports = ports
        self.allowlist = allowlist
        self.catalog = catalog
        self.dept = dept
        self.timings = timings
        self.state = SessionState.IDLE
        self.session: UserSession | None = None
        self.inventory: dict[str, frozenset[int]] = dict(inventory or {})
        self.pending_links: dict[ItemKey, PendingLink] = {}
        self.reader_online = True
        self.lockdown: str | None = None  # the reason, while the cabinet is locked down
        self._today = today
        self._clock = clock
        self._unrecorded: deque[_Unrecorded] = deque()
        self._retry_at = 0.0
        self._log_failing = False
        self._held_count: int | None = None  # the count whose events wait for the log
        self._refusals_not_held: dict[str, int] = {}  # reason -> refused swipes past HELD_LIMIT
        self._refusals_span_ms: tuple[int, int] = (0, 0)
        self._doors_open: dict[str, float] = {}
        self._ajar_alarmed: dict[str, float] = {}
        self._door_names = list(doors)
        self._pending_badge: Badge | None = None
        self._deadline = 0.0
        self._pin_attempts = 0
        self._count_id = 0
        self._unknown_alarmed: set[str] = set()
        self._expired_alarmed: set[ItemKey] = set()
        self._next_expiry_check = 0.0
        self._epc_cache: dict[str, Sgtin | None] = {}
        self._next_snapshot: float | None = None  # None: the next complete count records one

    # ------------------------------------------------------------ inputs

    def on_badge(self, text: str, now: float) -> None:
        badge_text = text.strip()
        if self.lockdown is not None:
            self._access(AccessResult.REFUSED, reason="lockdown", badge=badge_text[:64])
            self.ports.signal(Signal.REFUSED)
            return
        if self.state is not SessionState.IDLE:
            log.info("badge ignored in state %s", self.state.value)
            self.ports.signal(Signal.REFUSED)
            return
        self.allowlist.reload_if_changed()
        entry = self.allowlist.lookup(badge_text)
        if entry is None:
            self._access(AccessResult.REFUSED, reason="unknown_badge", badge=badge_text[:64])
            self.ports.signal(Signal.REFUSED)
            return
        if entry.needs_pin:
            self._pending_badge = entry
            self._pin_attempts = 0
            self._deadline = now + self.timings.pin_timeout_s
            self.state = SessionState.AWAIT_PIN
            self.ports.signal(Signal.ASK_PIN)
            return
        self._grant(entry, now)

    def on_pin(self, pin: str, now: float) -> None:
        entry = self._pending_badge
        if self.state is not SessionState.AWAIT_PIN or entry is None:
            self.ports.signal(Signal.REFUSED)
            return
        if entry.verify_pin(pin.strip()):
            self._grant(entry, now)
            return
        self._pin_attempts += 1
        locked = self._pin_attempts >= MAX_PIN_ATTEMPTS
        self._access(AccessResult.REFUSED, reason="bad_pin", user=entry.user, badge=entry.badge,
                     attempts=self._pin_attempts, locked_out=locked)
        self.ports.signal(Signal.REFUSED)
        if locked:
            self.state = SessionState.LOCKED_OUT
            self._pending_badge = None
            self._deadline = now + self.timings.lockout_s

    def on_door_opened(self, door: str, now: float) -> None:
        authorised = (
            self.state is SessionState.UNLOCKED and now <= self._deadline
        ) or (self.state is SessionState.DOOR_OPEN and self.session is not None and not self.session.forced)
        authorised = authorised and self.lockdown is None
        self._doors_open[door] = now
        if not authorised:
            if self.session is None or self.state is SessionState.UNLOCKED:
                self.session = self.session or UserSession(_new_id(), None, None, None, now, forced=True)
            self.session.forced = True
            self._alarm(AlarmCode.DOOR_FORCED, door=door, state=self.state.value)
            self.ports.signal(Signal.ALARM)
        else:
            assert self.session is not None
            self._access(AccessResult.DOOR_OPENED, door=door)
        self.ports.lock(door)  # the latch catches the door when it shuts; no need to keep the coil energised
        self.state = SessionState.DOOR_OPEN
        self._pending_badge = None

    def on_door_closed(self, door: str, now: float) -> None:
        opened = self._doors_open.pop(door, None)
        self._ajar_alarmed.pop(door, None)
        if self.session is not None and opened is not None:
            self._access(AccessResult.DOOR_CLOSED, door=door, open_s=round(now - opened, 3))
        if self._doors_open or self.state is not SessionState.DOOR_OPEN:
            return
        self.state = SessionState.COUNTING if self.reader_online else SessionState.FAULT
        self.ports.signal(Signal.COUNTING)
        self._count_id += 1
        self.ports.start_count(dict(self.inventory), self._count_id)

    def on_count_done(self, result: CountResult, count_id: int, now: float) -> None:
        """Record the count's item events and alarms in one commit, then end the session.

        The count's outcome takes effect at once (inventory, links waiting for a
        patient, the session ends), so a door opened meanwhile is counted against
        it and attributed to its own session. If the log cannot take the events,
        the cabinet stays in FAULT (locked, no new session) until
        :meth:`record_unrecorded` commits them; then it goes on exactly as if the
        first commit had worked.
        """
        if self.state not in (SessionState.COUNTING, SessionState.FAULT) or count_id != self._count_id:
            log.info("count %d dropped: state %s (a door opened meanwhile)", count_id, self.state.value)
            return
        events = self._count_events(result, now)
        self.inventory = dict(result.present)
        events += self._expiry_alarms(now, force=bool(result.added))
        if not result.unconfirmed:
            events += self._snapshot_due(now)
        self.session = None
        present = dict(self.inventory)

        def committed(evs: list[Event]) -> None:
            if self._held_count == count_id:
                self._held_count = None
            if count_id == self._count_id and self.state in (SessionState.COUNTING, SessionState.FAULT):
                self.ports.signal(Signal.DONE)
                self.state = SessionState.IDLE
            # last: whoever sees the count reported (the agent's ``counts``) sees the session ended
            self.ports.save_inventory(present, evs[-1].seq if evs else 0)

        if not self._record_together(events, then=committed):
            self._held_count = count_id
            self.state = SessionState.FAULT
            log.warning("count %d: %d events wait for the event log; cabinet held locked", count_id, len(events))

    def record_snapshot(self, now: float) -> None:
        """Record the inventory as a ``stock_counted`` snapshot now (the baseline count at start-up)."""
        self._next_snapshot = None
        snapshot = self._snapshot_due(now)
        if snapshot:
            self._record_together(snapshot)

    def _snapshot_due(self, now: float) -> list[Recordable]:
        """The ``stock_counted`` events of the inventory, when one is due: every item present by GTIN and serial,
        in parts of :data:`SNAPSHOT_ITEMS_PER_EVENT` committed together (the gateway counts the cabinet with it)."""
        every = self.timings.count_snapshot_s
        if every <= 0 or (self._next_snapshot is not None and now < self._next_snapshot):
            return []
        self._next_snapshot = now + every
        items = sorted([sg.gtin, sg.serial] for sg in (self._decode(e) for e in self.inventory) if sg is not None)
        chunks = [items[i:i + SNAPSHOT_ITEMS_PER_EVENT] for i in range(0, len(items), SNAPSHOT_ITEMS_PER_EVENT)]
        chunks = chunks or [[]]
        return [(EventKind.STOCK_COUNTED, {"dept": self.dept, "items": chunk, "part": i, "parts": len(chunks),
                                           "total": len(items)}) for i, chunk in enumerate(chunks, start=1)]

    def on_reader_state(self, online: bool, detail: str, now: float) -> None:
        if online == self.reader_online:
            return
        self.reader_online = online
        self._alarm(AlarmCode.READER_ONLINE if online else AlarmCode.READER_OFFLINE, detail=detail[:200])
        if not online and self.state is SessionState.COUNTING:
            self.state = SessionState.FAULT
        elif online and self.state is SessionState.FAULT and self._held_count is None:
            self.state = SessionState.COUNTING

    def on_consumed(self, key: ItemKey) -> None:
        """A wristband + item scan of this item was committed: it is linked to a patient."""
        if self.pending_links.pop(key, None) is not None:
            log.info("taken item linked to a patient")

    def start_unattributed_count(self) -> None:
        """Count with no session (at start-up): changes made while the agent was down are recorded unattributed."""
        if self.state is SessionState.IDLE:
            self.session = UserSession(_new_id(), None, None, None, 0.0, forced=True)
            self.state = SessionState.COUNTING
            self._count_id += 1
            self.ports.start_count(dict(self.inventory), self._count_id)

    def set_lockdown(self, reason: str | None) -> None:
        """Lock down (``reason``) or lift it (None): every lock is held now, and a session not yet in use ends."""
        self.lockdown = reason
        if reason is None:
            return
        self.ports.lock(None)
        if self.state in (SessionState.AWAIT_PIN, SessionState.UNLOCKED, SessionState.LOCKED_OUT):
            if self.session is not None or self._pending_badge is not None:
                self._access(AccessResult.EXPIRED, reason="lockdown")
            self.state = SessionState.IDLE
            self.session = None
            self._pending_badge = None
            self.ports.signal(Signal.REFUSED)

    def tick(self, now: float) -> None:
        """Run timeouts and periodic checks; the loop calls this a few times a second."""
        if (self._unrecorded or self._refusals_not_held) and now >= self._retry_at:
            self._retry_at = now + self.timings.log_retry_s
            self.record_unrecorded()
        if self.state is SessionState.AWAIT_PIN and now > self._deadline:
            entry = self._pending_badge
            self._pending_badge = None
            self.state = SessionState.IDLE
            self._access(AccessResult.REFUSED, reason="pin_timeout", user=entry.user if entry else None)
            self.ports.signal(Signal.REFUSED)
        elif self.state is SessionState.LOCKED_OUT and now > self._deadline:
            self.state = SessionState.IDLE
        elif self.state is SessionState.UNLOCKED and now > self._deadline:
            self.ports.lock(None)
            self._access(AccessResult.EXPIRED, reason="door_not_opened")
            self.state = SessionState.IDLE
            self.session = None
        for door, since in list(self._doors_open.items()):
            limit = self.timings.ajar_limits_s.get(door, 60.0)
            last = self._ajar_alarmed.get(door)
            due = since + limit if last is None else last + self.timings.ajar_repeat_s
            if now >= due:
                self._ajar_alarmed[door] = now
                self._alarm(AlarmCode.DOOR_AJAR, door=door, open_s=round(now - since, 3))
                self.ports.signal(Signal.AJAR)
        for key, pending in list(self.pending_links.items()):
            if now >= pending.deadline:
                del self.pending_links[key]
                self._alarm(AlarmCode.NOT_LINKED, gtin=key[0], serial=key[1], epc=pending.epc,
                            taken_in=pending.session, user=pending.user)
        expired = self._expiry_alarms(now)
        if expired:
            self._record_together(expired)

    @property
    def unrecorded(self) -> int:
        """How many events wait for the log (refused swipes past :data:`HELD_LIMIT` wait as one)."""
        return sum(len(u.events) for u in self._unrecorded) + (1 if self._refusals_not_held else 0)

    def record_unrecorded(self) -> bool:
        """Commit what the log could not take before, oldest first; True once nothing is left.

        The design, and why it neither loses, reorders nor doubles: every event
        of the state machine goes through one FIFO. An event (or the events of
        one count, which must commit together) is appended to the queue and the
        queue is committed from its head, one entry per transaction; an entry
        leaves the queue only after its commit, and a failed commit writes
        nothing (:class:`~device.eventlog.LogWriteFailed`), so each entry is
        committed exactly once and never before an older one. The state machine
        does not wait for it: a door that opened or closed has done so, and the
        count after it still runs. :meth:`tick` retries every
        ``timings.log_retry_s``; anything about to be recorded, a grant, or a
        wristband + item scan at the cabinet tries first. Entries keep the time
        they happened. The queue lives in memory, bounded by :data:`HELD_LIMIT`:
        a restart loses it, and the start-up count then records the items of a
        lost count unattributed.
        """
        while self._unrecorded:
            held = self._unrecorded[0]
            try:
                evs = self.ports.record_many(held.events, ts_ms=held.ts_ms)
            except LogWriteFailed as err:
                self._note_log_failing(err)
                return False
            self._unrecorded.popleft()
            if held.then is not None:
                held.then(evs)
        if self._refusals_not_held and not self._record_refusal_summary():
            return False
        if self._log_failing:
            self._log_failing = False
            log.warning("event log writable again: held events recorded")
        return True

    # ------------------------------------------------------------ helpers

    def grant_remote(self, user: str, seconds: float, now: float, **fields: Any) -> bool:
        """A signed remote unlock for ``user``: a session as a badge grant opens, committed before the unlock.

        Refused (recorded, REFUSED signalled, False) under lockdown, when the
        cabinet is not idle, or when the grant cannot be recorded.
        """
        if self.lockdown is not None or self.state is not SessionState.IDLE:
            reason = "lockdown" if self.lockdown is not None else "cabinet_busy"
            extra = {} if self.lockdown is not None else {"state": self.state.value}
            self._access(AccessResult.REFUSED, reason=reason, user=user, **extra, **fields)
            self.ports.signal(Signal.REFUSED)
            return False
        self.session = UserSession(_new_id(), user, None, None, now)
        if not self._record_now(EventKind.ACCESS, self._access_body(AccessResult.GRANTED, user=user,
                                                                     seconds=seconds, **fields)):
            log.warning("remote unlock refused: the event log cannot record who opens the door")
            self.session = None
            self._access(AccessResult.REFUSED, reason="log_unavailable", user=user, **fields)
            self.ports.signal(Signal.REFUSED)
            return False
        granted = self.ports.unlock(seconds)
        self._deadline = now + granted + self.timings.door_grace_s
        self.state = SessionState.UNLOCKED
        self.ports.signal(Signal.GRANTED)
        return True

    def record(self, kind: EventKind, body: dict[str, Any]) -> None:
        """Record an event from outside the state machine (e.g. a lockdown), in order behind anything held."""
        self._record_together([(kind, body)])

    def _grant(self, entry: Badge, now: float) -> None:
        """Unlock for ``entry``, only once the grant is committed: no record of who opens, no opening."""
        self._pending_badge = None
        self.session = UserSession(_new_id(), entry.user, entry.role, entry.badge, now)
        body = self._access_body(AccessResult.GRANTED, user=entry.user, role=entry.role.value, badge=entry.badge)
        if not self._record_now(EventKind.ACCESS, body):
            log.warning("access refused: the event log cannot record who opens the door")
            self.session = None
            self.state = SessionState.IDLE
            self._access(AccessResult.REFUSED, reason="log_unavailable", user=entry.user, badge=entry.badge)
            self.ports.signal(Signal.REFUSED)
            return
        granted = self.ports.unlock(self.timings.unlock_s)
        self._deadline = now + granted + self.timings.door_grace_s
        self.state = SessionState.UNLOCKED
        self.ports.signal(Signal.GRANTED)

    def _record_together(self, events: Sequence[Recordable], *,
                         then: Callable[[list[Event]], None] | None = None) -> bool:
        """Commit ``events`` in one transaction after everything held, or hold them; True if committed now."""
        self._unrecorded.append(_Unrecorded(list(events), self._wall_ms(), then))
        return self.record_unrecorded()

    def _record_now(self, kind: EventKind, body: dict[str, Any]) -> bool:
        """Commit one event now, after everything held; False, and nothing held, if the log cannot take it."""
        if not self.record_unrecorded():
            return False
        try:
            self.ports.record_many([(kind, body)], ts_ms=self._wall_ms())
        except LogWriteFailed as err:
            self._note_log_failing(err)
            return False
        return True

    def _note_log_failing(self, err: LogWriteFailed) -> None:
        if not self._log_failing:
            self._log_failing = True
            log.warning("event log cannot be written (%s): events wait until it can", err)

    def _wall_ms(self) -> int:
        return int(self._clock() * 1000)

    def _access_body(self, result: AccessResult, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"result": result.value, "dept": self.dept}
        if self.session is not None:
            body.update(session=self.session.id, user=self.session.user)
        body.update({k: v for k, v in fields.items() if v is not None})
        return body

    def _access(self, result: AccessResult, **fields: Any) -> None:
        if result is AccessResult.REFUSED and len(self._unrecorded) >= HELD_LIMIT:
            self._count_refusal(str(fields.get("reason", "unknown")))
            return
        self._record_together([(EventKind.ACCESS, self._access_body(result, **fields))])

    def _count_refusal(self, reason: str) -> None:
        now_ms = self._wall_ms()
        if not self._refusals_not_held:
            log.warning("%d events wait for the event log: further refused badge swipes are only counted",
                        len(self._unrecorded))
            self._refusals_span_ms = (now_ms, now_ms)
        self._refusals_not_held[reason] = self._refusals_not_held.get(reason, 0) + 1
        self._refusals_span_ms = (self._refusals_span_ms[0], now_ms)

    def _record_refusal_summary(self) -> bool:
        """Record the swipes counted while the queue was full as one refused access; True once recorded."""
        first_ms, last_ms = self._refusals_span_ms
        body = self._access_body(AccessResult.REFUSED, reason="not_held", refusals=dict(self._refusals_not_held),
                                 first_ms=first_ms, last_ms=last_ms)
        try:
            self.ports.record_many([(EventKind.ACCESS, body)], ts_ms=last_ms)
        except LogWriteFailed as err:
            self._note_log_failing(err)
            return False
        self._refusals_not_held = {}
        return True

    def _alarm_body(self, code: AlarmCode, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"alarm": code.value, "dept": self.dept}
        if self.session is not None and code in (AlarmCode.DOOR_FORCED, AlarmCode.DOOR_AJAR):
            body.update(session=self.session.id, user=self.session.user)
        body.update({k: v for k, v in fields.items() if v is not None})
        log.warning("alarm %s %s", code.value, {k: v for k, v in fields.items() if k not in ("user",)})
        return body

    def _alarm(self, code: AlarmCode, **fields: Any) -> None:
        self._record_together([(EventKind.ALARM, self._alarm_body(code, **fields))])

    def _count_events(self, result: CountResult, now: float) -> list[Recordable]:
        """The item events and alarms of one count; links to wait for a patient are noted here."""
        sess = self.session
        taker = sess.user if sess else None
        is_restock = sess is not None and sess.role is Role.RESTOCKER
        events: list[Recordable] = []
        for epc in sorted(result.taken):
            sg = self._decode(epc)
            if sg is None:
                continue
            events.append((EventKind.TAKEN, self._item_body(epc, sg)))
            if sess is not None and not is_restock and self.timings.link_within_s > 0:
                self.pending_links[sg.item_key] = PendingLink(now + self.timings.link_within_s, sess.id,
                                                              taker, epc)
        added_kind = EventKind.RESTOCKED if is_restock else EventKind.RETURNED
        for epc in sorted(result.added):
            sg = self._decode(epc)
            if sg is None:
                events += self._unknown(epc, "not an SGTIN-96 EPC")
                continue
            if not self.catalog.knows_gtin(sg.gtin):
                events += self._unknown(epc, "GTIN not in the catalogue", gtin=sg.gtin)
            self.pending_links.pop(sg.item_key, None)
            events.append((added_kind, self._item_body(epc, sg)))
        if result.unconfirmed:
            events.append((EventKind.ALARM,
                           self._alarm_body(AlarmCode.COUNT_INCOMPLETE, unconfirmed=len(result.unconfirmed))))
        return events

    def _unknown(self, epc: str, why: str, **fields: Any) -> list[Recordable]:
        if epc in self._unknown_alarmed:
            return []
        self._unknown_alarmed.add(epc)
        return [(EventKind.ALARM, self._alarm_body(AlarmCode.UNKNOWN_TAG, epc=epc, detail=why, **fields))]

    def _decode(self, epc: str) -> Sgtin | None:
        if epc not in self._epc_cache:
            try:
                self._epc_cache[epc] = decode_sgtin96(epc)
            except EpcError:
                self._epc_cache[epc] = None
        return self._epc_cache[epc]

    def _item_body(self, epc: str, sg: Sgtin) -> dict[str, Any]:
        sess = self.session
        body: dict[str, Any] = {"epc": epc, "gtin": sg.gtin, "serial": sg.serial, "dept": self.dept,
                                "session": sess.id if sess else None, "user": sess.user if sess else None,
                                "role": sess.role.value if sess and sess.role else None}
        facts = self.catalog.facts(sg.item_key)
        if facts is not None:
            if facts.lot:
                body["lot"] = facts.lot
            if facts.expiry:
                body["expiry"] = facts.expiry.isoformat()
        return {k: v for k, v in body.items() if v is not None}

    def _expiry_alarms(self, now: float, *, force: bool = False) -> list[Recordable]:
        """Alarms for items in stock that expired since the last check (each item once)."""
        if not force and now < self._next_expiry_check:
            return []
        self._next_expiry_check = now + self.timings.expiry_check_s
        keys = [sg.item_key for sg in (self._decode(e) for e in self.inventory) if sg is not None]
        alarms: list[Recordable] = []
        for facts in self.catalog.expired(keys, self._today()):
            key = (facts.gtin, facts.serial)
            if key in self._expired_alarmed:
                continue
            self._expired_alarmed.add(key)
            alarms.append((EventKind.ALARM, self._alarm_body(
                AlarmCode.EXPIRED_IN_STOCK, gtin=facts.gtin, serial=facts.serial, lot=facts.lot,
                expiry=facts.expiry.isoformat() if facts.expiry else None)))
        return alarms


def _new_id() -> str:
    return "S" + secrets.token_hex(8)
