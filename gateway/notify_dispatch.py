"""Sending one channel's incident notices (e-mail or webhook), oldest first, with back-off and an audit trail.

The ``notify-email`` / ``notify-webhook`` loop of :mod:`gateway.notify`: takes the notices due
(:meth:`gateway.data.incidents.IncidentStore.due_notices`), hands each to its channel
(:mod:`gateway.notify_channels`), marks it sent, or has it wait ``retry_first_s`` doubling up to
``retry_max_s`` (:mod:`spd_common.backoff`) and gives up after ``give_up_after_s``. The first failure of
a notice, a delivery after failures and giving up are in the audit log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.audit import AuditAction, AuditLog
from gateway.data.incidents import NoticeRow
from gateway.notify_channels import Channel, DeliveryError
from gateway.notify_settings import NotifySettings
from gateway.store import GatewayStore
from spd_common.backoff import backoff_delay
from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)

ACTOR = "spd-gateway"


class NoticeDispatcher:
    """Sends one channel's notices; :meth:`run_once` sends what is due."""

    def __init__(
        self,
        store: GatewayStore,
        channel: Channel,
        settings: NotifySettings,
        *,
        idle_wait_s: float = 1.0,
        may_run: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        heartbeats: HeartbeatRegistry | None = None,
    ) -> None:
        self.store = store
        self._may_run = may_run
        self.channel = channel
        self.settings = settings
        self.idle_wait_s = idle_wait_s
        self.sent = 0
        self.failed_attempts = 0
        self._clock = clock
        self._audit = AuditLog(store)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = f"notify-{channel.name}"
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat(self._name, deadline_s=60.0)

    def notify(self) -> None:
        self._wake.set()

    def run_once(self) -> int:
        """Deliver the notices due now; how many were delivered (none unless this instance holds the lease: two
        gateways on one store must not both send a notice)."""
        if not self._may_run():
            return 0
        delivered = 0
        for notice in self.store.incidents.due_notices(self.channel.name, now=self._clock()):
            if self._stop.is_set():
                break
            with self._beat.blocking(4 * self.channel.timeout_s + 60.0):
                ok = self._deliver(notice)
            delivered += ok
            if not ok:
                break  # the channel is failing: the rest wait for the next pass, in order
        return delivered

    def _deliver(self, notice: NoticeRow) -> bool:
        i = notice.incident
        what: dict[str, Any] = dict(incident=i.id, kind=i.kind, event=notice.event, channel=self.channel.name,
                                    notice=notice.id)
        try:
            self.channel.deliver(notice)
        except DeliveryError as err:
            return self._failed(notice, str(err), what)
        except Exception as err:  # a fault of the channel with this notice: retried like any failure
            log.exception("%s: delivering notice %d failed", self._name, notice.id)
            return self._failed(notice, f"{type(err).__name__}: {err}", what)
        now = self._clock()
        self.store.incidents.mark_sent(notice.id, at=now)
        self.sent += 1
        log.info("%s: notice %d sent (%s %s %s)", self._name, notice.id, notice.event, i.kind, i.subject)
        if notice.attempts > 0:
            self._audit.record(ACTOR, AuditAction.NOTICE_SENT, device=i.subject, attempts=notice.attempts + 1, **what)
        return True

    def _failed(self, notice: NoticeRow, error: str, what: dict[str, Any]) -> bool:
        self.failed_attempts += 1
        now = self._clock()
        i = notice.incident
        if now - notice.created_at >= self.settings.give_up_after_s:
            self.store.incidents.mark_failed(notice.id, error)
            log.error("%s: notice %d given up after %d attempts: %s", self._name, notice.id, notice.attempts + 1,
                      error)
            self._audit.record(ACTOR, AuditAction.NOTICE_FAILED, device=i.subject, outcome="given_up",
                               attempts=notice.attempts + 1, error=error, **what)
            return False
        delay = backoff_delay(notice.attempts, first_s=self.settings.retry_first_s,
                              ceiling_s=self.settings.retry_max_s)
        self.store.incidents.mark_retry(notice.id, error, next_attempt_at=now + delay)
        log.warning("%s: notice %d not delivered (%s); retry in %.0f s", self._name, notice.id, error, delay)
        if notice.attempts == 0:
            self._audit.record(ACTOR, AuditAction.NOTICE_FAILED, device=i.subject, outcome="retrying",
                               attempts=1, error=error, **what)
        return False

    def start(self) -> NoticeDispatcher:
        self._beat.watch()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=4 * self.channel.timeout_s + 5)
        self._beat.retire()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat()
            try:
                self.run_once()
            except Exception:
                log.exception("%s: pass failed; retrying", self._name)
            self._wake.wait(self.idle_wait_s)
            self._wake.clear()
