"""The settlement as tables: the suppliers' overview, each supplier's list, the high-value trace summary and
detail (streamed), in the shape :mod:`gateway.books.output` writes as table, JSON, CSV or XLSX."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from gateway.books.output import Column, Table
from gateway.books.period import local_time_text
from gateway.books.settlement import DetailLine, Settlement, SupplierSettlement

LINE_COLUMNS = (
    Column("supplier", "Supplier"), Column("gtin", "GTIN"), Column("item_code", "Item code"),
    Column("name", "Item"), Column("entry", "Entry"), Column("units", "Units", "int"),
    Column("charged_unit_fen", "Charged unit price", "fen"), Column("settled_unit_fen", "Purchase unit price", "fen"),
    Column("contract_no", "Contract"), Column("charged_fen", "Charged", "fen"),
    Column("settled_fen", "Settled", "fen"), Column("note", "Note"),
)
OVERVIEW_COLUMNS = (
    Column("supplier", "Supplier"), Column("name", "Name"), Column("licence_no", "Licence"),
    Column("lines", "Lines", "int"), Column("units", "Units", "int"), Column("charged_fen", "Charged", "fen"),
    Column("settled_fen", "Settled", "fen"), Column("difference_fen", "Charged - settled", "fen"),
)
TRACE_COLUMNS = (
    Column("supplier", "Supplier"), Column("gtin", "GTIN"), Column("name", "Item"), Column("used", "Used", "int"),
    Column("credited", "Credited", "int"), Column("settled_fen", "Settled", "fen"),
)
DETAIL_COLUMNS = (
    Column("supplier", "Supplier"), Column("entry", "Entry"), Column("gtin", "GTIN"), Column("name", "Item"),
    Column("lot", "Lot"), Column("serial", "Serial"), Column("admission", "Admission"), Column("dept", "Department"),
    Column("operator", "Operator"), Column("at", "Used / returned at"), Column("charge_id", "Charge / credit id"),
    Column("his_ref", "HIS ref"), Column("settled_fen", "Settled", "fen"),
)


def meta(s: Settlement, supplier: str | None) -> dict[str, Any]:
    na = s.not_accepted
    out: dict[str, Any] = {
        "month": s.period.label,
        "time_zone": str(s.period.tz.key),
        "from": local_time_text(s.period.start_ms, s.period.tz),
        "to_before": local_time_text(s.period.end_ms, s.period.tz),
        "supplier": supplier if supplier is not None else "all",
        "period_rule": "charges by local time of use, credits by local time of the return; HIS-accepted only",
        "units": s.units,
        "charged_fen": s.charged_fen,
        "settled_fen": s.settled_fen,
        "pending_at_his": na.pending,
        "pending_at_his_fen": na.pending_fen,
        "refused_by_his": na.refused,
        "refused_by_his_fen": na.refused_fen,
    }
    if na.pending:
        out["warning"] = (f"{na.pending} charges used in {s.period.label} are still waiting for the HIS and are not "
                          "settled: settle again once the outbox has drained")
    return out


def tables(s: Settlement, detail: Iterator[DetailLine] | None, *, supplier: str | None) -> list[Table]:
    """Overview (all suppliers) or the one supplier's list, then the trace summary and the streamed detail."""
    out: list[Table] = []
    if supplier is None:
        out.append(Table(f"Suppliers {s.period.label}", OVERVIEW_COLUMNS,
                         [_overview(x) for x in s.suppliers],
                         totals=("total", "", "", sum(len(x.lines) for x in s.suppliers), s.units, s.charged_fen,
                                 s.settled_fen, s.charged_fen - s.settled_fen)))
    for x in s.suppliers:
        out.append(Table(f"Settlement {x.label} {s.period.label}", LINE_COLUMNS,
                         [_line_row(x, line) for line in x.lines],
                         totals=("total", "", "", "", "", x.units, None, None, "", x.charged_fen, x.settled_fen, "")))
    trace: list[Sequence[Any]] = [(x.label, t.gtin, t.name, t.used, t.credited, t.settled_fen)
                                  for x in s.suppliers for t in x.trace]
    out.append(Table(f"High-value summary {s.period.label}", TRACE_COLUMNS, trace,
                     totals=("total", "", "", sum(r[3] for r in trace), sum(r[4] for r in trace),
                             sum(r[5] for r in trace))))
    if detail is not None:
        out.append(Table(f"High-value detail {s.period.label}", DETAIL_COLUMNS, more=(_detail_row(d) for d in detail)))
    return out


def _overview(x: SupplierSettlement) -> Sequence[Any]:
    return (x.label, x.name, x.licence_no, len(x.lines), x.units, x.charged_fen, x.settled_fen,
            x.charged_fen - x.settled_fen)


def _line_row(x: SupplierSettlement, line: Any) -> Sequence[Any]:
    return (x.label, line.gtin, line.item_code, line.name, line.entry, line.units, line.charged_unit_fen,
            line.settled_unit_fen, line.contract_no, line.charged_fen, line.settled_fen, line.note)


def _detail_row(d: DetailLine) -> Sequence[Any]:
    return (d.supplier or "unknown supplier", d.entry, d.gtin, d.name, d.lot, d.serial, d.admission, d.dept,
            d.operator, d.at, d.charge_id, d.his_ref, d.settled_fen)
