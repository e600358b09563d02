"""The books' one output shape in its four formats: money exact in every one."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from gateway.books.output import Column, Table, render_csv, render_json, render_table, write, yuan

COLS = [Column("supplier", "Supplier"), Column("lines", "Lines", "int"), Column("amount_fen", "Amount", "fen")]


def _table() -> Table:
    return Table("Settlement 2026-11", COLS, [("S1", 3, 30_001), ("S2", 1, 5)], totals=("total", 4, 30_006))


def test_money_is_exact_in_every_text_format() -> None:
    assert str(yuan(30_001)) == "300.01" and str(yuan(5)) == "0.05" and str(yuan(-120)) == "-1.20"
    rows = list(csv.reader(io.StringIO(render_csv([_table()]))))
    assert rows == [["Supplier", "Lines", "Amount"], ["S1", "3", "300.01"], ["S2", "1", "0.05"],
                    ["total", "4", "300.06"]]
    doc = json.loads(render_json([_table()], {"month": "2026-11"}))
    assert doc["month"] == "2026-11"
    assert doc["settlement_2026_11"]["rows"][0] == {"supplier": "S1", "lines": 3, "amount_fen": 30_001}
    assert doc["settlement_2026_11"]["totals"]["amount_fen"] == 30_006
    assert "300.01" in render_table([_table()])


def test_xlsx_has_typed_cells(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    out = tmp_path / "s.xlsx"
    write([_table()], "xlsx", out, meta={"month": "2026-11"})
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["About", "Settlement 2026-11"]
    ws = wb["Settlement 2026-11"]
    assert [c.value for c in ws[2]] == ["S1", 3, pytest.approx(300.01)]
    assert ws["C2"].number_format == "0.00"


def test_a_money_column_must_say_fen_and_xlsx_needs_a_file() -> None:
    with pytest.raises(ValueError, match="_fen"):
        Table("x", [Column("amount", "Amount", "fen")])
    with pytest.raises(ValueError, match="--output"):
        write([_table()], "xlsx")
