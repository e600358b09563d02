"""Incidents and their notices: what the notification loop found, and what it owes each channel.

``incidents``: one row per incident, keyed by ``kind`` and ``subject`` (``device_offline`` / ``CAB01``); at
most one open per key (a partial unique index), so an incident is opened once and a condition seen again
while it is open adds nothing. A resolved incident stays as history; the next occurrence is a new row.

``incident_notices``: one row per incident, event (``opened``, ``resolved``) and channel (``email``,
``webhook``), written in the same transaction as the incident's change, so a notice is owed exactly when
the change is stored: a restart sends what was still pending and nothing that was sent.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from gateway.data.engine import Engine

OPEN = "open"
RESOLVED = "resolved"


class IncidentRow(NamedTuple):
    id: int
    kind: str
    subject: str
    state: str
    summary: str
    detail: str  # JSON
    opened_at: float
    resolved_at: float | None
    resolved_by: str
    resolution: str


class NoticeRow(NamedTuple):
    """A notice due on a channel, with the incident it tells about."""

    id: int
    event: str  # opened / resolved
    channel: str
    attempts: int
    created_at: float
    incident: IncidentRow


_INCIDENT_COLUMNS = "id, kind, subject, state, summary, detail, opened_at, resolved_at, resolved_by, resolution"


def _incident(row: Any) -> IncidentRow:
    return IncidentRow(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]),
                       float(row[6]), None if row[7] is None else float(row[7]), str(row[8]), str(row[9]))


class IncidentStore:
    """The ``incidents`` and ``incident_notices`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def open(self, kind: str, subject: str, summary: str, detail: dict[str, Any], *, at: float,
             channels: tuple[str, ...]) -> IncidentRow | None:
        """Open the incident ``kind``/``subject`` with a notice owed to each channel; None if it is open already."""
        with self._engine.transaction() as db:
            if db.execute("SELECT 1 FROM incidents WHERE kind = ? AND subject = ? AND state = 'open'",
                          (kind, subject)).fetchone() is not None:
                return None
            db.execute("INSERT INTO incidents (kind, subject, state, summary, detail, opened_at) "
                       "VALUES (?, ?, 'open', ?, ?, ?)",
                       (kind, subject, summary, json.dumps(detail, sort_keys=True, ensure_ascii=False), at))
            row = db.execute(f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE kind = ? AND subject = ? "
                             "AND state = 'open'", (kind, subject)).fetchone()
            incident = _incident(row)
            for channel in channels:
                db.execute("INSERT INTO incident_notices (incident_id, event, channel, created_at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (incident_id, event, channel) DO NOTHING", (incident.id, "opened", channel, at))
        return incident

    def resolve(self, kind: str, subject: str, resolution: str, *, at: float, by: str,
                channels: tuple[str, ...] | None) -> IncidentRow | None:
        """Resolve the open incident ``kind``/``subject`` with a notice owed to each channel; None if none is open.

        ``channels`` None: the channels its ``opened`` notice was owed to (a person closing it from the command
        line, which does not know the gateway's channels)."""
        with self._engine.transaction() as db:
            row = db.execute(f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE kind = ? AND subject = ? "
                             "AND state = 'open'", (kind, subject)).fetchone()
            if row is None:
                return None
            incident = _incident(row)
            if channels is None:
                channels = tuple(str(c) for (c,) in db.execute(
                    "SELECT channel FROM incident_notices WHERE incident_id = ? AND event = 'opened' ORDER BY id",
                    (incident.id,)).fetchall())
            db.execute("UPDATE incidents SET state = 'resolved', resolved_at = ?, resolved_by = ?, resolution = ? "
                       "WHERE id = ?", (at, by, resolution, incident.id))
            for channel in channels:
                db.execute("INSERT INTO incident_notices (incident_id, event, channel, created_at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (incident_id, event, channel) DO NOTHING",
                           (incident.id, "resolved", channel, at))
        return incident._replace(state=RESOLVED, resolved_at=at, resolved_by=by, resolution=resolution)

    def update_open(self, kind: str, subject: str, summary: str, detail: dict[str, Any]) -> None:
        """Keep an open incident's summary current (how many charges are parked now); no notice."""
        with self._engine.transaction() as db:
            db.execute("UPDATE incidents SET summary = ?, detail = ? WHERE kind = ? AND subject = ? AND state = 'open'",
                       (summary, json.dumps(detail, sort_keys=True, ensure_ascii=False), kind, subject))

    def get(self, incident_id: int) -> IncidentRow | None:
        rows = self._engine.query(f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,))
        return _incident(rows[0]) if rows else None

    def open_incidents(self) -> list[IncidentRow]:
        rows = self._engine.query(f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE state = 'open' ORDER BY id")
        return [_incident(r) for r in rows]

    def listing(self, *, state: str | None, limit: int) -> list[IncidentRow]:
        """Incidents, newest first; ``state`` ``open`` or ``resolved`` (None: both)."""
        if state is None:
            rows = self._engine.query(f"SELECT {_INCIDENT_COLUMNS} FROM incidents ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._engine.query(f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE state = ? "
                                      "ORDER BY id DESC LIMIT ?", (state, limit))
        return [_incident(r) for r in rows]

    def last_resolved_at(self, kind: str, subject: str) -> float | None:
        """When the latest resolved incident of this key was resolved (None: never)."""
        rows = self._engine.query("SELECT MAX(resolved_at) FROM incidents WHERE kind = ? AND subject = ? "
                                  "AND state = 'resolved'", (kind, subject))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def open_counts(self) -> dict[str, int]:
        """Open incidents per kind."""
        rows = self._engine.query("SELECT kind, COUNT(*) FROM incidents WHERE state = 'open' GROUP BY kind")
        return {str(k): int(n) for k, n in rows}

    # ------------------------------------------------------------ notices

    def due_notices(self, channel: str, *, now: float, limit: int = 50) -> list[NoticeRow]:
        """Pending notices of ``channel`` whose time has come, oldest first; a ``resolved`` notice waits while the
        ``opened`` one of its incident is still pending on that channel."""
        cols = ", ".join(f"i.{c.strip()}" for c in _INCIDENT_COLUMNS.split(","))
        rows = self._engine.query(
            f"SELECT n.id, n.event, n.channel, n.attempts, n.created_at, {cols} FROM incident_notices n "
            "JOIN incidents i ON i.id = n.incident_id "
            "WHERE n.channel = ? AND n.status = 'pending' AND n.next_attempt_at <= ? AND NOT EXISTS ("
            "SELECT 1 FROM incident_notices p WHERE p.incident_id = n.incident_id AND p.channel = n.channel "
            "AND p.id < n.id AND p.status = 'pending') ORDER BY n.id LIMIT ?", (channel, now, limit))
        return [NoticeRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), _incident(r[5:])) for r in rows]

    def mark_sent(self, notice_id: int, *, at: float) -> None:
        with self._engine.transaction() as db:
            db.execute("UPDATE incident_notices SET status = 'sent', attempts = attempts + 1, sent_at = ?, "
                       "last_error = '' WHERE id = ?", (at, notice_id))

    def mark_retry(self, notice_id: int, error: str, *, next_attempt_at: float) -> None:
        with self._engine.transaction() as db:
            db.execute("UPDATE incident_notices SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                       "WHERE id = ?", (error[:1000], next_attempt_at, notice_id))

    def mark_failed(self, notice_id: int, error: str) -> None:
        """Given up: the notice will not be sent (the incident itself stays as it is)."""
        with self._engine.transaction() as db:
            db.execute("UPDATE incident_notices SET status = 'failed', attempts = attempts + 1, last_error = ? "
                       "WHERE id = ?", (error[:1000], notice_id))

    def notices_of(self, incident_id: int) -> list[tuple[str, str, str, int, str]]:
        """(event, channel, status, attempts, last error) of an incident's notices, in order."""
        rows = self._engine.query("SELECT event, channel, status, attempts, last_error FROM incident_notices "
                                  "WHERE incident_id = ? ORDER BY id", (incident_id,))
        return [(str(e), str(c), str(s), int(a), str(err)) for e, c, s, a, err in rows]

    def notice_counts(self) -> dict[tuple[str, str], int]:
        """Notices per (channel, status)."""
        rows = self._engine.query("SELECT channel, status, COUNT(*) FROM incident_notices GROUP BY channel, status")
        return {(str(c), str(s)): int(n) for c, s, n in rows}
