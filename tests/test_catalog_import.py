"""Catalog and recalled-lots import from CSV and XLSX: row-level errors, fen prices, VBP terms, the CLI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from gateway.catalog import (
    CatalogEntry,
    CatalogFileError,
    RecalledLot,
    RowError,
    import_catalog,
    load_catalog_entries,
    load_recalled_lots,
    parse_catalog_csv,
    read_catalog_file,
    read_recall_file,
)
from gateway.cli import main
from gateway.store import GatewayStore

HEADER = ["gtin", "item_code", "charge_code", "name", "spec", "manufacturer", "price_fen", "chargeable",
          "high_value", "supplier", "vbp", "vbp_price_fen"]
STENT = "06901234567892"
GAUZE = "06901234567809"


def write_xlsx(path: Path, rows: list[list[Any]], *, title: str = "catalog") -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = title
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


def test_xlsx_catalog_with_numeric_cells_and_vbp_terms_is_imported(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "catalog.xlsx", [
        HEADER,
        [6901234567892, "HC00001", "33100001", "冠脉药物洗脱支架", "3.0x18mm", "微创医疗", 589000, True, True,
         "国药控股", True, 589000],
        [None] * 12,
        ["06901234567809", "HC00007", 33100007, "可吸收止血纱布", "5x7.5cm", "强生", 21800.0, 1, 0, None, None, None],
    ])
    entries, errors = read_catalog_file(path)
    assert errors == []
    assert entries == [
        CatalogEntry(STENT, "HC00001", "33100001", "冠脉药物洗脱支架", "3.0x18mm", "微创医疗", 589000, True, True,
                     "国药控股", True, 589000),
        CatalogEntry(GAUZE, "HC00007", "33100007", "可吸收止血纱布", "5x7.5cm", "强生", 21800, True, False),
    ]


def test_xlsx_bad_rows_are_reported_by_sheet_row_and_column_and_good_rows_kept(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "catalog.xlsx", [
        HEADER,
        [STENT, "HC00001", "33100001", "支架", "", "", 5890.5, True, True, "", False, None],
        ["06901234567891", "HC00002", "33100002", "球囊", "", "", 168000, "maybe", True, "", False, None],
        [GAUZE, "HC00007", "33100007", "纱布", "", "", 21800, True, False, "", False, None],
        [GAUZE, "HC00008", "", "纱布", "", "", -5, True, False, "", False, None],
    ])
    entries, errors = read_catalog_file(path)
    assert [e.gtin for e in entries] == [GAUZE]
    assert errors == [
        RowError(2, "price_fen", "price must be a non-negative integer number of fen, got '5890.5'"),
        RowError(3, "gtin", "not a valid GTIN: '06901234567891'"),
        RowError(3, "chargeable", "expected 1/0/true/false, got 'maybe'"),
        RowError(5, "gtin", f"duplicate GTIN {GAUZE}"),
        RowError(5, "charge_code", "empty"),
        RowError(5, "price_fen", "price must be a non-negative integer number of fen, got '-5'"),
    ]


def test_vbp_item_marked_up_above_its_winning_price_is_refused() -> None:
    text = ",".join(HEADER) + "\n" + f"{STENT},HC1,3310,支架,,,600000,1,1,国药,1,589000\n"
    entries, errors = parse_catalog_csv(text)
    assert entries == []
    assert errors == [
        RowError(2, "price_fen", "zero mark-up: a VBP item is charged at its VBP price 589000, not 600000")
    ]


def test_vbp_item_without_price_and_price_without_vbp_are_refused() -> None:
    rows = f"{STENT},HC1,3310,支架,,,589000,1,1,,yes,\n{GAUZE},HC7,3317,纱布,,,21800,1,0,,no,21800\n"
    text = ",".join(HEADER) + "\n" + rows
    _, errors = parse_catalog_csv(text)
    assert errors == [
        RowError(2, "vbp_price_fen", "a VBP winning item needs its VBP price"),
        RowError(3, "vbp_price_fen", "a VBP price is given but vbp is false"),
    ]


def test_csv_without_the_optional_columns_still_imports() -> None:
    text = ",".join(HEADER[:9]) + "\n" + f"{STENT},HC1,3310,支架,3.0x18mm,微创,589000,true,yes\n"
    entries, errors = parse_catalog_csv(text)
    assert errors == []
    assert entries == [CatalogEntry(STENT, "HC1", "3310", "支架", "3.0x18mm", "微创", 589000, True, True)]


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (HEADER[1:], RowError(1, "gtin", "missing columns")),
        ([*HEADER, "markup"], RowError(1, "markup", "unknown columns")),
        ([*HEADER[:9], "gtin"], RowError(1, "gtin", "duplicate columns")),
    ],
)
def test_bad_header_refuses_the_whole_file(tmp_path: Path, header: list[str], error: RowError) -> None:
    path = write_xlsx(tmp_path / "catalog.xlsx", [header, [STENT, "HC1", "3310", "支架"]])
    assert read_catalog_file(path) == ([], [error])


def test_unknown_extension_and_broken_workbook_are_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogFileError) as err:
        read_catalog_file(tmp_path / "catalog.xls")
    assert err.value.reason == "unsupported_format"
    broken = tmp_path / "catalog.xlsx"
    broken.write_bytes(b"not a zip")
    with pytest.raises(CatalogFileError) as err:
        read_catalog_file(broken)
    assert err.value.reason == "bad_file"


def test_import_stores_items_and_purchase_terms_idempotently(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.db")
    entry = CatalogEntry(STENT, "HC1", "3310", "支架", "", "", 589000, True, True, "国药", True, 589000)
    assert import_catalog(store, [entry]) == 1
    assert import_catalog(store, [entry]) == 1
    assert load_catalog_entries(store) == [entry]
    assert store.load_catalog_rows() == [(STENT, "HC1", "3310", "支架", "", "", 589000, 1, 1)]
    store.close()


def test_recalled_lots_import_from_xlsx_with_dates(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "recalls.xlsx", [
        ["gtin", "lot", "reason", "recalled_on"],
        [STENT, "L2211", "coating defect", dt.datetime(2026, 11, 20)],
        [GAUZE, "*", "", None],
        [STENT, "", "", "2026-13-01"],
    ])
    lots, errors = read_recall_file(path)
    assert lots == [RecalledLot(STENT, "L2211", "coating defect", "2026-11-20"), RecalledLot(GAUZE, "*", "", "")]
    assert errors == [
        RowError(4, "lot", "empty (use * to recall every lot)"),
        RowError(4, "recalled_on", "expected YYYY-MM-DD, got '2026-13-01'"),
    ]


def test_cli_imports_both_formats_by_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "g.db"
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(",".join(HEADER[:9]) + "\n" + f"{STENT},HC1,3310,支架,,,589000,1,1\n", encoding="utf-8")
    xlsx_path = write_xlsx(tmp_path / "b.xlsx", [HEADER, [GAUZE, "HC7", "3317", "纱布", "", "", 21800, 1, 0],
                                                 ["124", "HC8", "3318", "x", "", "", 1, 1, 0]])
    assert main(["catalog-import", "--db", str(db), str(csv_path)]) == 0
    assert main(["catalog-import", "--db", str(db), str(xlsx_path)]) == 1
    out = capsys.readouterr()
    assert out.out == "imported 1 items, 0 row errors\nimported 1 items, 1 row errors\n"
    assert out.err == f"{xlsx_path}:3: gtin: not a valid GTIN: '124'\n"
    recalls = write_xlsx(tmp_path / "r.xlsx", [["gtin", "lot"], [STENT, "L1"]])
    assert main(["recall-import", "--db", str(db), str(recalls)]) == 0
    store = GatewayStore(db)
    assert [e.gtin for e in load_catalog_entries(store)] == [GAUZE, STENT]
    assert load_recalled_lots(store) == [RecalledLot(STENT, "L1")]
    store.close()


@pytest.mark.parametrize("command", ["catalog-import", "recall-import", "staff-import", "census-import",
                                     "expiry-import"])
def test_a_file_that_is_not_there_is_one_line_not_a_traceback(command: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "items.csv"
    assert main([command, "--db", str(tmp_path / "gw.db"), str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"{missing}: cannot be read: No such file or directory [unreadable]"
    assert main([command, "--db", str(tmp_path / "gw.db"), str(tmp_path)]) == 2  # a directory


def test_every_import_is_in_the_audit_log_with_who_did_it(tmp_path: Path) -> None:
    from gateway.audit import AuditLog

    db = str(tmp_path / "gw.db")
    items = tmp_path / "items.csv"
    items.write_text(",".join(HEADER[:9]) + f"\n{STENT},HC1,C1,Stent,,Maker,100,1,1\n", encoding="utf-8")
    recalls = tmp_path / "recalls.csv"
    recalls.write_text(f"gtin,lot\n{STENT},L9\n", encoding="utf-8")
    expiry = tmp_path / "expiry.csv"
    expiry.write_text(f"gtin,lot,expiry\n{STENT},L9,2027-01-31\n", encoding="utf-8")
    assert main(["catalog-import", "--db", db, "--by", "spd.desk", str(items)]) == 0
    assert main(["recall-import", "--db", db, "--by", "quality.li", str(recalls)]) == 0
    assert main(["expiry-import", "--db", db, "--by", "spd.desk", str(expiry)]) == 0
    assert main(["census-ready", "--db", db, "--by", "interface.eng"]) == 0
    store = GatewayStore(tmp_path / "gw.db")
    rows = [(e.actor, e.action) for e in reversed(AuditLog(store).entries())]
    store.close()
    assert rows == [("spd.desk", "catalog_imported"), ("quality.li", "recalls_imported"),
                    ("spd.desk", "lot_expiry_imported"), ("interface.eng", "census_marked")]
