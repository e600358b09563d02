"""Publishing the device catalog document and the allow-list from the gateway's own tables, through the fleet.

:func:`publish_catalog` builds the document (:func:`gateway.catalog_export.build_device_catalog`) and
pushes it as the ``catalog`` component; :func:`publish_allowlist` does the same for the staff
allow-list of a department (:func:`gateway.staff.build_allowlist`). ``spd-gateway push --build`` calls
them; the running gateway calls :class:`CatalogPublisher` after each census change.

:class:`CatalogPublisher` debounces: an ADT burst (a morning of admissions, a ward transfer of twenty
patients) becomes one push once the feed has been quiet for `debounce_s`, and at most `max_delay_s`
after the first change, so a steady trickle still reaches the handhelds; and never sooner than
`min_interval_s` after the previous push, because every push carries the whole document (items,
lists and census: megabytes at a large hospital) to every device. A document whose content did not
change (same digest) is not pushed again.

Threads: ``catalog-publisher`` builds and pushes; :meth:`CatalogPublisher.changed` may be called from
any thread (the ADT connections). The thread beats the ``catalog-publisher`` heartbeat
(:mod:`device.heartbeat`): while idle it wakes every `IDLE_WAKE_S` to beat (a quiet census may last a
night), and a build and push declares its own, longer deadline (`PUBLISH_DEADLINE_S`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.catalog_export import DEFAULT_DISCHARGE_GRACE_S, build_device_catalog
from gateway.fleet import Fleet
from gateway.store import GatewayStore
from spd_common.command_schema import Component
from spd_common.heartbeat import HeartbeatRegistry

log = logging.getLogger(__name__)

IDLE_WAKE_S = 5.0  # the longest wait between two passes, pending or not
LOOP_DEADLINE_S = 60.0  # a pass every IDLE_WAKE_S; reading what is due takes a lock held for microseconds
PUBLISH_DEADLINE_S = 300.0
"""One build and push: the whole catalog and census read from the store (which may wait out its 30 s busy
timeout), a document of megabytes signed and written to the fleet's desired state."""


def publish_catalog(fleet: Fleet, store: GatewayStore, *, requested_by: str, dept: str | None = None,
                    devices: list[tuple[str, str]] | None = None,
                    discharge_grace_s: float = DEFAULT_DISCHARGE_GRACE_S) -> tuple[dict[str, Any], dict[str, int]]:
    """Build the catalog document and push it; (document, fleet version per device)."""
    doc = build_device_catalog(store, dept=dept, discharge_grace_s=discharge_grace_s)
    return doc, fleet.push(Component.CATALOG, doc, requested_by=requested_by, devices=devices)


def publish_allowlist(fleet: Fleet, store: GatewayStore, *, dept: str, requested_by: str,
                      devices: list[tuple[str, str]] | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Build `dept`'s allow-list from the staff table and push it; (list, fleet version per device)."""
    from gateway.staff import build_allowlist

    doc = build_allowlist(store, dept=dept)
    return doc, fleet.push(Component.ALLOWLIST, doc, requested_by=requested_by, devices=devices)


class CatalogPublisher:
    """Re-publishes the catalog document after census changes, debounced; see the module docstring."""

    def __init__(self, store: GatewayStore, fleet: Callable[[], Fleet | None], *, debounce_s: float = 2.0,
                 max_delay_s: float = 15.0, min_interval_s: float = 60.0,
                 discharge_grace_s: float = DEFAULT_DISCHARGE_GRACE_S, requested_by: str = "census",
                 heartbeats: HeartbeatRegistry | None = None) -> None:
        self.store = store
        self.fleet = fleet
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.min_interval_s = min_interval_s
        self.discharge_grace_s = discharge_grace_s
        self.requested_by = requested_by
        self.published = 0  # pushes made
        self.last_digest: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first: float | None = None
        self._last = 0.0
        self._pushed_at: float | None = None  # monotonic time of the last push
        self._thread: threading.Thread | None = None
        self._beat = (heartbeats or HeartbeatRegistry()).heartbeat("catalog-publisher", deadline_s=LOOP_DEADLINE_S)

    def changed(self) -> None:
        """The census (or another part of the document) changed: publish soon."""
        now = time.monotonic()
        with self._lock:
            self._first = self._first if self._first is not None else now
            self._last = now
        self._wake.set()

    def start(self) -> CatalogPublisher:
        self._beat.watch()
        self._thread = threading.Thread(target=self._loop, name="catalog-publisher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self._beat.retire()

    def _due_in(self) -> float | None:
        """Seconds until the pending publication is due; None when nothing is pending."""
        with self._lock:
            if self._first is None:
                return None
            now = time.monotonic()
            due = min(self._last + self.debounce_s, self._first + self.max_delay_s)
            if self._pushed_at is not None:
                due = max(due, self._pushed_at + self.min_interval_s)
            return max(0.0, due - now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._beat()
            due = self._due_in()
            if due is None or due > 0:
                self._wake.wait(IDLE_WAKE_S if due is None else min(due, IDLE_WAKE_S))
                self._wake.clear()
                continue
            with self._lock:
                self._first = None
            try:
                with self._beat.blocking(PUBLISH_DEADLINE_S):
                    self.publish_now()
            except Exception:
                log.exception("catalog publisher: publication failed; retrying in %.0f s", self.debounce_s)
                self.changed()
                self._stop.wait(self.debounce_s)

    def publish_now(self) -> bool:
        """Build and push the document now; False when there is no fleet or its content is unchanged."""
        fleet = self.fleet()
        if fleet is None:
            return False
        doc = build_device_catalog(self.store, dept=None, discharge_grace_s=self.discharge_grace_s)
        if doc["digest"] == self.last_digest:
            return False
        versions = fleet.push(Component.CATALOG, doc, requested_by=self.requested_by)
        self._pushed_at = time.monotonic()
        self.last_digest = doc["digest"]
        self.published += 1
        log.info("catalog publisher: document version %d pushed to %d device(s)", doc["version"], len(versions))
        return True
