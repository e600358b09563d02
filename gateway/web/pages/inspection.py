"""The inspector's report: the month's red flags per department and operator, by kind, with the evidence chain
of each (the reconciliation's findings), and the same workbook ``spd-gateway inspect --format xlsx`` writes as a
download. Seen by the inspector and supervisor roles; every download is audited (``books_exported``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.books.inspect import by_dept_table, by_kind_table, evidence_table, meta, summary_table
from gateway.books.output import Table
from gateway.books.reconcile import KINDS, Reconciliation
from gateway.web.auth import Principal, allowed
from gateway.web.books_cache import MONTH, month_reconciliation, this_month
from gateway.web.context import WebContext, context_of
from gateway.web.download import export
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import SEE_INSPECTION

NAV = NavEntry("Inspector's report", "/inspection", SEE_INSPECTION)
MaySee = Annotated[Principal, Depends(allowed(*SEE_INSPECTION))]
FORMAT = Query(description="xlsx (the inspector's workbook) or csv")
html = APIRouter()
api = APIRouter(tags=["books"])


def _month(ctx: WebContext, month: str) -> Reconciliation:
    return month_reconciliation(ctx, month or this_month(ctx))


def report_tables(rec: Reconciliation) -> list[Table]:
    """The workbook's sheets, as ``spd-gateway inspect`` writes them."""
    return [summary_table(rec), by_dept_table(rec), by_kind_table(rec), evidence_table(rec, "Evidence")]


def report(ctx: WebContext, month: str) -> dict[str, Any]:
    rec = _month(ctx, month)
    return {"meta": meta(rec), "summary": summary_table(rec).records(), "by_department": by_dept_table(rec).records(),
            "by_kind": by_kind_table(rec).records(), "kinds": list(KINDS)}


def _download(request: Request, who: Principal, month: str, fmt: Literal["xlsx", "csv"]) -> Response:
    ctx = context_of(request)
    rec = _month(ctx, month)
    return export(ctx, who, report="inspection", month=rec.period.month, fmt=fmt, tables=report_tables(rec),
                  meta=meta(rec), filename=f"inspect-{rec.period.month}", flags=len(rec.findings))


@html.get("/inspection", response_class=HTMLResponse, summary="The inspector's report page")
def inspection_page(request: Request, who: MaySee, month: Annotated[str, MONTH] = "") -> HTMLResponse:
    return page(request, "inspection.html", who, r=report(context_of(request), month))


@html.get("/inspection/export", summary="The inspector's report as a file (XLSX or CSV)")
def inspection_export_page(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                           format: Annotated[Literal["xlsx", "csv"], FORMAT] = "xlsx") -> Response:
    return _download(request, who, month, format)


@api.get("/inspection", summary="The inspector's report: red flags per department and operator (inspector, supervisor)")
def inspection_api(request: Request, who: MaySee, month: Annotated[str, MONTH] = "") -> dict[str, Any]:
    return report(context_of(request), month)


@api.get("/inspection/export", summary="The inspector's report as an XLSX or CSV file")
def inspection_export_api(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                          format: Annotated[Literal["xlsx", "csv"], FORMAT] = "xlsx") -> Response:
    return _download(request, who, month, format)
