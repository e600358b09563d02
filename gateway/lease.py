"""Leases among gateway instances sharing one store: the ``charging`` lease, and each instance's membership.

Every instance ingests (MQTT 5 shared subscription spreads the events). The
charging worker (stored events → outbox, in store order, against one set of
consumed items) runs on the holder of the ``charging`` lease only. The HIS
sending is shared: each live instance renews its own membership lease
(``member:<client id>``, :mod:`gateway.data.claims`) and sends the charges it
claimed. A holder renews its lease every quarter of its time-to-live; when it
dies, another instance takes over after the lease runs out. A holder that
cannot renew in time stops itself a third of the lease before it ends.
"""

from __future__ import annotations

import logging
import threading
import time

from gateway.store import GatewayStore
from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)

CHARGING_LEASE = "charging"


class Leadership:
    """Keeps (or waits for) the ``charging`` lease in a background thread.

    Renewals start every quarter of the time-to-live, counted from the start of the last one, so a
    renewal that waits on a busy store delays the next one only by what it waited beyond that: the
    holder stops acting a third of the lease before it could run out, so one renewal may take up to
    5/12 of the lease before the holder pauses. :attr:`term` counts the times the lease was taken
    anew (first taken, or taken back after it could have run out); a renewal that came late but found
    the lease still this holder's is the same term, so nothing another instance did can have happened
    in between (charging reloads its consumed items only on a new term).
    """

    def __init__(self, store: GatewayStore, holder: str, *, ttl_s: float = 6.0,
                 heartbeats: HeartbeatRegistry | None = None, lease: str = CHARGING_LEASE,
                 role: str = "runs charging and the HIS sender", release_at_stop: bool = True) -> None:
        self.store = store
        self.holder = holder
        self.ttl_s = ttl_s
        self.lease = lease
        self.role = role
        self.release_at_stop = release_at_stop  # False for a lease held together with another process
        self.term = 0
        self._valid_until = 0.0  # the start of the last renewal that held the lease, plus the ttl; 0: not held
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # renewals every ttl/4; one may wait 30 s on a busy store
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat(
            "lease" if lease == CHARGING_LEASE else f"lease-{lease.split(':')[0]}", deadline_s=max(60.0, 3 * ttl_s))

    def is_leader(self) -> bool:
        # keep a safety margin: stop acting a third of the ttl before the lease could be taken
        return time.monotonic() < self._valid_until - self.ttl_s / 3

    def renew(self) -> bool:
        t0 = time.monotonic()
        try:
            held = self.store.hold_lease(self.lease, self.holder, self.ttl_s)
        except Exception:
            log.exception("lease renewal failed")
            held = False
        t1 = time.monotonic()
        was = self.is_leader()
        # the row written by the last renewal had not run out when this one was written: the same term
        same_term = held and t1 < self._valid_until
        if held and not same_term:
            self.term += 1
        self._valid_until = t0 + self.ttl_s if held else 0.0
        if held and not was:
            if same_term:
                log.warning("gateway %s: lease renewed late (%.2f s): paused, now %s again", self.holder,
                            t1 - t0, self.role)
            else:
                log.info("gateway %s: now %s", self.holder, self.role)
        elif was and not held:
            log.warning("gateway %s: lost the %s lease", self.holder, self.lease)
        return held

    def start(self) -> Leadership:
        self.renew()
        self._beat.watch()
        self._thread = threading.Thread(target=self._run, name=self._beat.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        every = self.ttl_s / 4
        due = time.monotonic() + every
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self._beat()
            due = time.monotonic() + every
            self.renew()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._beat.retire()
        if self._valid_until and self.release_at_stop:
            try:
                self.store.release_lease(self.lease, self.holder)
            except Exception:
                log.exception("lease release failed")
        self._valid_until = 0.0
