"""Cabinets: door and latch, what is inside (:mod:`gateway.web.stock`), the latest events; a remote unlock.

A remote unlock is for the supervisor role only and takes two steps: the unlock button leads to a page that
asks for the cabinet's id to be typed, and only a POST carrying it (and the session's CSRF token) sends the
signed one-time unlock through the fleet link (:meth:`gateway.fleet.Fleet.unlock`, audited as
``command_sent``). A refused attempt is audited as ``unlock_refused``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from gateway.audit import AuditAction
from gateway.web.auth import Anyone, Forbidden, Principal, allowed
from gateway.web.context import WebContext, context_of
from gateway.web.fleet_view import site_of
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import REMOTE_UNLOCK
from gateway.web.stock import cabinet_stock, door_state

NAV = NavEntry("Cabinets", "/cabinets")
DEVICE = Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the cabinet's device id")
MAX_UNLOCK_S = 30
html = APIRouter()
api = APIRouter(tags=["cabinets"])
_may_unlock = allowed(*REMOTE_UNLOCK)


async def unlock_allowed(request: Request) -> Principal:
    """The supervisor role (and CSRF) as for every action; a refusal of a signed-in caller is audited."""
    try:
        who: Principal = await _may_unlock(request)
    except Forbidden as err:
        if request.method == "POST" and hasattr(request.state, "principal"):
            context_of(request).audit.record(request.state.principal.actor, AuditAction.UNLOCK_REFUSED,
                                             device=request.path_params.get("device", ""), outcome="refused",
                                             reason=err.detail)
        raise
    return who


unlock_allowed.roles = REMOTE_UNLOCK  # type: ignore[attr-defined]
MayUnlock = Annotated[Principal, Depends(unlock_allowed)]


class UnlockRequest(BaseModel):
    confirm: str = Field(description="the cabinet's device id again: the confirmation step")
    seconds: int = Field(5, ge=1, le=MAX_UNLOCK_S, description="how long the latch stays released")


def _cabinet(ctx: WebContext, device: str) -> dict[str, Any]:
    if device not in ctx.store.dashboard.cabinet_devices():
        raise HTTPException(404, f"no cabinet {device}")
    events = []
    for ev in ctx.store.dashboard.cabinet_events(device, limit=30):
        try:
            body = json.loads(ev.body)
        except ValueError:
            body = {}
        events.append({"seq": ev.seq, "ts_ms": ev.ts_ms, "kind": ev.kind, "stored_at": ev.stored_at, "body": body})
    return {"device": device, "site": site_of(ctx.store, device), "door": door_state(ctx.store, device),
            "stock": cabinet_stock(ctx.store, device), "events": events}


def _send_unlock(ctx: WebContext, who: Principal, device: str, seconds: int) -> int:
    site = site_of(ctx.store, device)
    if device not in ctx.store.dashboard.cabinet_devices() or site is None:
        raise HTTPException(404, f"no cabinet {device}")
    if ctx.unlock is None:
        ctx.audit.record(who.actor, AuditAction.UNLOCK_REFUSED, device=device, outcome="refused",
                         reason="no fleet link")
        raise HTTPException(503, "remote unlock needs the fleet link: give the gateway its command-signing key "
                                 "([fleet] signing_key) and serve the screen from spd-gateway run")
    return ctx.unlock(site, device, seconds, who.actor)


@html.get("/cabinets", response_class=HTMLResponse, summary="The cabinets page")
def cabinets_page(request: Request, who: Anyone) -> HTMLResponse:
    ctx = context_of(request)
    cabinets = [{"device": d, "door": door_state(ctx.store, d)} for d in ctx.store.dashboard.cabinet_devices()]
    return page(request, "cabinets.html", who, cabinets=cabinets)


@html.get("/cabinets/{device}", response_class=HTMLResponse, summary="One cabinet")
def cabinet_page(request: Request, who: Anyone, device: Annotated[str, DEVICE]) -> HTMLResponse:
    ctx = context_of(request)
    return page(request, "cabinet.html", who, c=_cabinet(ctx, device), may_unlock=who.role in REMOTE_UNLOCK,
                unlocked=request.query_params.get("unlocked"))


@html.get("/cabinets/{device}/unlock", response_class=HTMLResponse, summary="Confirm a remote unlock")
def unlock_confirm_page(request: Request, who: MayUnlock, device: Annotated[str, DEVICE]) -> HTMLResponse:
    ctx = context_of(request)
    return page(request, "unlock.html", who, c=_cabinet(ctx, device), max_seconds=MAX_UNLOCK_S, error=None)


@html.post("/cabinets/{device}/unlock", response_class=HTMLResponse, summary="Send a remote unlock")
def unlock_page(request: Request, who: MayUnlock, device: Annotated[str, DEVICE],
                confirm: Annotated[str, Form(max_length=64)] = "",
                seconds: Annotated[int, Form(ge=1, le=MAX_UNLOCK_S)] = 5) -> Any:
    ctx = context_of(request)
    if confirm != device:
        return page(request, "unlock.html", who, status_code=400, c=_cabinet(ctx, device), max_seconds=MAX_UNLOCK_S,
                    error=f"type the cabinet's id ({device}) to confirm the unlock")
    seq = _send_unlock(ctx, who, device, seconds)
    return RedirectResponse(f"/cabinets/{device}?unlocked={seq}", status_code=303)


@api.get("/cabinets", summary="Every cabinet with its door and latch")
def cabinets_api(request: Request, who: Anyone) -> list[dict[str, Any]]:
    ctx = context_of(request)
    return [{"device": d, "door": dataclasses.asdict(door_state(ctx.store, d))}
            for d in ctx.store.dashboard.cabinet_devices()]


@api.get("/cabinets/{device}", summary="One cabinet: door and latch, stock, latest events")
def cabinet_api(request: Request, who: Anyone, device: Annotated[str, DEVICE]) -> dict[str, Any]:
    c = _cabinet(context_of(request), device)
    stock = c["stock"]
    return c | {"door": dataclasses.asdict(c["door"]),
                "stock": dataclasses.asdict(stock) | {"items": stock.items}}


@api.post("/cabinets/{device}/unlock", summary="Send a signed one-time unlock (supervisor; confirm = the device id)")
def unlock_api(request: Request, who: MayUnlock, device: Annotated[str, DEVICE], body: UnlockRequest) -> dict[str, Any]:
    if body.confirm != device:
        raise HTTPException(400, f"confirm must repeat the cabinet's id ({device})")
    seq = _send_unlock(context_of(request), who, device, body.seconds)
    return {"device": device, "command_seq": seq, "seconds": body.seconds}
