"""The VBP view (:func:`gateway.books.vbp.vbp_view`): per volume-based-procurement category, the winning
products' share of the month's use and the year's progress against the agreed volume, with the categories
behind pace marked. Seen by the supervisor and finance roles.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from gateway.books.vbp import vbp_view
from gateway.web.auth import Principal, allowed
from gateway.web.books_cache import MONTH, books_period, this_month
from gateway.web.context import WebContext, context_of
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import SEE_SETTLEMENT

NAV = NavEntry("VBP", "/vbp", SEE_SETTLEMENT)
MaySee = Annotated[Principal, Depends(allowed(*SEE_SETTLEMENT))]
html = APIRouter()
api = APIRouter(tags=["books"])


def view(ctx: WebContext, month: str) -> dict[str, Any]:
    m = month or this_month(ctx)
    v = vbp_view(ctx.store, int(m[:4]), books_period(ctx, m))
    return {"month": m, "year": v.year, "year_elapsed_pct": round(100 * float(v.year_elapsed), 1),
            "categories": [asdict(c) for c in v.categories]}


@html.get("/vbp", response_class=HTMLResponse, summary="The VBP page")
def vbp_page(request: Request, who: MaySee, month: Annotated[str, MONTH] = "") -> HTMLResponse:
    return page(request, "vbp.html", who, v=view(context_of(request), month))


@api.get("/vbp", summary="VBP categories: the winners' share of the month's use, the year's progress")
def vbp_api(request: Request, who: MaySee, month: Annotated[str, MONTH] = "") -> dict[str, Any]:
    return view(context_of(request), month)
