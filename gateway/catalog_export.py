"""Builds the versioned catalog document the gateway pushes to devices (validated by ``device.catalog_cache``).

A document holds the item dictionary, the recalled lots, the expiry dates of lots in stock, the
departments' stock lists, the item serials the gateway has charged recently, and the patient census when
the gateway has one (in-house admissions, and admissions discharged in the last `DISCHARGED_KEPT_DAYS`
with their discharge time and the grace period during which their wristbands are still charged;
initials, ward and department, never a name). Its ``version`` is a per-department counter kept in the
store that moves only when the content (its ``digest``) changes, so an unchanged catalog is never pushed
twice and devices can refuse an older one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from gateway.catalog import load_catalog_entries, load_dept_stock, load_recalled_lots
from gateway.census import PatientState, census_complete, load_census
from gateway.lot_expiry import load_lot_expiry
from gateway.store import GatewayStore
from spd_common.catalog_doc import DOC_SCHEMA, content_digest

DEFAULT_CONSUMED_WINDOW_DAYS = 90
DEFAULT_DISCHARGE_GRACE_S = 86400.0
DISCHARGED_KEPT_DAYS = 7  # older discharges leave the document (their wristbands are then unknown: refused too)



def build_device_catalog(
    store: GatewayStore,
    *,
    dept: str | None,
    consumed_window_days: int = DEFAULT_CONSUMED_WINDOW_DAYS,
    discharge_grace_s: float = DEFAULT_DISCHARGE_GRACE_S,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The document for the devices of `dept` (every department's stock list when None).

    ``consumed_serials`` lists ``gtin/serial`` of items charged (or waiting to be charged) in the
    last `consumed_window_days`; older re-use is still caught by the gateway's charging.
    """
    now = clock()
    content: dict[str, Any] = {
        "schema": DOC_SCHEMA,
        "dept": dept,
        "items": [
            {"gtin": e.gtin, "item_code": e.item_code, "charge_code": e.charge_code, "name": e.name, "spec": e.spec,
             "manufacturer": e.manufacturer, "price_fen": e.price_fen, "chargeable": e.chargeable,
             "high_value": e.high_value, "supplier": e.supplier, "vbp": e.vbp, "vbp_price_fen": e.vbp_price_fen}
            for e in load_catalog_entries(store)
        ],
        "recalled_lots": [{"gtin": r.gtin, "lot": r.lot, "reason": r.reason} for r in load_recalled_lots(store)],
        "lot_expiry": [{"gtin": e.gtin, "lot": e.lot, "expiry": e.expiry.isoformat()} for e in load_lot_expiry(store)],
        "dept_stock": load_dept_stock(store, dept),
        "consumed_serials": _consumed_serials(store, since=now - consumed_window_days * 86400),
        "patients": _patients(store, grace_s=discharge_grace_s, since=now - DISCHARGED_KEPT_DAYS * 86400),
    }
    digest = content_digest(content)
    version = _version(store, dept or "", digest, now)
    generated = dt.datetime.fromtimestamp(now, tz=dt.UTC).isoformat(timespec="seconds")
    return {**content, "version": version, "digest": digest, "generated_at": generated}


def catalog_version(store: GatewayStore, *, dept: str | None) -> tuple[int, str] | None:
    """(version, digest) of the last document built for `dept`, or None if none was built."""
    return store.catalog.document_version(dept or "")


def _version(store: GatewayStore, key: str, digest: str, now: float) -> int:
    return store.catalog.bump_document_version(key, digest, now)


def _consumed_serials(store: GatewayStore, *, since: float) -> list[str]:
    return store.charges.consumed_item_keys(since=since)


def _patients(store: GatewayStore, *, grace_s: float, since: float) -> dict[str, Any] | None:
    census = load_census(store)
    if census is None or not census_complete(store):
        return None
    kept = [r for r in census if r.status is PatientState.IN_HOUSE or r.discharged_at is None
            or r.discharged_at >= since]
    records: dict[str, Any] = {}
    for r in kept:
        rec: dict[str, Any] = {k: v for k, v in (("initials", r.initials), ("ward", r.ward), ("dept", r.dept),
                                                  ("bed", r.bed)) if v}
        if r.status is PatientState.DISCHARGED and r.discharged_at is not None:
            rec["discharged_at"] = int(r.discharged_at)
        if rec:
            records[r.admission] = rec
    return {
        "in_house": [r.admission for r in kept if r.status is PatientState.IN_HOUSE],
        "discharged": [r.admission for r in kept if r.status is PatientState.DISCHARGED],
        "discharge_grace_s": int(grace_s),
        "records": records,
    }
