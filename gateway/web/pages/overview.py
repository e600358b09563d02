"""The overview: devices online and offline with their backlog, open alarms, the HIS outbox, parked charges,
today's scans; charts of items charged per day and department and of the HIS round trip."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway.data.dashboard import DAY_MS
from gateway.web import charts
from gateway.web.alarm_list import collect_alarms
from gateway.web.auth import Anyone
from gateway.web.context import WebContext, context_of
from gateway.web.fleet_view import device_views
from gateway.web.pages import NavEntry
from gateway.web.render import page

NAV = NavEntry("Overview", "/")
CHART_DAYS = 14
PAST_DAYS_FOR_S = 600.0  # a past day's uses are counted again after this (late uploads, credits); today's always
html = APIRouter()
api = APIRouter(tags=["overview"])


def summary(ctx: WebContext, *, now: float | None = None) -> dict[str, Any]:
    at = time.time() if now is None else now
    devices = device_views(ctx.store, offline_after_s=ctx.config.offline_after_s, now=at)
    alarms = collect_alarms(ctx.store)
    offset_ms = ctx.config.utc_offset_minutes * 60_000
    today_start_ms = (int(at * 1000) + offset_ms) // DAY_MS * DAY_MS - offset_ms
    return {
        "devices": {
            "online": sum(d.status == "online" for d in devices),
            "offline": sum(d.status == "offline" for d in devices),
            "unknown": sum(d.status == "unknown" for d in devices),
            "backlog": sum(d.backlog for d in devices),
            "behind": sorted(d.device for d in devices if d.backlog > 0),
        },
        "alarms_open": sum(a.open for a in alarms),
        "alarms_open_critical": sum(a.open and a.critical for a in alarms),
        "his_outbox": ctx.store.dashboard.charge_count("pending"),
        "parked_charges": ctx.store.dashboard.charge_count("parked"),
        "scans_today": ctx.store.dashboard.scans_stored_since(today_start_ms / 1000),
    }


def chart_data(ctx: WebContext, *, now: float | None = None) -> dict[str, Any]:
    """Items charged per day and department, and the HIS round trip (queued to answered) p50/p95 per day.

    Past days' counts are kept for :data:`PAST_DAYS_FOR_S` (a month of consumption is hundreds of thousands
    of rows); today's are counted at every request.
    """
    at = time.time() if now is None else now
    offset_ms = ctx.config.utc_offset_minutes * 60_000
    today = (int(at * 1000) + offset_ms) // DAY_MS
    days = list(range(today - CHART_DAYS + 1, today + 1))
    since_ms = days[0] * DAY_MS - offset_ms
    uses: dict[int, dict[str, int]] = {}
    for day in days:
        counted = ctx.past_days.get(day)
        if day == today or counted is None or at - counted[0] > PAST_DAYS_FOR_S:
            counted = (at, ctx.store.dashboard.uses_per_dept(from_ms=day * DAY_MS - offset_ms,
                                                             to_ms=(day + 1) * DAY_MS - offset_ms))
            if day != today:
                ctx.past_days[day] = counted
        uses[day] = counted[1]
    for day in [d for d in ctx.past_days if d < days[0]]:
        del ctx.past_days[day]
    by_day: dict[int, list[float]] = {d: [] for d in days}
    for queued, answered in ctx.store.dashboard.his_round_trips(since=since_ms / 1000):
        day = (int(answered * 1000) + offset_ms) // DAY_MS
        if day in by_day:
            by_day[day].append(max(0.0, answered - queued))
    latency = [charts.Series("p50", tuple(charts.percentile(by_day[d], 0.5) for d in days)),
               charts.Series("p95", tuple(charts.percentile(by_day[d], 0.95) for d in days))]
    return {"days": days, "uses": charts.per_day(uses, days), "latency": latency}


@html.get("/", response_class=HTMLResponse, summary="The overview page")
def overview_page(request: Request, who: Anyone) -> HTMLResponse:
    ctx = context_of(request)
    data = chart_data(ctx)
    return page(request, "overview.html", who, s=summary(ctx),
                uses_chart=charts.stacked_bars("Items charged per day and department", data["days"], data["uses"]),
                latency_chart=charts.lines("HIS round trip, queued to answered (seconds)", data["days"],
                                           data["latency"], unit=" s"))


@api.get("/overview", summary="Devices, alarms, outbox, parked charges, today's scans")
def overview_api(request: Request, who: Anyone) -> dict[str, Any]:
    return summary(context_of(request))


@api.get("/charts", summary="The overview's chart data: uses per day and department, HIS round trip per day")
def charts_api(request: Request, who: Anyone) -> dict[str, Any]:
    data = chart_data(context_of(request))
    return {"days": [charts.day_label(d) for d in data["days"]],
            "uses_per_dept": {s.label: list(s.values) for s in data["uses"]},
            "his_round_trip_s": {s.label: list(s.values) for s in data["latency"]}}
