"""The fleet: every device, online or offline, last seen, version, backlog, alarms, config versions applied."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway.web.auth import Anyone
from gateway.web.context import context_of
from gateway.web.fleet_view import device_views
from gateway.web.pages import NavEntry
from gateway.web.render import page

NAV = NavEntry("Fleet", "/fleet")
html = APIRouter()
api = APIRouter(tags=["fleet"])


@html.get("/fleet", response_class=HTMLResponse, summary="The fleet page")
def fleet_page(request: Request, who: Anyone) -> HTMLResponse:
    ctx = context_of(request)
    return page(request, "fleet.html", who, devices=device_views(ctx.store, offline_after_s=ctx.config.offline_after_s))


@api.get("/devices", summary="Every device with its status, backlog, alarms and versions")
def devices_api(request: Request, who: Anyone) -> list[dict[str, Any]]:
    ctx = context_of(request)
    return [dataclasses.asdict(d) | {"in_sync": d.in_sync}
            for d in device_views(ctx.store, offline_after_s=ctx.config.offline_after_s)]
