"""Replenishment (:func:`gateway.books.replenish.suggestions`, as ``spd-gateway replenish``): the pick list of
each restocking route, urgent requests first, then what par levels and average use ask for, with the lots to
pick from (earliest expiry first); the pick list as a CSV or XLSX download (audited). Seen by the supervisor.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.books.output import Column, Table
from gateway.books.projection import catch_up
from gateway.books.replenish import Suggestion, suggestions
from gateway.web.auth import Principal, allowed
from gateway.web.context import WebContext, context_of
from gateway.web.download import export
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import SEE_REPLENISHMENT

NAV = NavEntry("Replenishment", "/replenishment", SEE_REPLENISHMENT)
MaySee = Annotated[Principal, Depends(allowed(*SEE_REPLENISHMENT))]
ROUTE = Query(pattern=r"^[A-Za-z0-9_.-]{0,40}$", description="only this route's pick list")
FORMAT = Query(description="csv or xlsx")
html = APIRouter()
api = APIRouter(tags=["books"])


def pick_list(ctx: WebContext, route: str) -> list[Suggestion]:
    settings = ctx.books_settings
    catch_up(ctx.store, utc_offset_minutes=settings.utc_offset_minutes)
    return suggestions(ctx.store, settings, route=route or None)


def pick_tables(lines: list[Suggestion]) -> list[Table]:
    tables = []
    for route in sorted({s.route for s in lines}):
        mine = [s for s in lines if s.route == route]
        tables.append(Table(f"Pick list, route {route}", [
            Column("stop", "Stop", "int"), Column("location", "Location"), Column("gtin", "GTIN"),
            Column("name", "Item"), Column("qty", "Bring", "int"), Column("reason", "Why"),
            Column("on_hand", "On hand", "int"), Column("target", "Target", "int"), Column("avg_use", "Avg use"),
            Column("request", "Request"), Column("pick_from", "Pick from")],
            [(s.stop, s.location, s.gtin, s.name, s.qty, s.reason, s.on_hand, s.target, f"{s.avg_use:g}",
              s.request, s.pick_from) for s in mine],
            totals=(None, "total", None, None, sum(s.qty for s in mine), None, None, None, None, None, None)))
    return tables or [Table("Pick list", [Column("location", "Location"), Column("qty", "Bring", "int")])]


@html.get("/replenishment", response_class=HTMLResponse, summary="The replenishment page: pick lists per route")
def replenishment_page(request: Request, who: MaySee, route: Annotated[str, ROUTE] = "") -> HTMLResponse:
    lines = pick_list(context_of(request), route)
    routes = sorted({s.route for s in lines})
    return page(request, "replenishment.html", who, routes={r: [s for s in lines if s.route == r] for r in routes},
                urgent=sum(s.urgent for s in lines), f={"route": route})


@html.get("/replenishment/export", summary="The pick lists as a file (CSV or XLSX)")
def replenishment_export(request: Request, who: MaySee, route: Annotated[str, ROUTE] = "",
                         format: Annotated[Literal["csv", "xlsx"], FORMAT] = "csv") -> Response:
    ctx = context_of(request)
    lines = pick_list(ctx, route)
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + ctx.config.utc_offset_minutes * 60))
    return export(ctx, who, report="replenishment", month=day[:7], fmt=format, tables=pick_tables(lines),
                  meta={"day": day, "lines": len(lines), "urgent": sum(s.urgent for s in lines)},
                  filename=f"pick-list-{day}" + (f"-{route}" if route else ""), route=route or "all")


@api.get("/replenishment", summary="The pick lists' lines, in picking order (supervisor)")
def replenishment_api(request: Request, who: MaySee, route: Annotated[str, ROUTE] = "") -> list[dict[str, Any]]:
    return [asdict(s) for s in pick_list(context_of(request), route)]
