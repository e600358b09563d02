"""Charges: search by patient admission, item (GTIN, or item code or name), serial and status; re-send a parked one.

A re-send is :meth:`gateway.data.charges.ChargeStore.requeue_parked`, as ``spd-gateway charges resend`` does:
the charge goes back into the HIS outbox (refused for one whose item was given back unused). Allowed to the
supervisor and finance roles; audited as ``charge_resent``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.audit import AuditAction
from gateway.data.dashboard import ChargeView
from gateway.web.auth import Anyone, MayResend, Principal
from gateway.web.context import WebContext, context_of
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import RESEND_CHARGE

NAV = NavEntry("Charges", "/charges")
STATUSES = ("pending", "accepted", "parked", "voided")
Status = Literal["", "pending", "accepted", "parked", "voided"]
ADMISSION = Query(pattern=r"^[A-Za-z0-9_.-]{0,40}$", description="the patient's admission number (exact)")
GTIN = Query(pattern=r"^[0-9]{0,14}$", description="the item's GTIN (14 digits; fewer: its beginning)")
ITEM = Query(pattern=r"^[^\x00-\x1f]{0,40}$", description="the item's code (exact) or a part of its name")
SERIAL = Query(pattern=r"^[!-~]{0,20}$", description="the item's serial number (exact)")
STATUS = Query(description="pending (in the HIS outbox), accepted, parked (refused by the HIS) or voided")
LIMIT = Query(ge=1, le=1000, description="at most this many, newest first")
CHARGE_ID = Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="the charge's id (MSH-10)")
html = APIRouter()
api = APIRouter(tags=["charges"])


def _search(ctx: WebContext, admission: str, gtin: str, serial: str, status: str, limit: int,
            item: str = "") -> list[ChargeView]:
    gtins = ctx.store.dashboard.gtins_of_item(item.strip()) if item.strip() else None
    return ctx.store.dashboard.search_charges(admission=admission or None, gtin=gtin or None, serial=serial or None,
                                              status=status or None, gtins=gtins, limit=limit)


def resend(ctx: WebContext, who: Principal, charge_id: str) -> ChargeView:
    """Put a parked charge back in the outbox; 404 unknown, 409 not parked or its item given back."""
    charge = ctx.store.dashboard.charge(charge_id)
    if charge is None:
        raise HTTPException(404, f"no charge {charge_id}")
    if charge.status != "parked":
        raise HTTPException(409, f"charge {charge_id} is {charge.status}, not parked: nothing to re-send")
    if not ctx.store.requeue_parked(charge_id):
        ctx.audit.record(who.actor, AuditAction.CHARGE_RESENT, device=charge.device, outcome="refused",
                         charge_id=charge_id, reason="item given back unused")
        raise HTTPException(409, f"charge {charge_id} was not re-sent: its item was given back unused")
    ctx.audit.record(who.actor, AuditAction.CHARGE_RESENT, device=charge.device, charge_id=charge_id,
                     admission=charge.admission, item=charge.item_key, last_error=charge.last_error)
    found = ctx.store.dashboard.charge(charge_id)
    assert found is not None
    return found


@html.get("/charges", response_class=HTMLResponse, summary="The charges page")
def charges_page(request: Request, who: Anyone, admission: Annotated[str, ADMISSION] = "",
                 gtin: Annotated[str, GTIN] = "", item: Annotated[str, ITEM] = "",
                 serial: Annotated[str, SERIAL] = "", status: Annotated[Status, STATUS] = "",
                 limit: Annotated[int, LIMIT] = 200) -> HTMLResponse:
    ctx = context_of(request)
    return page(request, "charges.html", who, charges=_search(ctx, admission, gtin, serial, status, limit, item),
                f={"admission": admission, "gtin": gtin, "item": item, "serial": serial, "status": status},
                statuses=STATUSES,
                may_resend=who.role in RESEND_CHARGE, resent=request.query_params.get("resent"))


@html.post("/charges/{charge_id}/resend", summary="Re-send a parked charge (form)")
def resend_page(request: Request, who: MayResend, charge_id: Annotated[str, CHARGE_ID]) -> RedirectResponse:
    resend(context_of(request), who, charge_id)
    return RedirectResponse(f"/charges?status=parked&resent={charge_id}", status_code=303)


@api.get("/charges", summary="Search charges by admission, GTIN, serial and status")
def charges_api(request: Request, who: Anyone, admission: Annotated[str, ADMISSION] = "",
                gtin: Annotated[str, GTIN] = "", item: Annotated[str, ITEM] = "",
                serial: Annotated[str, SERIAL] = "", status: Annotated[Status, STATUS] = "",
                limit: Annotated[int, LIMIT] = 200) -> list[dict[str, Any]]:
    return [c._asdict() for c in _search(context_of(request), admission, gtin, serial, status, limit, item)]


@api.post("/charges/{charge_id}/resend", summary="Re-send a parked charge (supervisor, finance)")
def resend_api(request: Request, who: MayResend, charge_id: Annotated[str, CHARGE_ID]) -> dict[str, Any]:
    return resend(context_of(request), who, charge_id)._asdict()
