"""Trace (:mod:`gateway.books.trace`): an item (GTIN and serial) to its patient, operator, time, cabinet and
charge; a lot to every patient who received it and where the rest of it is (a recall); a patient's admission
to every item, lot and serial used on them. Seen by the supervisor and inspector roles.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from gateway.books.projection import catch_up
from gateway.books.trace import trace_item, trace_lot, trace_patient
from gateway.web.auth import Principal, allowed
from gateway.web.context import WebContext, context_of
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import SEE_TRACE

NAV = NavEntry("Trace", "/trace", SEE_TRACE)
MaySee = Annotated[Principal, Depends(allowed(*SEE_TRACE))]
GTIN = Query(pattern=r"^([0-9]{14})?$", description="the item's GTIN (14 digits), with serial or lot")
SERIAL = Query(pattern=r"^[!-~]{0,20}$", description="the item's serial number: trace one item")
LOT = Query(pattern=r"^[!-~]{0,20}$", description="the lot: every patient who received it (a recall)")
ADMISSION = Query(pattern=r"^[A-Za-z0-9_.-]{0,40}$", description="the patient's admission number: every item used")
html = APIRouter()
api = APIRouter(tags=["books"])


def trace(ctx: WebContext, gtin: str, serial: str, lot: str, admission: str) -> dict[str, Any] | None:
    """What the question asks for; None when nothing was asked; 400 for a question that is not one."""
    asked = sum(bool(x) for x in (serial, lot, admission))
    if asked == 0 and not gtin:
        return None
    if asked != 1 or bool(gtin) == bool(admission):
        raise HTTPException(400, "ask for one of: gtin and serial, gtin and lot, or admission")
    catch_up(ctx.store, utc_offset_minutes=ctx.config.utc_offset_minutes)  # the ledger up to the latest event
    if admission:
        uses = trace_patient(ctx.store, admission)
        return {"by": "admission", "admission": admission, "uses": [_use(ctx, u) for u in uses]}
    if serial:
        item = trace_item(ctx.store, gtin, serial)
        return {"by": "serial", "gtin": gtin, "serial": serial, "name": item.name,
                "uses": [_use(ctx, u) for u in item.uses],
                "movements": [m._asdict() | {"at": ctx.local_time(m.at_ms / 1000)} for m in item.movements],
                "on_hand": [asdict(s) for s in item.on_hand]}
    found = trace_lot(ctx.store, gtin, lot)
    return {"by": "lot", "gtin": gtin, "lot": lot, "name": found.name, "uses": [_use(ctx, u) for u in found.uses],
            "on_hand": [asdict(s) for s in found.on_hand]}


def _use(ctx: WebContext, u: Any) -> dict[str, Any]:
    return asdict(u) | {"at": ctx.local_time(u.at_ms / 1000)}


@html.get("/trace", response_class=HTMLResponse, summary="The trace page")
def trace_page(request: Request, who: MaySee, gtin: Annotated[str, GTIN] = "", serial: Annotated[str, SERIAL] = "",
               lot: Annotated[str, LOT] = "", admission: Annotated[str, ADMISSION] = "") -> HTMLResponse:
    return page(request, "trace.html", who, t=trace(context_of(request), gtin, serial, lot, admission),
                f={"gtin": gtin, "serial": serial, "lot": lot, "admission": admission})


@api.get("/trace", summary="Trace an item (gtin+serial), a lot (gtin+lot) or a patient (admission)")
def trace_api(request: Request, who: MaySee, gtin: Annotated[str, GTIN] = "", serial: Annotated[str, SERIAL] = "",
              lot: Annotated[str, LOT] = "", admission: Annotated[str, ADMISSION] = "") -> dict[str, Any]:
    found = trace(context_of(request), gtin, serial, lot, admission)
    if found is None:
        raise HTTPException(400, "ask for one of: gtin and serial, gtin and lot, or admission")
    return found
