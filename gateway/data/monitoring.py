"""Read-only figures for the metrics scrape and the incident checks (gateway/metrics.py, gateway/notify.py).

Each is one cheap query on an indexed column or a small table; a scrape runs them all, so none of them
walks the events table (alarm events are found by the ``events_kind`` index).
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.data.engine import Engine


class ParkedSummary(NamedTuple):
    parked: int
    oldest_at: float | None  # when the longest-parked charge was parked
    newest: tuple[str, ...]  # a few charge ids, newest first


class MonitoringQueries:
    """The counts behind ``/metrics`` and the incident checks; no writes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _count(self, sql: str) -> int:
        return int(self._engine.query(sql)[0][0])

    def charges_in(self, status: str) -> int:
        """Charges and credits with this status: a range of the ``charges_status`` index, cheap for the few that
        wait (pending, parked, voided); ``accepted`` holds nearly every row ever, so it is not asked at a scrape."""
        return int(self._engine.query("SELECT COUNT(*) FROM charges WHERE status = ?", (status,))[0][0])

    def pending_by_admission(self) -> list[tuple[str, int]]:
        """(admission, pending charges): the outbox, for counting per HIS lane (a lane is a function of it)."""
        rows = self._engine.query("SELECT admission, COUNT(*) FROM charges WHERE status = 'pending' GROUP BY admission")
        return [(str(a), int(n)) for a, n in rows]

    def parked(self, *, newest: int = 5) -> ParkedSummary:
        (count, oldest), = self._engine.query("SELECT COUNT(*), MIN(finished_at) FROM charges WHERE status = 'parked'")
        ids = self._engine.query("SELECT charge_id FROM charges WHERE status = 'parked' ORDER BY id DESC LIMIT ?",
                                 (newest,))
        return ParkedSummary(int(count), None if oldest is None else float(oldest), tuple(str(r[0]) for r in ids))

    def quarantined(self) -> int:
        return self._count("SELECT COUNT(*) FROM quarantine")

    def bad_payloads(self) -> int:
        return self._count("SELECT COUNT(*) FROM bad_payloads")

    def chain_breaks(self) -> int:
        return self._count("SELECT COUNT(*) FROM chain_breaks")

    def alarm_bodies(self, *, after_id: int = 0, limit: int = 10000) -> list[tuple[int, str]]:
        """(id, body as JSON) of the ``alarm`` events stored after ``after_id``, in store order."""
        rows = self._engine.query("SELECT id, body FROM events WHERE kind = 'alarm' AND id > ? ORDER BY id LIMIT ?",
                                  (after_id, limit))
        return [(int(i), str(b)) for i, b in rows]

    def open_link_alarms(self) -> int:
        """``not_linked`` alarms no scan has resolved yet."""
        return self._count("SELECT COUNT(*) FROM link_alarms WHERE resolved_by = ''")

    def last_chain_break_per_device(self) -> dict[str, float]:
        """Per device, when its latest chain break was detected."""
        rows = self._engine.query("SELECT device, MAX(detected_at) FROM chain_breaks GROUP BY device")
        return {str(d): float(t) for d, t in rows}
