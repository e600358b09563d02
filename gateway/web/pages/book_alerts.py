"""Stock alerts (:func:`gateway.books.alerts.alerts`, as ``spd-gateway alerts``): expired and expiring stock,
recalled lots still on hand, supplier licences and registration certificates expiring, items taken and never
charged, abnormal use; most severe first, filtered by kind and severity. The device alarms have their own page
(``/alarms``). Seen by the supervisor, finance and inspector roles.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from gateway.books.alerts import alerts
from gateway.books.projection import catch_up
from gateway.web.auth import Principal, allowed
from gateway.web.context import WebContext, context_of
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import SEE_BOOK_ALERTS

NAV = NavEntry("Stock alerts", "/stock-alerts", SEE_BOOK_ALERTS)
MaySee = Annotated[Principal, Depends(allowed(*SEE_BOOK_ALERTS))]
KINDS = ("expired_in_stock", "expiring", "recalled_in_stock", "licence_expired", "licence_expiring",
         "registration_expired", "registration_expiring", "not_charged", "abnormal_use")
Kind = Literal["", "expired_in_stock", "expiring", "recalled_in_stock", "licence_expired", "licence_expiring",
               "registration_expired", "registration_expiring", "not_charged", "abnormal_use"]
Severity = Literal["", "critical", "warning", "notice"]
KIND = Query(description="only alerts of this kind")
SEVERITY = Query(description="only alerts of this severity")
html = APIRouter()
api = APIRouter(tags=["books"])


def found(ctx: WebContext, kind: str, severity: str) -> list[dict[str, Any]]:
    settings = ctx.books_settings
    catch_up(ctx.store, utc_offset_minutes=settings.utc_offset_minutes)
    out = alerts(ctx.store, settings, kinds={kind} if kind else None)
    return [asdict(a) for a in out if not severity or a.severity == severity]


@html.get("/stock-alerts", response_class=HTMLResponse, summary="The stock alerts page")
def alerts_page(request: Request, who: MaySee, kind: Annotated[Kind, KIND] = "",
                severity: Annotated[Severity, SEVERITY] = "") -> HTMLResponse:
    return page(request, "stock_alerts.html", who, alerts=found(context_of(request), kind, severity), kinds=KINDS,
                f={"kind": kind, "severity": severity})


@api.get("/stock-alerts", summary="Stock alerts: expiry, recalls, documents, not charged, abnormal use")
def alerts_api(request: Request, who: MaySee, kind: Annotated[Kind, KIND] = "",
               severity: Annotated[Severity, SEVERITY] = "") -> list[dict[str, Any]]:
    return found(context_of(request), kind, severity)
