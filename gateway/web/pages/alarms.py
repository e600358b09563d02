"""Alarms: device alarms, hash-chain breaks and not_linked takes; acknowledge one with a comment.

Acknowledging is for the supervisor and technician roles; the comment is kept with the alarm
(``alarm_acks``) and in the audit log (``alarm_acknowledged``). The first acknowledgement stands.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field

from gateway.audit import AuditAction
from gateway.web.alarm_list import ALARM_ID, Alarm, collect_alarms
from gateway.web.auth import Anyone, MayAcknowledge, Principal
from gateway.web.context import WebContext, context_of
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import ACKNOWLEDGE_ALARM

NAV = NavEntry("Alarms", "/alarms")
ALARM = Path(pattern=ALARM_ID.pattern, description="event:<device>:<seq>, chain:<device>:<seq> or link:<cabinet>:<seq>")
MAX_COMMENT = 500
SHOW = Query(pattern=r"^(open|all)$", description="open alarms only (default) or all")
html = APIRouter()
api = APIRouter(tags=["alarms"])


class AckRequest(BaseModel):
    comment: str = Field(min_length=3, max_length=MAX_COMMENT, description="what was found or done")


def acknowledge(ctx: WebContext, who: Principal, alarm_id: str, comment: str) -> Alarm:
    comment = comment.strip()
    if not 3 <= len(comment) <= MAX_COMMENT:
        raise HTTPException(422, f"a comment of 3 to {MAX_COMMENT} characters says what was found or done")
    alarm = next((a for a in collect_alarms(ctx.store, limit=100_000) if a.id == alarm_id), None)
    if alarm is None:
        raise HTTPException(404, f"no alarm {alarm_id}")
    if not ctx.store.accounts.acknowledge(alarm_id, who.actor, comment, now=time.time()):
        raise HTTPException(409, f"alarm {alarm_id} was acknowledged already")
    ctx.audit.record(who.actor, AuditAction.ALARM_ACKNOWLEDGED, device=alarm.device, alarm=alarm_id,
                     kind=alarm.kind, comment=comment)
    return dataclasses.replace(alarm, ack=ctx.store.accounts.acks().get(alarm_id))


def _as_json(a: Alarm) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "device": a.device, "at": a.at, "summary": a.summary, "later": a.later,
            "open": a.open, "critical": a.critical, "ack": a.ack._asdict() if a.ack else None}


@html.get("/alarms", response_class=HTMLResponse, summary="The alarms page")
def alarms_page(request: Request, who: Anyone, show: Annotated[str, SHOW] = "open") -> HTMLResponse:
    alarms = collect_alarms(context_of(request).store)
    shown = alarms if show == "all" else [a for a in alarms if a.open]
    return page(request, "alarms.html", who, alarms=shown, show=show, total=len(alarms),
                may_ack=who.role in ACKNOWLEDGE_ALARM, max_comment=MAX_COMMENT)


@html.post("/alarms/{alarm_id}/acknowledge", summary="Acknowledge an alarm (form)")
def acknowledge_page(request: Request, who: MayAcknowledge, alarm_id: Annotated[str, ALARM],
                     comment: Annotated[str, Form(max_length=MAX_COMMENT)] = "") -> RedirectResponse:
    acknowledge(context_of(request), who, alarm_id, comment)
    return RedirectResponse("/alarms", status_code=303)


@api.get("/alarms", summary="Every alarm, newest first, with its acknowledgement")
def alarms_api(request: Request, who: Anyone, show: Annotated[str, SHOW] = "open") -> list[dict[str, Any]]:
    alarms = collect_alarms(context_of(request).store)
    return [_as_json(a) for a in alarms if show == "all" or a.open]


@api.post("/alarms/{alarm_id}/acknowledge", summary="Acknowledge an alarm with a comment (supervisor, technician)")
def acknowledge_api(request: Request, who: MayAcknowledge, alarm_id: Annotated[str, ALARM],
                    body: AckRequest) -> dict[str, Any]:
    return _as_json(acknowledge(context_of(request), who, alarm_id, body.comment))
