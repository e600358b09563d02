"""Reconciliation: the month's three-way reconciliation (HIS lines, consumption records, stock movements),
filtered by department and kind, each mismatch with a drill-down to its evidence: the device events as the
devices chained them, the gateway's charges with the HIS's answers, and the HIS's own lines.

The findings are :func:`gateway.books.reconcile.reconcile`'s, kept per month
(kept five minutes, :mod:`gateway.web.books_cache`). Seen by the supervisor, finance and inspector roles.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from gateway.books.inspect import by_kind_table, meta
from gateway.books.reconcile import KINDS, Finding, Reconciliation
from gateway.web.auth import Principal, allowed
from gateway.web.books_cache import MONTH, month_reconciliation, this_month
from gateway.web.context import WebContext, context_of
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import SEE_RECONCILIATION

NAV = NavEntry("Reconciliation", "/reconciliation", SEE_RECONCILIATION)
MaySee = Annotated[Principal, Depends(allowed(*SEE_RECONCILIATION))]
Kind = Literal["", "charged_not_taken", "taken_not_charged", "swapped_charge", "serial_reused", "expired_charged",
               "credit_without_charge", "charged_twice", "price_markup"]
DEPT = Query(pattern=r"^[^\x00-\x1f]{0,40}$", description="only this department's mismatches")
KIND = Query(description="only mismatches of this kind")
KEY = Query(min_length=1, max_length=80, pattern=r"^[!-~]+$",
            description="the finding's key: the HIS line id, or gtin/serial")
html = APIRouter()
api = APIRouter(tags=["books"])
assert set(KINDS) == set(Kind.__args__) - {""}  # type: ignore[attr-defined]


def _filtered(rec: Reconciliation, dept: str, kind: str) -> list[Finding]:
    return [f for f in rec.findings if (not dept or f.dept == dept) and (not kind or f.kind == kind)]


def _finding_json(rec: Reconciliation, f: Finding) -> dict[str, Any]:
    return {"kind": f.kind, "key": f.key, "at": rec.period.local_time(f.at_ms), "at_ms": f.at_ms, "dept": f.dept,
            "operator": f.operator, "amount_fen": f.amount_fen, "admission": f.admission, "gtin": f.gtin,
            "serial": f.serial, "events": f.events, "event_hashes": f.event_hashes, "charge_ids": f.charge_ids,
            "his_ids": f.his_ids, "his_refs": f.his_refs, "detail": f.detail}


def month_view(ctx: WebContext, month: str, dept: str, kind: str) -> dict[str, Any]:
    rec = month_reconciliation(ctx, month or this_month(ctx))
    found = _filtered(rec, dept, kind)
    return {"meta": meta(rec), "by_kind": by_kind_table(rec).records(),
            "departments": sorted({f.dept for f in rec.findings}),
            "mismatches": [_finding_json(rec, f) for f in found],
            "filtered_fen": sum(f.amount_fen for f in found)}


def evidence(ctx: WebContext, month: str, kind: str, key: str) -> dict[str, Any]:
    """One finding with what stands behind it, read back from the store; 404 if the month has no such finding."""
    rec = month_reconciliation(ctx, month or this_month(ctx))
    found = next((f for f in rec.findings if f.kind == kind and f.key == key), None)
    if found is None:
        raise HTTPException(404, f"no {kind or 'finding'} {key} in {rec.period.month}")
    keys = [(d, int(s)) for d, _, s in (e.rpartition(":") for e in found.events)]
    events = [{"device": e.device, "seq": e.seq, "at": ctx.local_time(e.ts_ms / 1000), "kind": e.kind,
               "body": e.body, "hash": e.hash, "stored": ctx.local_time(e.stored_at)}
              for e in ctx.store.evidence.events(keys)]
    charges = [c._asdict() for c in (ctx.store.dashboard.charge(cid) for cid in found.charge_ids) if c is not None]
    his = [ln._asdict() for ln in ctx.store.evidence.his_lines(found.his_ids)]
    for ln in his:
        ln["at"] = rec.period.local_time(ln["at_ms"])
    return {"month": rec.period.month, "finding": _finding_json(rec, found), "device_events": events,
            "charges": charges, "his_lines": his}


@html.get("/reconciliation", response_class=HTMLResponse, summary="The reconciliation page")
def reconciliation_page(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                        dept: Annotated[str, DEPT] = "", kind: Annotated[Kind, KIND] = "") -> HTMLResponse:
    view = month_view(context_of(request), month, dept, kind)
    return page(request, "reconciliation.html", who, v=view, kinds=KINDS,
                f={"month": view["meta"]["month"], "dept": dept, "kind": kind})


@html.get("/reconciliation/finding", response_class=HTMLResponse, summary="One mismatch and its evidence")
def finding_page(request: Request, who: MaySee, kind: Annotated[Kind, KIND], key: Annotated[str, KEY],
                 month: Annotated[str, MONTH] = "") -> HTMLResponse:
    return page(request, "finding.html", who, e=evidence(context_of(request), month, kind, key))


@api.get("/reconciliation", summary="The month's mismatches, by department and kind (supervisor, finance, inspector)")
def reconciliation_api(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                       dept: Annotated[str, DEPT] = "", kind: Annotated[Kind, KIND] = "") -> dict[str, Any]:
    return month_view(context_of(request), month, dept, kind)


@api.get("/reconciliation/finding", summary="One mismatch with its device events, charges and HIS lines")
def finding_api(request: Request, who: MaySee, kind: Annotated[Kind, KIND], key: Annotated[str, KEY],
                month: Annotated[str, MONTH] = "") -> dict[str, Any]:
    return evidence(context_of(request), month, kind, key)
