"""Reads behind the supervisor's screen (gateway/web): outbox figures, charge search, per-day series, cabinets.

Read-only; every query is bounded (a ``LIMIT`` or a time window) and runs on an index the tables already
have (``charges_status``, ``charges (device, seq)``, ``events (device, seq)``, ``events_kind``).
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.data.engine import Engine

DAY_MS = 86_400_000


class ChargeView(NamedTuple):
    """One charge (or credit) as the charges page lists it."""

    charge_id: str
    device: str
    seq: int
    admission: str
    item_key: str
    item_name: str
    status: str
    attempts: int
    ack_code: str | None
    last_error: str
    created_at: float
    finished_at: float | None


class CabinetEvent(NamedTuple):
    id: int
    seq: int
    ts_ms: int
    kind: str
    body: str  # JSON as stored
    stored_at: float


_CHARGE_COLUMNS = ("c.charge_id, c.device, c.seq, c.admission, c.item_key, COALESCE(k.name, ''), c.status, c.attempts, "
                   "c.ack_code, c.last_error, c.created_at, c.finished_at")
_CABINET_KINDS = ("access", "alarm", "taken", "returned", "restocked")


def like_escaped(text: str) -> str:
    """``text`` for a ``LIKE ... ESCAPE '!'`` pattern: its own ``%``, ``_`` and ``!`` match only themselves."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


class DashboardStore:
    """Reads over ``charges``, ``consumption``, ``events`` and ``catalog`` for the web pages and the API."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def charge_status_counts(self) -> dict[str, int]:
        """How many charges (and credits) are pending (the HIS outbox), accepted, parked, voided (a full count)."""
        rows = self._engine.query("SELECT status, COUNT(*) FROM charges GROUP BY status")
        return {str(s): int(n) for s, n in rows}

    def charge_count(self, status: str) -> int:
        """How many charges have ``status``: a range of ``charges_status``, quick for the small ones (pending,
        parked), whatever the month's accepted charges."""
        return int(self._engine.query("SELECT COUNT(*) FROM charges WHERE status = ?", (status,))[0][0])

    def scans_stored_since(self, at: float) -> int:
        """``consume`` events (a nurse's scan of an item onto a patient) the gateway stored since ``at``.

        Store ids grow with arrival, so the first id stored since ``at`` is found by bisection on the primary
        key, and the count is a range of the ``events_kind`` index: no scan of the month's events.
        """
        lo, hi = 1, self.last_event_id() + 1  # the first id stored at or after ``at`` lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            row = self._engine.query("SELECT stored_at FROM events WHERE id >= ? ORDER BY id LIMIT 1", (mid,))
            if not row or row[0][0] >= at:
                hi = mid
            else:
                lo = mid + 1
        return int(self._engine.query("SELECT COUNT(*) FROM events WHERE kind = 'consume' AND id >= ?",
                                      (lo,))[0][0])

    def last_event_id(self) -> int:
        return int(self._engine.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    def gtins_of_item(self, text: str, *, limit: int = 200) -> list[str]:
        """GTINs of the catalog items whose item code is ``text`` or whose name contains it."""
        rows = self._engine.query("SELECT gtin FROM catalog WHERE item_code = ? OR name LIKE ? ESCAPE '!' "
                                  "ORDER BY gtin LIMIT ?", (text, f"%{like_escaped(text)}%", limit))
        return [str(r[0]) for r in rows]

    def search_charges(self, *, admission: str | None = None, gtin: str | None = None, serial: str | None = None,
                       status: str | None = None, gtins: list[str] | None = None,
                       limit: int = 200) -> list[ChargeView]:
        """Charges newest first, filtered by admission (exact), item GTIN (or its beginning), serial, status and
        a list of GTINs (an item searched by code or name, :meth:`gtins_of_item`).

        Only the filters given are in the statement, so SQLite picks the index they allow (``charges_admission``,
        ``charges_status``) instead of walking every charge.
        """
        where: list[str] = []
        params: list[object] = []
        if admission is not None:
            where.append("c.admission = ?")
            params.append(admission)
        if status is not None:
            where.append("c.status = ?")
            params.append(status)
        if gtin is not None:
            where.append("c.item_key LIKE ? ESCAPE '!'")
            params.append(like_escaped(gtin) + ("/%" if len(gtin) == 14 else "%"))
        if serial is not None:
            where.append("c.item_key LIKE ? ESCAPE '!'")
            params.append("%/" + like_escaped(serial))
        if gtins is not None:  # one of these items (none: no charge matches)
            where.append(f"substr(c.item_key, 1, 14) IN ({', '.join('?' * len(gtins)) or 'NULL'})")
            params.extend(gtins)
        rows = self._engine.query(
            f"SELECT {_CHARGE_COLUMNS} FROM charges c LEFT JOIN catalog k ON k.gtin = substr(c.item_key, 1, 14) "
            f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY c.id DESC LIMIT ?", (*params, limit))
        return [ChargeView(*r) for r in rows]

    def charge(self, charge_id: str) -> ChargeView | None:
        rows = self._engine.query(
            f"SELECT {_CHARGE_COLUMNS} FROM charges c LEFT JOIN catalog k ON k.gtin = substr(c.item_key, 1, 14) "
            "WHERE c.charge_id = ?", (charge_id,))
        return ChargeView(*rows[0]) if rows else None

    def uses_per_dept(self, *, from_ms: int, to_ms: int) -> dict[str, int]:
        """Items charged to patients (the consumption list) per department used in [from_ms, to_ms)."""
        rows = self._engine.query(
            "SELECT dept, COUNT(*) FROM consumption WHERE used_at_ms >= ? AND used_at_ms < ? GROUP BY dept",
            (from_ms, to_ms))
        return {str(d): int(n) for d, n in rows}

    def his_round_trips(self, *, since: float, limit: int = 5000) -> list[tuple[float, float]]:
        """(queued at, answered at) of the charges the HIS accepted since ``since``, newest ``limit``."""
        rows = self._engine.query(
            "SELECT created_at, finished_at FROM charges WHERE status = 'accepted' AND finished_at >= ? "
            "ORDER BY id DESC LIMIT ?", (since, limit))
        return [(float(a), float(b)) for a, b in rows]

    def cabinet_devices(self, *, recent: int = 500) -> list[str]:
        """Devices that are cabinets, by id: a take in ``cabinet_takes``, or an item taken, put back or restocked
        among their ``recent`` latest events (both by index: a handheld's month of scans is never read)."""
        rows = self._engine.query(
            "SELECT d.device FROM devices d WHERE EXISTS (SELECT 1 FROM cabinet_takes t WHERE t.device = d.device) "
            "OR EXISTS (SELECT 1 FROM (SELECT kind FROM events e WHERE e.device = d.device ORDER BY e.seq DESC "
            "LIMIT ?) AS latest WHERE kind IN ('taken', 'returned', 'restocked')) ORDER BY d.device", (recent,))
        return [str(r[0]) for r in rows]

    def cabinet_events(self, device: str, *, kinds: tuple[str, ...] = _CABINET_KINDS,
                       limit: int = 50) -> list[CabinetEvent]:
        """A cabinet's latest events of ``kinds``, newest first."""
        marks = ", ".join("?" * len(kinds))
        rows = self._engine.query(
            f"SELECT id, seq, ts_ms, kind, body, stored_at FROM events WHERE device = ? AND kind IN ({marks}) "
            "ORDER BY seq DESC LIMIT ?", (device, *kinds, limit))
        return [CabinetEvent(*r) for r in rows]

    def item_names(self, gtins: list[str]) -> dict[str, str]:
        if not gtins:
            return {}
        marks = ", ".join("?" * len(gtins))
        rows = self._engine.query(f"SELECT gtin, name FROM catalog WHERE gtin IN ({marks})", tuple(gtins))
        return {str(g): str(n) for g, n in rows}

    def alarm_events(self, *, limit: int = 500) -> list[AlarmEventView]:
        """The latest ``alarm`` events the devices reported (forced door, refused command ...), newest first."""
        rows = self._engine.query("SELECT device, seq, ts_ms, body, stored_at FROM events WHERE kind = 'alarm' "
                                  "ORDER BY id DESC LIMIT ?", (limit,))
        return [AlarmEventView(str(d), int(s), int(t), str(b), float(at)) for d, s, t, b, at in rows]


class AlarmEventView(NamedTuple):
    device: str
    seq: int
    ts_ms: int
    body: str  # JSON as stored
    stored_at: float
