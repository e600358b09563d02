"""The ``not_linked`` link watch's tables: cabinet takes, item scans, and the alarms raised on takes never charged.

``cabinet_takes``: one row per ``taken`` event, state ``open``, ``linked`` (charged: ``closed_by`` is the
``consume`` as "device seq"), ``back`` (returned into a cabinet), ``alarmed`` or ``expired`` (history from
before the check). ``item_scans``: the item of every ``consume``. ``link_alarms``: one row per alarmed take.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from gateway.data.engine import Engine, Transaction
from gateway.data.multirow import GROUP_ROWS, chunks, marks, rows_of


class TakeRow(NamedTuple):
    device: str
    seq: int
    item_key: str
    epc: str
    user: str
    session: str
    dept: str
    taken_ms: int
    stored_at: float
    state: str = "open"
    closed_by: str = ""


class ItemScan(NamedTuple):
    """The item of one ``consume`` (a row of ``item_scans``)."""

    device: str
    seq: int
    item_key: str
    stored_at: float


class LinkAlarmRow(NamedTuple):
    device: str
    seq: int
    item_key: str
    epc: str
    user: str
    session: str
    dept: str
    taken_ms: int
    window_s: float
    raised_at: float
    resolved_by: str


class LinkBatch:
    """The writes of one pass over new events, inside one transaction (see :meth:`LinkStore.batch`)."""

    def __init__(self, db: Transaction) -> None:
        self._db = db

    def latest_scan(self, item_key: str, *, stored_since: float) -> tuple[str, int] | None:
        """(device, seq) of the latest ``consume`` of this item stored since ``stored_since``."""
        row = self._db.execute(
            "SELECT device, seq FROM item_scans WHERE item_key = ? AND stored_at >= ? ORDER BY stored_at DESC LIMIT 1",
            (item_key, stored_since),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def add_take(self, take: TakeRow) -> None:
        self._db.execute(
            "INSERT INTO cabinet_takes (device, seq, item_key, epc, \"user\", session, dept, taken_ms, "
            "stored_at, state, closed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", tuple(take))

    def add_scans(self, scans: Sequence[ItemScan]) -> None:
        """Record these scans (multi-row inserts; one already there is left as it is)."""
        for part in chunks(scans, GROUP_ROWS):
            self._db.execute(f"INSERT INTO item_scans (device, seq, item_key, stored_at) "
                             f"VALUES {rows_of(4, len(part))} ON CONFLICT DO NOTHING",
                             [x for scan in part for x in scan])

    def items_with_open_links(self, item_keys: Sequence[str]) -> set[str]:
        """Those of these items with an open take or an unresolved alarm (what :meth:`close_open_takes` changes)."""
        found: set[str] = set()
        for part in chunks(item_keys, GROUP_ROWS):
            keys = marks(len(part))
            rows = self._db.execute(
                f"SELECT item_key FROM cabinet_takes WHERE state = 'open' AND item_key IN ({keys}) UNION "
                f"SELECT item_key FROM link_alarms WHERE resolved_by = '' AND item_key IN ({keys})",
                [*part, *part]).fetchall()
            found.update(str(r[0]) for r in rows)
        return found

    def close_open_takes(self, item_key: str, state: str, by: str, *, at: float) -> None:
        """Close the open takes of this item (``linked`` or ``back``) and resolve its unresolved alarms."""
        self._db.execute("UPDATE cabinet_takes SET state = ?, closed_by = ? WHERE item_key = ? AND state = 'open'",
                         (state, by, item_key))
        self._db.execute("UPDATE link_alarms SET resolved_by = ?, resolved_at = ? WHERE item_key = ? "
                         "AND resolved_by = ''", (by, at, item_key))

    def set_cursor(self, name: str, value: int) -> None:
        self._db.execute("INSERT INTO cursors (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))


class LinkStore:
    """The ``cabinet_takes``, ``item_scans`` and ``link_alarms`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def batch(self) -> Iterator[LinkBatch]:
        with self._engine.transaction() as db:
            yield LinkBatch(db)

    def raise_due(self, *, now: float, window_s: float, since: float) -> list[LinkAlarmRow]:
        """Alarm every take still open one window after it was stored; the new alarms.

        A take stored before ``since`` (history from before the check existed) is closed as ``expired``.
        """
        raised: list[LinkAlarmRow] = []
        with self._engine.transaction() as db:
            due = db.execute(
                "SELECT device, seq, item_key, epc, \"user\", session, dept, taken_ms, stored_at FROM cabinet_takes "
                "WHERE state = 'open' AND stored_at <= ? ORDER BY stored_at",
                (now - window_s,),
            ).fetchall()
            for device, seq, key, epc, user, session, dept, taken_ms, stored_at in due:
                if stored_at < since:
                    db.execute("UPDATE cabinet_takes SET state = 'expired' WHERE device = ? AND seq = ?",
                               (device, seq))
                    continue
                db.execute("UPDATE cabinet_takes SET state = 'alarmed' WHERE device = ? AND seq = ?", (device, seq))
                db.execute(
                    "INSERT INTO link_alarms (device, seq, item_key, epc, \"user\", session, dept, taken_ms, "
                    "window_s, raised_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (device, seq, key, epc, user, session, dept, taken_ms, window_s, now),
                )
                raised.append(LinkAlarmRow(device, seq, key, epc, user, session, dept, taken_ms, window_s, now, ""))
        return raised

    def alarms(self) -> list[LinkAlarmRow]:
        """Every ``not_linked`` alarm, oldest first."""
        rows = self._engine.query(
            "SELECT device, seq, item_key, epc, \"user\", session, dept, taken_ms, window_s, raised_at, resolved_by "
            "FROM link_alarms ORDER BY raised_at, device, seq"
        )
        return [LinkAlarmRow(*r) for r in rows]

    def alarm_counts(self) -> dict[str, int]:
        """Per cabinet, how many ``not_linked`` alarms were raised on its takes."""
        return {str(d): int(n) for d, n in
                self._engine.query("SELECT device, COUNT(*) FROM link_alarms GROUP BY device")}
