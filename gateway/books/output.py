"""How every books command writes what it found: one shape (titled tables of typed columns), four formats.

``table`` is for a person at a terminal (rich renders it), ``json`` for programs (money stays integer fen,
keys end in ``_fen``), ``csv`` and ``xlsx`` for the finance office and the inspector (money in yuan with two
decimals, computed from fen exactly, never through floats; XLSX cells typed, money as numbers with a
``0.00`` format, one sheet per table). A long computation shows a progress bar on stderr when stderr is a
terminal, and nothing otherwise (cron, pipes, tests).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TextIO, TypeVar

FORMATS: Final = ("table", "json", "csv", "xlsx")
ColumnKind = Literal["text", "int", "fen", "date", "time"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Column:
    key: str  # the JSON key; a ``fen`` column's key ends in ``_fen``
    title: str  # the heading in table, CSV and XLSX
    kind: ColumnKind = "text"


@dataclass(slots=True)
class Table:
    title: str
    columns: Sequence[Column]
    rows: list[Sequence[Any]] = field(default_factory=list)
    totals: Sequence[Any] | None = None  # a last row under the others (None in a column: left empty)
    more: Iterable[Sequence[Any]] | None = None  # rows read once, after ``rows``, as they are written (streamed)

    def __post_init__(self) -> None:
        for c in self.columns:
            if c.kind == "fen" and not c.key.endswith("_fen"):
                raise ValueError(f"money column {c.key!r} must be named ..._fen")

    def records(self) -> list[dict[str, Any]]:
        keys = [c.key for c in self.columns]
        return [dict(zip(keys, row, strict=True)) for row in self.data()]

    def data(self) -> Iterator[Sequence[Any]]:
        """The rows, then the streamed ones (consumed: a table with ``more`` is written once)."""
        yield from self.rows
        if self.more is not None:
            yield from self.more


def yuan(fen: int) -> Decimal:
    """Integer fen as yuan with two decimals, exactly."""
    return (Decimal(int(fen)) / 100).quantize(Decimal("0.01"))


def _cell_text(value: Any, kind: ColumnKind) -> str:
    if value is None:
        return ""
    if kind == "fen":
        return f"{yuan(value)}"
    return str(value)


def add_format_option(parser: argparse.ArgumentParser, *, default: str = "table") -> None:
    parser.add_argument("--format", choices=FORMATS, default=default,
                        help=f"output format (default {default}); xlsx needs --output")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="write to this file instead of standard output (required for xlsx)")


def write(tables: Sequence[Table], fmt: str, output: Path | None = None, *, meta: dict[str, Any] | None = None,
          stream: TextIO | None = None) -> None:
    """Write ``tables`` in ``fmt`` to ``output`` (a file) or ``stream`` (default stdout)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "xlsx":
        if output is None:
            raise ValueError("xlsx is a file: give --output FILE.xlsx")
        write_xlsx(tables, output, meta=meta)
        return
    if fmt == "csv":  # row by row into the file: a streamed table never sits in memory whole
        if output is not None:
            with output.open("w", encoding="utf-8", newline="") as f:
                write_csv(tables, f)
        else:
            write_csv(tables, stream or sys.stdout)
        return
    text = {"table": render_table, "json": render_json}[fmt](tables, meta)
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        (stream or sys.stdout).write(text)


def render_json(tables: Sequence[Table], meta: dict[str, Any] | None = None) -> str:
    doc: dict[str, Any] = dict(meta or {})
    for t in tables:
        entry: dict[str, Any] = {"title": t.title, "rows": t.records()}
        if t.totals is not None:
            entry["totals"] = dict(zip([c.key for c in t.columns], t.totals, strict=True))
        doc[_key(t.title)] = entry
    return json.dumps(doc, ensure_ascii=False, indent=1, default=str) + "\n"


def render_csv(tables: Sequence[Table], meta: dict[str, Any] | None = None) -> str:
    """One CSV section per table: its title on a line of its own, then the header and rows, then a blank line."""
    buf = io.StringIO()
    write_csv(tables, buf)
    return buf.getvalue()


def write_csv(tables: Sequence[Table], stream: TextIO) -> None:
    """:func:`render_csv` written to ``stream`` row by row."""
    w = csv.writer(stream, lineterminator="\n")
    for i, t in enumerate(tables):
        if len(tables) > 1:
            if i:
                w.writerow([])
            w.writerow([f"# {t.title}"])
        w.writerow([c.title for c in t.columns])
        for row in _all_rows(t):
            w.writerow([_cell_text(v, c.kind) for v, c in zip(row, t.columns, strict=True)])


def render_table(tables: Sequence[Table], meta: dict[str, Any] | None = None) -> str:
    from rich.console import Console
    from rich.table import Table as RichTable

    buf = io.StringIO()
    console = Console(file=buf, width=200, no_color=True, highlight=False)
    for t in tables:
        rt = RichTable(title=t.title, show_lines=False, title_justify="left")
        for c in t.columns:
            rt.add_column(c.title, justify="right" if c.kind in ("int", "fen") else "left")
        for row in t.data():
            rt.add_row(*(_cell_text(v, c.kind) for v, c in zip(row, t.columns, strict=True)))
        if t.totals is not None:
            rt.add_section()
            rt.add_row(*(_cell_text(v, c.kind) for v, c in zip(t.totals, t.columns, strict=True)))
        console.print(rt)
    return buf.getvalue()


def write_xlsx(tables: Sequence[Table], path: Path, *, meta: dict[str, Any] | None = None) -> None:
    openpyxl = importlib.import_module("openpyxl")
    wb = openpyxl.Workbook(write_only=True)
    used: set[str] = set()
    if meta:
        ws = wb.create_sheet("About")
        for k, v in meta.items():
            ws.append([str(k), str(v)])
    for t in tables:
        ws = wb.create_sheet(_sheet_name(t.title, used))
        ws.append([c.title for c in t.columns])
        for row in _all_rows(t):
            ws.append([_xlsx_cell(openpyxl, ws, v, c.kind) for v, c in zip(row, t.columns, strict=True)])
    wb.save(path)


def _xlsx_cell(openpyxl: Any, ws: Any, value: Any, kind: ColumnKind) -> Any:
    if value is None:
        return None
    if kind == "fen":
        cell = openpyxl.cell.WriteOnlyCell(ws, value=yuan(value))
        cell.number_format = "0.00"
        return cell
    if kind == "int":
        return int(value)
    return str(value)


def _all_rows(t: Table) -> Iterator[Sequence[Any]]:
    yield from t.data()
    if t.totals is not None:
        yield t.totals


def _key(title: str) -> str:
    return "_".join("".join(ch if ch.isalnum() else " " for ch in title.lower()).split())


def _sheet_name(title: str, used: set[str]) -> str:
    base = "".join(ch for ch in title if ch not in "[]:*?/\\")[:28] or "Sheet"
    name, n = base, 2
    while name in used:
        name, n = f"{base[:26]} {n}", n + 1
    used.add(name)
    return name


def progress(items: Iterable[T], *, total: int | None, description: str) -> Iterator[T]:
    """``items`` unchanged; with a terminal on stderr, a progress bar (rich) while they are consumed."""
    if not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
