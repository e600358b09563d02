"""A report of the books as a file the browser downloads: the books' own writer (:mod:`gateway.books.output`),
the right content type, a file name, and a row in the audit log for every export."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

from fastapi.responses import Response

from gateway.audit import AuditAction
from gateway.books.output import Table, render_csv, write_xlsx
from gateway.web.auth import Principal
from gateway.web.context import WebContext

ExportFormat = Literal["csv", "xlsx"]
CONTENT_TYPES: Final = {"csv": "text/csv; charset=utf-8",
                        "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def export(ctx: WebContext, who: Principal, *, report: str, month: str, fmt: ExportFormat,
           tables: Sequence[Table], meta: dict[str, Any], filename: str, **detail: Any) -> Response:
    """``tables`` as a CSV or XLSX attachment named ``filename`` (without its extension); audited."""
    if fmt == "csv":
        body = render_csv(tables, meta).encode("utf-8-sig")  # the BOM: spreadsheet programs then read UTF-8
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "report.xlsx"
            write_xlsx(tables, path, meta=meta)
            body = path.read_bytes()
    name = f"{filename}.{fmt}"
    ctx.audit.record(who.actor, AuditAction.BOOKS_EXPORTED, report=report, month=month, format=fmt, file=name,
                     bytes=len(body), **detail)
    return Response(body, media_type=CONTENT_TYPES[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
