"""Replenishment: what the SPD operator brings to each cabinet and department store on its next round.

For each location and item the suggestion is ``target - on hand - already requested``, never below 0, where
``target`` is the par level when one is set (``spd-gateway replenish par-import``) and otherwise the average
use over the last ``[books] replenish_history_days`` (28) scaled to one period of ``replenish_period_days``
(7: a weekly round), rounded up: enough for the next period. Use is what left the location for patients:
takes less returns at a cabinet; use and opened packs at a department store less what its staff took out of
cabinets (an item taken from a cabinet and used is the cabinet's use).
Urgent requests from a ward (``spd-gateway replenish request``) are stored, in the audit log, and listed
first, each its own line. A pick list groups the lines by route (from ``replenish route-import`` or ``[books.
routes]``; a location on no route is on route ``-``), urgent lines first, then in walking order: route stop,
location, item. ``pick from`` names the operator-store lots to take, earliest expiry first.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

from gateway.audit import AuditAction, AuditLog
from gateway.books.ledger import item_names
from gateway.books.projection import OPERATOR_STORE
from gateway.books.settings import BooksSettings
from gateway.store import GatewayStore

DAY_MS = 86_400_000
NO_ROUTE = "-"


@dataclass(frozen=True, slots=True)
class Suggestion:
    route: str
    stop: int
    location: str
    dept: str
    gtin: str
    name: str
    qty: int  # to bring
    reason: str  # "urgent", "par" or "average use"
    on_hand: int
    target: int  # par, or the average use of one period (0 for an urgent line)
    avg_use: float  # per period, over the history window
    request: str  # "#id by STAFF: note" for an urgent line
    pick_from: str  # operator-store lots, earliest expiry first

    @property
    def urgent(self) -> bool:
        return self.reason == "urgent"


def request(store: GatewayStore, *, location: str, gtin: str, qty: int, by: str, note: str = "",
            now_ms: int | None = None) -> int:
    """Store an urgent request from a ward (audited); its id."""
    if qty <= 0:
        raise ValueError("an urgent request is for at least one unit")
    at = int(time.time() * 1000) if now_ms is None else now_ms
    rid = store.replenishment.add_request(location, gtin, qty, by, at, note)
    AuditLog(store).record(by, AuditAction.REPLENISH_REQUESTED, request=rid, location=location, gtin=gtin, qty=qty,
                           note=note)
    return rid


def close_request(store: GatewayStore, request_id: int, *, by: str) -> bool:
    """An urgent request delivered; False when there is no such open request."""
    done = store.replenishment.close_request(request_id, by)
    if done:
        AuditLog(store).record(by, AuditAction.REPLENISH_DELIVERED, request=request_id)
    return done


def route_stops(store: GatewayStore, settings: BooksSettings) -> dict[str, tuple[str, int]]:
    """location -> (route, stop): imported routes first, then the configuration's."""
    stops: dict[str, tuple[str, int]] = {}
    for r in store.replenishment.routes():
        stops.setdefault(r.location, (r.route, r.stop))
    for route, locations in sorted(settings.routes.items()):
        for i, loc in enumerate(locations, start=1):
            stops.setdefault(loc, (route, i))
    return stops


def suggestions(store: GatewayStore, settings: BooksSettings | None = None, *, now_ms: int | None = None,
                route: str | None = None, location: str | None = None) -> list[Suggestion]:
    """The lines of the pick lists, in picking order (route, urgent first, stop, location, item)."""
    cfg = settings or BooksSettings()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    names = item_names(store)
    depts = store.stock.location_depts()
    stops = route_stops(store, cfg)
    on_hand: dict[tuple[str, str], int] = defaultdict(int)
    operator_lots: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for b in store.stock.balances():
        on_hand[(b.location, b.gtin)] += b.qty
        if b.location == OPERATOR_STORE and b.qty > 0:
            operator_lots[b.gtin].append((b.expiry or "9999-12-31", b.lot, b.qty))
    history = cfg.replenish_history_days * DAY_MS
    avg: dict[tuple[str, str], float] = {
        (loc, gtin): qty * cfg.replenish_period_days / cfg.replenish_history_days
        for loc, gtin, qty in store.stock.outflow(now - history, now + 1)}
    par = {(p.location, p.gtin): p.par for p in store.replenishment.par_levels()}
    requested: dict[tuple[str, str], int] = defaultdict(int)
    lines: list[Suggestion] = []

    def line(loc: str, gtin: str, qty: int, reason: str, target: int, req: str) -> Suggestion:
        r, stop = stops.get(loc, (NO_ROUTE, 0))
        lots = sorted(operator_lots.get(gtin, []))
        pick = ", ".join(f"lot {lot or '?'} ({n}{f', exp {exp}' if exp != '9999-12-31' else ''})"
                         for exp, lot, n in lots[:3])
        return Suggestion(r, stop, loc, depts.get(loc, loc[5:] if loc.startswith("dept:") else ""), gtin,
                          names.get(gtin, ""), qty, reason, on_hand.get((loc, gtin), 0), target,
                          round(avg.get((loc, gtin), 0.0), 2), req, pick)

    for rq in store.replenishment.requests():
        requested[(rq.location, rq.gtin)] += rq.qty
        note = f": {rq.note}" if rq.note else ""
        lines.append(line(rq.location, rq.gtin, rq.qty, "urgent", 0, f"#{rq.id} by {rq.requested_by}{note}"))
    for key in sorted(set(par) | set(avg)):
        loc, gtin = key
        if loc == OPERATOR_STORE:
            continue
        target, reason = (par[key], "par") if key in par else (math.ceil(avg[key] - 1e-9), "average use")
        qty = target - max(0, on_hand.get(key, 0)) - requested.get(key, 0)
        if qty > 0:
            lines.append(line(loc, gtin, qty, reason, target, ""))
    if route is not None:
        lines = [s for s in lines if s.route == route]
    if location is not None:
        lines = [s for s in lines if s.location == location]
    return sorted(lines, key=lambda s: (s.route, not s.urgent, s.stop, s.location, s.name, s.gtin))
