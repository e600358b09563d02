"""spd-gateway terms-import: the supply terms from CSV or XLSX, stored whole or not at all, audited."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from gateway.audit import AuditLog
from gateway.cli import main
from gateway.data.terms import ContractRow, RegistrationRow, SupplierRow, VbpCategoryRow, VbpItemRow
from gateway.store import GatewayStore

from settlement_helpers import gtin

STENT, BALLOON = gtin(1), gtin(2)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_every_kind_is_imported_and_audited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    suppliers = write(tmp_path / "s.csv", "supplier,name,licence_no,licence_expiry\nSUP-A,Alpha Medical,LIC-1,"
                                          "2027-06-30\nSUP-B,Beta Devices,,\n")
    contracts = write(tmp_path / "c.csv", "Supplier,GTIN,purchase_price_fen,valid_from,valid_to,contract_no\n"
                                          f"SUP-A,{STENT},1234567,2026-01-01,,K-1\n"
                                          f"SUP-B,{BALLOON},250000,2026-01-01,2026-12-31,K-2\n")
    regs = write(tmp_path / "r.csv", f"gtin,cert_no,expiry\n{STENT},国械注准20263130001,2030-01-01\n")
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["category", "year", "agreed_volume", "name"])
    ws.append(["STENT-DES", 2026, 1200, "drug-eluting stents"])
    wb.save(tmp_path / "vc.xlsx")
    items = write(tmp_path / "vi.csv", f"gtin,category,winner\n{STENT},STENT-DES,1\n{BALLOON},STENT-DES,no\n")
    assert main(["terms-import", "--db", str(db), "--suppliers", str(suppliers), "--contracts", str(contracts),
                 "--registrations", str(regs), "--vbp-categories", str(tmp_path / "vc.xlsx"),
                 "--vbp-items", str(items), "--by", "finance01"]) == 0
    assert capsys.readouterr().out.strip() == ("imported 2 suppliers, 2 contracts, 1 registrations, 1 vbp categories, "
                                               "2 vbp items")
    store = GatewayStore(db)
    try:
        assert store.terms.suppliers() == [SupplierRow("SUP-A", "Alpha Medical", "LIC-1", "2027-06-30"),
                                           SupplierRow("SUP-B", "Beta Devices", "", "")]
        assert store.terms.contract_on(STENT, "2026-11-30") == ContractRow("SUP-A", STENT, 1_234_567, "2026-01-01",
                                                                           "9999-12-31", "K-1")
        assert store.terms.contract_on(BALLOON, "2027-01-01") is None
        assert store.terms.registrations() == [RegistrationRow(STENT, "国械注准20263130001", "2030-01-01")]
        assert store.terms.vbp_categories(2026) == [VbpCategoryRow("STENT-DES", 2026, "drug-eluting stents", 1200)]
        assert store.terms.vbp_items() == [VbpItemRow(STENT, "STENT-DES", True), VbpItemRow(BALLOON, "STENT-DES",
                                                                                              False)]
        [entry] = AuditLog(store).entries()
        assert (entry.actor, entry.action, entry.detail["rows"]["contracts"]) == ("finance01", "terms_imported", 2)
    finally:
        store.close()


def test_one_bad_row_in_any_file_stores_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    suppliers = write(tmp_path / "s.csv", "supplier,name\nSUP-A,Alpha Medical\n")
    contracts = write(tmp_path / "c.csv", "supplier,gtin,purchase_price_fen,valid_from,valid_to\n"
                                          f"SUP-A,{STENT},12.50,2026-01-01,\n"
                                          f"SUP-A,04012345678900,100,2026-01-01,\n"
                                          f"SUP-A,{BALLOON},100,2026-03-01,2026-02-01\n"
                                          f"SUP-A,{BALLOON},100,2026-03-01,\n")
    items = write(tmp_path / "vi.csv", f"gtin,category,winner\n{STENT},STENT-DES,maybe\n")
    assert main(["terms-import", "--db", str(db), "--suppliers", str(suppliers), "--contracts", str(contracts),
                 "--vbp-items", str(items)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{contracts}:2: purchase_price_fen: price must be a non-negative integer number of fen, got '12.50'",
        f"{contracts}:3: gtin: not a valid GTIN: '04012345678900'",
        f"{contracts}:4: valid_to: ends (2026-02-01) before it starts (2026-03-01)",
        f"{contracts}:5: valid_from: contract of SUP-A for {BALLOON} from 2026-03-01 listed twice",
        f"{items}:2: winner: expected 1/0/true/false, got 'maybe'",
        "supply terms not imported: 5 row errors; fix them and import again (nothing was stored)",
    ]
    store = GatewayStore(db)
    try:
        assert store.terms.suppliers() == [] and store.terms.contracts() == [] and store.terms.vbp_items() == []
        assert AuditLog(store).entries() == []
    finally:
        store.close()


def test_a_missing_column_or_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    regs = write(tmp_path / "r.csv", f"gtin,expiry\n{STENT},2030-01-01\n")
    assert main(["terms-import", "--db", str(db), "--registrations", str(regs)]) == 1
    assert f"{regs}:1: cert_no: missing columns" in capsys.readouterr().err
    assert main(["terms-import", "--db", str(db), "--suppliers", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: cannot be read" in capsys.readouterr().err
    assert main(["terms-import", "--db", str(db)]) == 2
