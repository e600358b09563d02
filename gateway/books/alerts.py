"""Alerts over the books: what a logistics supervisor must act on today (``spd-gateway alerts``).

Each alert is an :class:`Alert` (kind, severity, subject, detail, evidence). Kinds:

* ``expired_in_stock`` (critical) and ``expiring`` — stock on hand whose expiry (from the scanned UDI or the
  cabinet's record, else the ``lot_expiry`` list) is past, or within a window of ``[books]
  expiry_windows_days`` (default 90/30/7): critical within the shortest, warning within the next, notice
  within the others. One alert per location, item, lot and expiry date, with the serials as evidence.
* ``recalled_in_stock`` (critical) — a recalled lot (or every lot, ``*``) still on hand, per location.
* ``licence_expired`` / ``licence_expiring`` — a supplier's licence; ``registration_expired`` /
  ``registration_expiring`` — an item's product registration certificate (its newest: a renewed certificate
  replaces the old one); same windows.
* ``not_charged`` (warning) — an item taken from a cabinet and charged on no device in time: the gateway's
  ``not_linked`` alarms (:mod:`gateway.linking`) not resolved since, reported here, never raised twice.
* ``abnormal_use`` (warning) — a department's use of an item in the last 7 days above mean + k·stdev of the
  ``abnormal_weeks`` weeks before it (population standard deviation, weeks without use counting 0), and at
  least ``abnormal_min_count``. Needs that much history (the ledger reaching back into the first of those
  weeks): with less, nothing is reported.

Expired and recalled stock at the operator's store counts as well as in cabinets; quantities at or below 0 (a
location that gave more than the ledger knew it had) raise nothing here (the count shows them).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import defaultdict
from dataclasses import dataclass

from gateway.books.ledger import StockLine, item_names, on_hand
from gateway.books.settings import BooksSettings
from gateway.data.terms import RegistrationRow
from gateway.linking import link_alarms
from gateway.store import GatewayStore

CRITICAL = "critical"
WARNING = "warning"
NOTICE = "notice"
SEVERITY_ORDER = {CRITICAL: 0, WARNING: 1, NOTICE: 2}
WEEK_MS = 7 * 86_400_000


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    severity: str
    subject: str
    detail: str
    evidence: tuple[str, ...] = ()


def _today(now_ms: int, settings: BooksSettings) -> dt.date:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=now_ms + settings.utc_offset_minutes * 60_000)).date()


def _window_severity(days_left: int, windows: tuple[int, ...]) -> tuple[str, int] | None:
    """(severity, window) for something expiring in ``days_left`` days, None when outside every window."""
    ordered = sorted(windows)
    for i, w in enumerate(ordered):
        if days_left <= w:
            return (CRITICAL if i == 0 else WARNING if i == 1 else NOTICE), w
    return None


def _expiry_alert(kind: str, what: str, expiry: str, today: dt.date, windows: tuple[int, ...],
                  evidence: tuple[str, ...] = ()) -> Alert | None:
    try:
        day = dt.date.fromisoformat(expiry)
    except ValueError:
        return None
    left = (day - today).days
    if left < 0:
        return Alert(f"{kind}_expired" if kind != "stock" else "expired_in_stock", CRITICAL, what,
                     f"expired {expiry} ({-left} days ago)", evidence)
    found = _window_severity(left, windows)
    if found is None:
        return None
    severity, window = found
    return Alert(f"{kind}_expiring" if kind != "stock" else "expiring", severity, what,
                 f"expires {expiry}, in {left} days (within {window})", evidence)


def stock_expiry_alerts(store: GatewayStore, settings: BooksSettings, now_ms: int,
                        stock: list[StockLine] | None = None) -> list[Alert]:
    today = _today(now_ms, settings)
    lot_expiry = {(r.gtin, r.lot): r.expiry for r in store.catalog.lot_expiry()}
    groups: dict[tuple[str, str, str, str], list[tuple[str, int]]] = defaultdict(list)
    for line in on_hand(store) if stock is None else stock:
        if line.qty <= 0:
            continue
        expiry = line.expiry or lot_expiry.get((line.gtin, line.lot), "")
        if expiry:
            groups[(line.location, line.gtin, line.lot, expiry)].append((line.serial, line.qty))
    names = item_names(store)
    out = []
    for (location, gtin, lot, expiry), units in sorted(groups.items()):
        qty = sum(q for _, q in units)
        what = f"{location}: {names.get(gtin, gtin)} ({gtin}) lot {lot or '?'}, {qty} on hand"
        evidence = tuple(f"serial {s}" for s, _ in units if s)
        alert = _expiry_alert("stock", what, expiry, today, settings.expiry_windows_days, evidence)
        if alert is not None:
            out.append(alert)
    return out


def recall_alerts(store: GatewayStore, stock: list[StockLine] | None = None) -> list[Alert]:
    recalls = store.catalog.recalls()
    if not recalls:
        return []
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for r in recalls:
        by_item[r.gtin][r.lot] = r.reason
    names = item_names(store)
    groups: dict[tuple[str, str, str], list[tuple[str, int]]] = defaultdict(list)
    for line in on_hand(store) if stock is None else stock:
        lots = by_item.get(line.gtin)
        if line.qty <= 0 or lots is None or (line.lot not in lots and "*" not in lots):
            continue
        groups[(line.location, line.gtin, line.lot)].append((line.serial, line.qty))
    out = []
    for (location, gtin, lot), units in sorted(groups.items()):
        lots = by_item[gtin]
        reason = lots.get(lot, lots.get("*", ""))
        qty = sum(q for _, q in units)
        out.append(Alert("recalled_in_stock", CRITICAL,
                         f"{location}: {names.get(gtin, gtin)} ({gtin}) lot {lot or '?'}, {qty} on hand",
                         f"recalled{f': {reason}' if reason else ''}; take it out of use",
                         tuple(f"serial {s}" for s, _ in units if s)))
    return out


def document_alerts(store: GatewayStore, settings: BooksSettings, now_ms: int) -> list[Alert]:
    """Supplier licences and product registration certificates expiring or expired."""
    today = _today(now_ms, settings)
    out = []
    for s in store.terms.suppliers():
        if s.licence_expiry:
            a = _expiry_alert("licence", f"supplier {s.supplier} {s.name}: licence {s.licence_no or '?'}",
                              s.licence_expiry, today, settings.expiry_windows_days)
            if a is not None:
                out.append(a)
    names = item_names(store)
    latest: dict[str, RegistrationRow] = {}
    for r in store.terms.registrations():  # an item's newest certificate is the one in force
        if r.gtin not in latest or r.expiry > latest[r.gtin].expiry:
            latest[r.gtin] = r
    for r in latest.values():
        a = _expiry_alert("registration", f"{names.get(r.gtin, r.gtin)} ({r.gtin}): registration {r.cert_no}",
                          r.expiry, today, settings.expiry_windows_days)
        if a is not None:
            out.append(a)
    return out


def not_charged_alerts(store: GatewayStore) -> list[Alert]:
    """The unresolved ``not_linked`` alarms the gateway's link watch raised (never raised again here)."""
    out = []
    for alarm in link_alarms(store):
        if alarm.resolved_by:
            continue
        taken = dt.datetime.fromtimestamp(alarm.taken_ms / 1000, dt.UTC).isoformat(timespec="seconds")
        out.append(Alert("not_charged", WARNING, f"cabinet {alarm.cabinet}: item {alarm.item_key}",
                         f"taken by {alarm.user or 'an unknown user'} at {taken}, charged on no device within "
                         f"{alarm.window_s:g} s", (f"cabinet {alarm.cabinet} seq {alarm.seq}",
                                                   f"session {alarm.session or '-'}", f"EPC {alarm.epc or '-'}")))
    return out


def abnormal_use_alerts(store: GatewayStore, settings: BooksSettings, now_ms: int) -> list[Alert]:
    """A department's use of an item this week far above its previous weeks (see the module's doc)."""
    weeks = settings.abnormal_weeks
    start = now_ms - (weeks + 1) * WEEK_MS
    first = store.stock.first_at_ms()
    if first is None or first >= start + WEEK_MS:  # the ledger must reach back into the first of those weeks
        return []
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (weeks + 1))
    for u in store.stock.use_per_period(start, now_ms + 1, WEEK_MS):
        if 0 <= u.period <= weeks:
            per[(u.dept, u.gtin)][u.period] += u.qty
    names = item_names(store)
    out = []
    for (dept, gtin), counts in sorted(per.items()):
        history, this = counts[:weeks], counts[weeks]
        mean = sum(history) / weeks
        stdev = math.sqrt(sum((c - mean) ** 2 for c in history) / weeks)
        threshold = mean + settings.abnormal_k * stdev
        if this >= settings.abnormal_min_count and this > threshold:
            out.append(Alert("abnormal_use", WARNING, f"dept {dept}: {names.get(gtin, gtin)} ({gtin})",
                             f"{this} used in the last 7 days; the {weeks} weeks before: mean {mean:.1f}, "
                             f"stdev {stdev:.1f}, threshold {threshold:.1f}",
                             tuple(f"week -{weeks - i}: {c}" for i, c in enumerate(history))))
    return out


def alerts(store: GatewayStore, settings: BooksSettings | None = None, *, now_ms: int | None = None,
           kinds: set[str] | None = None) -> list[Alert]:
    """Every alert, most severe first (then by kind and subject)."""
    cfg = settings or BooksSettings()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    stock = on_hand(store)
    found = (stock_expiry_alerts(store, cfg, now, stock) + recall_alerts(store, stock)
             + document_alerts(store, cfg, now)
             + not_charged_alerts(store) + abnormal_use_alerts(store, cfg, now))
    if kinds:
        found = [a for a in found if a.kind in kinds]
    return sorted(found, key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.kind, a.subject))
