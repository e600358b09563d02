"""Fleet and device state: what each device last reported, the fleet's desired and applied versions, command
sequence numbers, alarms reported by devices, leases between gateway instances, the loops' cursors."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import NamedTuple

from gateway.data.engine import Engine, Transaction
from spd_common.wire import DeviceState


class DeviceStateRow(NamedTuple):
    """One row of ``devices``: what the device last reported."""

    device: str
    site: str
    last_seen: float | None
    status: str
    backlog: int
    version: str


class DesiredRow(NamedTuple):
    component: str
    version: int
    doc: str  # JSON


class AlarmEvent(NamedTuple):
    """An ``alarm`` event a device reported (refused command, forced door ...)."""

    device: str
    seq: int
    body: str  # JSON as stored


class DeviceStore:
    """The ``devices``, ``fleet_desired``, ``fleet_applied``, ``command_seq``, ``leases`` and ``cursors`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def update_device_state(self, site: str, state: DeviceState, *, live: bool = True) -> None:
        """Record a device's state. ``live``: it just arrived, so the device was seen now.

        A retained state the broker replays when the gateway (re)subscribes is not a sighting: the
        device's ``last_seen`` stays as it was (a device never recorded gets its own timestamp).
        """
        self.update_device_states([(site, state, live)])

    def update_device_states(self, states: Sequence[tuple[str, DeviceState, bool]]) -> None:
        """Record many states (site, state, live) in ONE transaction, in order, each as :meth:`update_device_state`
        records it (the ingest writer's group: a thousand devices connecting are one commit, not a thousand)."""
        now = time.time()
        with self._engine.transaction() as db:
            for site, state, live in states:
                self._record_state(db, site, state, live, now)

    @staticmethod
    def _record_state(db: Transaction, site: str, state: DeviceState, live: bool, now: float) -> None:
        if live:
            db.execute(
                "INSERT INTO devices (device, site, last_seen, status, backlog, version) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen, status = excluded.status, "
                "backlog = excluded.backlog, version = excluded.version",
                (state.device, site, now, state.status.value, state.backlog, state.version),
            )
            return
        db.execute(
            "INSERT INTO devices (device, site, last_seen, status, backlog, version) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device) DO UPDATE SET last_seen = COALESCE(devices.last_seen, excluded.last_seen), "
            "status = excluded.status, backlog = excluded.backlog, version = excluded.version",
            (state.device, site, state.ts_ms / 1000 if state.ts_ms > 0 else None, state.status.value,
             state.backlog, state.version),
        )

    def contiguous_seq(self, device: str) -> int:
        rows = self._engine.query("SELECT contiguous_seq FROM devices WHERE device = ?", (device,))
        return int(rows[0][0]) if rows else 0

    def hold_lease(self, name: str, holder: str, ttl_s: float, *, now: float | None = None) -> bool:
        """Take or renew the lease ``name`` for ``holder``; False while another holder's lease is live.

        Several gateway instances share one store; only the holder of the
        ``charging`` lease runs the charging worker and the HIS sender, so a
        charge is never sent by two instances at once. A killed holder's lease
        runs out after ``ttl_s`` and another instance takes over.
        """
        t = time.time() if now is None else now
        with self._engine.transaction() as db:  # one statement: two gateways racing for a free lease, one wins
            taken = db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
                (name, holder, t + ttl_s, t),
            ).rowcount
        return taken == 1

    def release_lease(self, name: str, holder: str) -> None:
        with self._engine.transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def cursor(self, name: str) -> int:
        rows = self._engine.query("SELECT value FROM cursors WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def set_cursor(self, name: str, value: int) -> None:
        with self._engine.transaction() as db:
            db.execute("INSERT INTO cursors (name, value) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))

    def init_cursor(self, name: str, value: int) -> None:
        """Set ``name`` to ``value`` unless it is set already."""
        with self._engine.transaction() as db:
            db.execute("INSERT INTO cursors (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, value))

    # ------------------------------------------------------------ the fleet

    def register(self, site: str, device: str) -> None:
        """Make a device known before it ever reports (at enrolment)."""
        with self._engine.transaction() as db:
            db.execute("INSERT INTO devices (device, site) VALUES (?, ?) ON CONFLICT DO NOTHING", (device, site))

    def known(self) -> list[tuple[str, str]]:
        """(site, device) of every known device, by device."""
        return [(str(s), str(d)) for d, s in self._engine.query("SELECT device, site FROM devices ORDER BY device")]

    def states(self) -> list[DeviceStateRow]:
        rows = self._engine.query(
            "SELECT device, site, last_seen, status, backlog, version FROM devices ORDER BY site, device")
        return [DeviceStateRow(r[0], r[1], r[2], r[3], int(r[4]), r[5]) for r in rows]

    def push_desired(self, site: str, device: str, component: str, doc: str, *, by: str, now: float) -> int:
        """Store the next version of ``component`` for ``device``; that version."""
        with self._engine.transaction() as db:
            row = db.execute("SELECT version FROM fleet_desired WHERE device = ? AND component = ?",
                             (device, component)).fetchone()
            version = (row[0] if row else 0) + 1
            db.execute(
                "INSERT INTO fleet_desired (device, site, component, version, doc, pushed_at, pushed_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, component) DO UPDATE SET "
                "version = excluded.version, doc = excluded.doc, pushed_at = excluded.pushed_at, "
                "pushed_by = excluded.pushed_by, site = excluded.site",
                (device, site, component, version, doc, now, by))
        return int(version)

    def desired(self, device: str) -> list[DesiredRow]:
        rows = self._engine.query("SELECT component, version, doc FROM fleet_desired WHERE device = ?", (device,))
        return [DesiredRow(str(c), int(v), str(d)) for c, v, d in rows]

    def record_applied(self, device: str, applied: dict[str, int], *, now: float) -> None:
        with self._engine.transaction() as db:
            db.execute("INSERT INTO fleet_applied (device, applied, reported_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (device) DO UPDATE SET applied = excluded.applied, "
                       "reported_at = excluded.reported_at", (device, json.dumps(applied), now))

    def applied(self, device: str) -> dict[str, int]:
        rows = self._engine.query("SELECT applied FROM fleet_applied WHERE device = ?", (device,))
        return {str(k): int(v) for k, v in json.loads(rows[0][0]).items()} if rows else {}

    def next_command_seq(self, device: str) -> int:
        """The next sequence number of a command to ``device`` (durable: never reused)."""
        with self._engine.transaction() as db:
            db.execute("INSERT INTO command_seq (device, seq) VALUES (?, 1) "
                       "ON CONFLICT (device) DO UPDATE SET seq = command_seq.seq + 1", (device,))
            (seq,) = db.execute("SELECT seq FROM command_seq WHERE device = ?", (device,)).fetchone()
        return int(seq)

    # ------------------------------------------------------------ alarms the devices reported

    def alarm_events(self) -> list[AlarmEvent]:
        rows = self._engine.query("SELECT device, seq, body FROM events WHERE kind = 'alarm' ORDER BY id")
        return [AlarmEvent(str(d), int(s), str(b)) for d, s, b in rows]

    def alarm_counts(self) -> dict[str, int]:
        """Per device, how many ``alarm`` events it reported."""
        rows = self._engine.query("SELECT device, COUNT(*) FROM events WHERE kind = 'alarm' GROUP BY device")
        return {str(d): int(n) for d, n in rows}
