"""Critical alarms out of the gateway: incidents found in the store, one notice per incident by e-mail and webhook.

Two kinds of loop, each its own thread with its own heartbeat, so a dead mail server never holds up
detection or the other channel:

* ``notify-watch`` (:class:`IncidentWatch`, lease holder only) — every ``check_every_s`` looks at the store
  and opens or resolves incidents (:mod:`gateway.data.incidents`): an incident has a key, kind + subject;
  it is opened once, a condition seen again while it is open adds nothing, and a ``resolved`` notice goes
  out when the condition clears. Opening or resolving writes the notices owed to each configured channel in
  the same transaction, so incidents and notices survive a restart: nothing is sent twice, nothing owed is
  forgotten.
* ``notify-email``, ``notify-webhook`` (:class:`~gateway.notify_dispatch.NoticeDispatcher`, one per
  configured channel, lease holder only) — send the notices due, oldest first; a failed delivery waits
  with exponential back-off (:mod:`spd_common.backoff`) and is tried again until ``give_up_after_s``; the
  first failure, a delivery after failures and giving up are in the audit log.

Delivery is at least once: a notice whose answer was lost (the mail server or webhook took it, then the
connection dropped) is sent again, with the same ``Message-ID`` / ``X-SPD-Delivery`` for the receiver to
recognise it.

The incidents (kind: subject — opened when / resolved when):

* ``door_forced``: cabinet — a cabinet's ``door_forced`` alarm event / a later ``door_closed`` access event
  of that cabinet (the events are followed in store order with their own cursor, so a door forced and
  closed between two checks is still one incident and its resolution);
* ``chain_break``: device — a hash-chain break stored for the device / only by a person
  (``spd-gateway incidents close``): a broken log is evidence, it does not heal;
* ``charges_parked``: ``his`` — charges parked (refused by the HIS) / none parked any more (re-sent or
  settled);
* ``device_offline``: device — not heard from (state or events) for ``offline_after_s`` / heard from again;
* ``his_down``: ``his`` — a HIS lane failing without an answer for ``his_down_after_s`` / every lane is
  answered again (judged from this process's senders; after a restart the incident stays open until the HIS
  answers or fails again, never re-sent).

At the first start on a store, events and chain breaks from before are history and raise nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.audit import AuditAction, AuditLog
from gateway.data.incidents import IncidentRow
from gateway.leader_loop import LeaderLoop
from gateway.notify_channels import Channel, EmailChannel, WebhookChannel
from gateway.notify_dispatch import NoticeDispatcher
from gateway.notify_settings import NotifySettings
from gateway.store import GatewayStore
from spd_common.heartbeat import HeartbeatRegistry
from spd_common.wire import EventKind

log = logging.getLogger(__name__)

__all__ = ["HisHealth", "IncidentWatch", "Kind", "NoticeDispatcher", "Notifier", "close_incident", "his_health"]

CURSOR = "notify"  # the last event id the watch has looked at
SINCE = "notify_since"  # chain breaks detected before this (unix time in ms) are history
ACTOR = "spd-gateway"
BATCH = 2000


class Kind:
    DOOR_FORCED = "door_forced"
    CHAIN_BREAK = "chain_break"
    CHARGES_PARKED = "charges_parked"
    DEVICE_OFFLINE = "device_offline"
    HIS_DOWN = "his_down"


KINDS = (Kind.DOOR_FORCED, Kind.CHAIN_BREAK, Kind.CHARGES_PARKED, Kind.DEVICE_OFFLINE, Kind.HIS_DOWN)


class HisLane(Protocol):
    """What the watch reads of an HIS sender lane (:class:`gateway.his.sender.HisSender`)."""

    lane: int
    failing_since: float | None
    answered_at: float | None
    last_error: str


@dataclass(frozen=True, slots=True)
class HisHealth:
    """``down``: some lane failing longer than the threshold; ``up``: no lane failing and the HIS has answered
    since this process started; neither: not known yet (no incident is opened or resolved on that)."""

    down: bool
    up: bool
    failing: tuple[tuple[int, float, str], ...]  # (lane, failing since, last error) of each failing lane


def his_health(lanes: Sequence[HisLane], *, now: float, down_after_s: float) -> HisHealth:
    failing = tuple((s.lane, s.failing_since, s.last_error) for s in lanes if s.failing_since is not None)
    down = any(now - since >= down_after_s for _, since, _ in failing)
    up = not failing and any(s.answered_at is not None for s in lanes)
    return HisHealth(down, up, failing)


class IncidentWatch(LeaderLoop):
    """Opens and resolves incidents from what the store (and the HIS lanes) show; :meth:`run_once` is one pass."""

    def __init__(
        self,
        store: GatewayStore,
        settings: NotifySettings,
        *,
        his_lanes: Callable[[], Sequence[HisLane]] = lambda: (),
        may_run: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        heartbeats: HeartbeatRegistry | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_change()``: after an incident was opened or resolved (the dispatchers send at once)."""
        self.store = store
        self.settings = settings
        self.channels = settings.channels
        self._on_change = on_change
        self._his_lanes = his_lanes
        self._clock = clock
        self._audit = AuditLog(store)
        self._open: dict[tuple[str, str], IncidentRow] = {}
        super().__init__("notify-watch", settings.check_every_s, may_run=may_run, heartbeats=heartbeats)
        store.devices.init_cursor(CURSOR, store.last_event_id())
        store.devices.init_cursor(SINCE, int(clock() * 1000))

    # ------------------------------------------------------------ opening and resolving

    def is_open(self, kind: str, subject: str) -> bool:
        return (kind, subject) in self._open

    def open(self, kind: str, subject: str, summary: str, **detail: Any) -> IncidentRow | None:
        if self.is_open(kind, subject):
            return None
        incident = self.store.incidents.open(kind, subject, summary, detail, at=self._clock(), channels=self.channels)
        if incident is not None:
            self._open[(kind, subject)] = incident
            self._on_change()
            log.warning("incident %d opened: %s %s: %s", incident.id, kind, subject, summary)
            self._audit.record(ACTOR, AuditAction.INCIDENT_OPENED, device=subject, incident=incident.id, kind=kind,
                               summary=summary, notices=list(self.channels))
        return incident

    def resolve(self, kind: str, subject: str, resolution: str) -> IncidentRow | None:
        if not self.is_open(kind, subject):
            return None
        incident = self.store.incidents.resolve(kind, subject, resolution, at=self._clock(), by=ACTOR,
                                                channels=self.channels)
        self._open.pop((kind, subject), None)
        if incident is not None:
            self._on_change()
            log.warning("incident %d resolved: %s %s: %s", incident.id, kind, subject, resolution)
            self._audit.record(ACTOR, AuditAction.INCIDENT_RESOLVED, device=subject, incident=incident.id, kind=kind,
                               resolution=resolution, notices=list(self.channels))
        return incident

    # ------------------------------------------------------------ one pass

    def run_once(self) -> None:
        """Every check once; a check that fails is logged and the others still run."""
        try:  # what is open now (a person may have closed one meanwhile): the checks write only on a change
            self._open = {(i.kind, i.subject): i for i in self.store.incidents.open_incidents()}
        except Exception:
            log.exception("incident checks: the open incidents cannot be read; next pass retries")
            return
        for check in (self._follow_events, self._chain_breaks, self._parked, self._offline, self._his):
            try:
                check()
            except Exception:
                log.exception("incident check %s failed; next pass retries", check.__name__)

    def _follow_events(self) -> None:
        while True:
            after = self.store.cursor(CURSOR)
            rows = self.store.events.events_of_kinds((EventKind.ALARM.value, EventKind.ACCESS.value),
                                                     after_id=after, limit=BATCH)
            for row in rows:
                body = _json(row.body)
                if row.kind == EventKind.ALARM.value and body.get("alarm") == Kind.DOOR_FORCED:
                    dept = body.get("dept") or "?"
                    acted = self.open(Kind.DOOR_FORCED, row.device,
                                      f"door {body.get('door') or 'door'} of cabinet {row.device} (dept {dept}) "
                                      f"forced open (cabinet event seq {row.seq})", seq=row.seq, dept=dept,
                                      ts_ms=row.ts_ms)
                elif row.kind == EventKind.ACCESS.value and body.get("result") == "door_closed":
                    acted = self.resolve(Kind.DOOR_FORCED, row.device, f"door closed (cabinet event seq {row.seq})")
                else:
                    continue
                if acted is not None:  # past this event for good: a failure further on does not repeat it
                    self.store.devices.set_cursor(CURSOR, row.id)
            if rows:
                self.store.devices.set_cursor(CURSOR, rows[-1].id)
            if len(rows) < BATCH:
                return

    def _chain_breaks(self) -> None:
        since = self.store.cursor(SINCE) / 1000
        for device, detected_at in self.store.monitoring.last_chain_break_per_device().items():
            closed = self.store.incidents.last_resolved_at(Kind.CHAIN_BREAK, device)
            if detected_at < since or (closed is not None and detected_at <= closed):
                continue  # history, or already told and closed by a person
            self.open(Kind.CHAIN_BREAK, device, f"the event log of {device} does not chain: events altered, "
                      "removed or forged (spd-gateway alarms lists the breaks)", detected_at=detected_at)

    def _parked(self) -> None:
        parked = self.store.monitoring.parked()
        if parked.parked == 0:
            self.resolve(Kind.CHARGES_PARKED, "his", "no charge is parked any more (re-sent or settled)")
            return
        summary = (f"{parked.parked} charge(s) refused by the HIS and parked, waiting for a person "
                   f"(spd-gateway charges list; latest: {', '.join(parked.newest)})")
        detail = {"count": parked.parked, "newest": list(parked.newest)}
        current = self._open.get((Kind.CHARGES_PARKED, "his"))
        if current is None:
            self.open(Kind.CHARGES_PARKED, "his", summary, **detail)
        elif _json(current.detail) != detail:  # more parked since it was opened: the listing shows the count now
            self.store.incidents.update_open(Kind.CHARGES_PARKED, "his", summary, detail)

    def _offline(self) -> None:
        now = self._clock()
        limit = self.settings.offline_after_s
        for row in self.store.devices.states():
            if row.last_seen is None:
                continue  # enrolled, never heard from: not offline, not yet installed
            silent = now - row.last_seen
            if silent > limit:
                self.open(Kind.DEVICE_OFFLINE, row.device,
                          f"device {row.device} (site {row.site}) not heard from for {silent:.0f} s "
                          f"(last status {row.status}, {row.backlog} events waiting on it then)",
                          last_seen=row.last_seen, status=row.status, backlog=row.backlog)
            else:
                self.resolve(Kind.DEVICE_OFFLINE, row.device, f"device {row.device} heard from again")

    def _his(self) -> None:
        health = his_health(self._his_lanes(), now=self._clock(), down_after_s=self.settings.his_down_after_s)
        if health.down:
            lanes = ", ".join(str(lane) for lane, _, _ in health.failing)
            longest = self._clock() - min(since for _, since, _ in health.failing)
            self.open(Kind.HIS_DOWN, "his", f"the HIS has not answered on lane(s) {lanes} for {longest:.0f} s; "
                      f"charges wait in the outbox (last error: {health.failing[0][2]})",
                      lanes=[lane for lane, _, _ in health.failing])
        elif health.up:
            self.resolve(Kind.HIS_DOWN, "his", "the HIS answers again on every lane")



def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Notifier:
    """The watch and one dispatcher per configured channel, started and stopped together."""

    def __init__(self, store: GatewayStore, settings: NotifySettings, *, gateway: str,
                 his_lanes: Callable[[], Sequence[HisLane]] = lambda: (), may_run: Callable[[], bool] = lambda: True,
                 heartbeats: HeartbeatRegistry | None = None) -> None:
        channels: list[Channel] = []
        if settings.smtp is not None:
            channels.append(EmailChannel(settings.smtp, gateway=gateway))
        if settings.webhook is not None:
            channels.append(WebhookChannel(settings.webhook, gateway=gateway))
        self.dispatchers = [NoticeDispatcher(store, c, settings, may_run=may_run, heartbeats=heartbeats)
                            for c in channels]
        self.watch = IncidentWatch(store, settings, his_lanes=his_lanes, may_run=may_run, heartbeats=heartbeats,
                                   on_change=self._wake_dispatchers)

    def _wake_dispatchers(self) -> None:
        for d in self.dispatchers:
            d.notify()

    def start(self) -> Notifier:
        self.watch.start()
        for d in self.dispatchers:
            d.start()
        return self

    def stop(self) -> None:
        self.watch.stop()
        for d in self.dispatchers:
            d.stop()


def close_incident(store: GatewayStore, incident_id: int, *, by: str, note: str) -> IncidentRow | None:
    """A person resolves an open incident (a chain break looked into); the resolved notice goes out on the
    channels its opened notice went to, by the running gateway's dispatchers."""
    incident = store.incidents.get(incident_id)
    if incident is None or incident.state != "open":
        return None
    done = store.incidents.resolve(incident.kind, incident.subject, note or "closed by a person", at=time.time(),
                                   by=by, channels=None)
    if done is not None:
        AuditLog(store).record(by, AuditAction.INCIDENT_RESOLVED, device=incident.subject, incident=incident.id,
                               kind=incident.kind, resolution=done.resolution)
    return done
