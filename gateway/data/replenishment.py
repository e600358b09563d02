"""Replenishment's tables (migration 0006): par levels per location and item, urgent requests from the wards,
and the operator's routes (which locations one picker's round visits, in walking order)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from gateway.data.engine import Engine

OPEN = "open"
DONE = "done"


class ParRow(NamedTuple):
    location: str
    gtin: str
    par: int  # the quantity the location should hold after a restock


class RequestRow(NamedTuple):
    id: int
    location: str
    gtin: str
    qty: int
    requested_by: str
    requested_at_ms: int
    note: str
    state: str
    closed_by: str


class RouteStop(NamedTuple):
    route: str
    location: str
    stop: int  # the order in which the picker reaches the location


class ReplenishmentStore:
    """The ``par_levels``, ``replenish_requests`` and ``routes`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def upsert_par(self, rows: Sequence[ParRow]) -> None:
        with self._engine.transaction() as db:
            db.executemany("INSERT INTO par_levels (location, gtin, par) VALUES (?, ?, ?) "
                           "ON CONFLICT (location, gtin) DO UPDATE SET par = excluded.par", [tuple(r) for r in rows])

    def par_levels(self) -> list[ParRow]:
        rows = self._engine.query("SELECT location, gtin, par FROM par_levels ORDER BY location, gtin")
        return [ParRow(r[0], r[1], int(r[2])) for r in rows]

    def add_request(self, location: str, gtin: str, qty: int, by: str, at_ms: int, note: str) -> int:
        with self._engine.transaction() as db:
            db.execute("INSERT INTO replenish_requests (location, gtin, qty, requested_by, requested_at_ms, note) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (location, gtin, qty, by, at_ms, note))
            row = db.execute("SELECT MAX(id) FROM replenish_requests").fetchone()
        return int(row[0])

    def close_request(self, request_id: int, by: str) -> bool:
        with self._engine.transaction() as db:
            cur = db.execute("UPDATE replenish_requests SET state = ?, closed_by = ? WHERE id = ? AND state = ?",
                             (DONE, by, request_id, OPEN))
            return cur.rowcount == 1

    def requests(self, *, state: str | None = OPEN) -> list[RequestRow]:
        rows = self._engine.query(
            "SELECT id, location, gtin, qty, requested_by, requested_at_ms, note, state, closed_by "
            "FROM replenish_requests WHERE (CAST(? AS TEXT) IS NULL OR state = ?) ORDER BY requested_at_ms, id",
            (state, state))
        return [RequestRow(int(r[0]), r[1], r[2], int(r[3]), r[4], int(r[5]), r[6], r[7], r[8]) for r in rows]

    def replace_routes(self, stops: Sequence[RouteStop]) -> None:
        with self._engine.transaction() as db:
            db.execute("DELETE FROM routes")
            db.executemany("INSERT INTO routes (route, location, stop) VALUES (?, ?, ?)", [tuple(s) for s in stops])

    def routes(self) -> list[RouteStop]:
        rows = self._engine.query("SELECT route, location, stop FROM routes ORDER BY route, stop, location")
        return [RouteStop(r[0], r[1], int(r[2])) for r in rows]
