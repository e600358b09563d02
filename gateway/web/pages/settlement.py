"""Settlement: per supplier, what the hospital used in a month at the purchase price, to the cent
(:func:`gateway.books.settlement.settle`), with the supplier's lines, the high-value trace summary, and the
same file ``spd-gateway settlement --format csv|xlsx`` writes as a download (with the high-value detail).
Seen by the supervisor and finance roles; every download is audited (``books_exported``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.books.settlement import Settlement, detail, settle
from gateway.books.settlement_report import meta, tables
from gateway.web.auth import Principal, allowed
from gateway.web.books_cache import MONTH, books_period, reports_of, this_month
from gateway.web.context import WebContext, context_of
from gateway.web.download import export
from gateway.web.pages import NavEntry
from gateway.web.render import page
from gateway.web.roles import SEE_SETTLEMENT

NAV = NavEntry("Settlement", "/settlement", SEE_SETTLEMENT)
MaySee = Annotated[Principal, Depends(allowed(*SEE_SETTLEMENT))]
SUPPLIER = Query(pattern=r"^[^\x00-\x1f]{0,64}$", description="only this supplier (its code); default all")
FORMAT = Query(description="xlsx or csv")
html = APIRouter()
api = APIRouter(tags=["books"])


def month_settlement(ctx: WebContext, month: str, supplier: str) -> Settlement:
    m = month or this_month(ctx)
    return reports_of(ctx).get(f"settlement:{supplier}", m,
                               lambda: settle(ctx.store, books_period(ctx, m), supplier=supplier or None))


def view(ctx: WebContext, month: str, supplier: str) -> dict[str, Any]:
    s = month_settlement(ctx, month, supplier)
    shown = tables(s, None, supplier=supplier or None)
    return {"meta": meta(s, supplier or None),
            "suppliers": [{"supplier": x.supplier, "label": x.label, "name": x.name, "licence_no": x.licence_no,
                           "lines": len(x.lines), "units": x.units, "charged_fen": x.charged_fen,
                           "settled_fen": x.settled_fen} for x in s.suppliers],
            "tables": [{"title": t.title, "columns": [{"key": c.key, "title": c.title, "kind": c.kind}
                                                      for c in t.columns],
                        "rows": t.records(),
                        "totals": dict(zip([c.key for c in t.columns], t.totals, strict=True))
                        if t.totals is not None else None} for t in shown]}


def _download(request: Request, who: Principal, month: str, supplier: str, fmt: Literal["xlsx", "csv"]) -> Response:
    ctx = context_of(request)
    s = month_settlement(ctx, month, supplier)
    label = s.period.label
    lines = detail(ctx.store, s.period, supplier=supplier or None)
    return export(ctx, who, report="settlement", month=label, fmt=fmt,
                  tables=tables(s, lines, supplier=supplier or None), meta=meta(s, supplier or None),
                  filename=f"settlement-{label}" + (f"-{_safe(supplier)}" if supplier else ""),
                  supplier=supplier or "all", settled_fen=s.settled_fen)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40]


@html.get("/settlement", response_class=HTMLResponse, summary="The settlement page")
def settlement_page(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                    supplier: Annotated[str, SUPPLIER] = "") -> HTMLResponse:
    ctx = context_of(request)
    return page(request, "settlement.html", who, v=view(ctx, month, supplier),
                everyone=[x.supplier for x in month_settlement(ctx, month, "").suppliers],
                f={"month": month or this_month(ctx), "supplier": supplier})


@html.get("/settlement/export", summary="The settlement as a file (XLSX or CSV), with the high-value detail")
def settlement_export_page(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                           supplier: Annotated[str, SUPPLIER] = "",
                           format: Annotated[Literal["xlsx", "csv"], FORMAT] = "xlsx") -> Response:
    return _download(request, who, month, supplier, format)


@api.get("/settlement", summary="The month's settlement per supplier, with totals (supervisor, finance)")
def settlement_api(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                   supplier: Annotated[str, SUPPLIER] = "") -> dict[str, Any]:
    return view(context_of(request), month, supplier)


@api.get("/settlement/export", summary="The settlement as an XLSX or CSV file")
def settlement_export_api(request: Request, who: MaySee, month: Annotated[str, MONTH] = "",
                          supplier: Annotated[str, SUPPLIER] = "",
                          format: Annotated[Literal["xlsx", "csv"], FORMAT] = "xlsx") -> Response:
    return _download(request, who, month, supplier, format)
