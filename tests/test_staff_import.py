"""The staff list import (CSV and XLSX, row errors, hashed PINs) and the per-department allow-lists built from it."""

from __future__ import annotations

import json
from pathlib import Path

import openpyxl
import pytest

from device.cabinet.allowlist import AllowList
from gateway.audit import AuditLog
from gateway.catalog import csv_table
from gateway.cli import main as gateway_main
from gateway.staff import build_allowlist, import_staff, load_staff, parse_staff_table, read_staff_file
from gateway.store import GatewayStore
from spd_common.allowlist import Role, parse_allowlist

HEADER = ["staff_id", "name", "badge", "role", "dept", "pin", "active"]
ROWS = [
    ["N0001", "Li Na", "04a1b2c3", "nurse", "CARD;ICU", "1234", "yes"],
    ["R0007", "Wang Qiang", "04FFEE01", "补货员", "*", "", ""],
    ["T0002", "Zhao Lei", "04ABCDEF", "technician", "CARD", "", "no"],  # left: not imported
    ["N0002", "Sun Li", "04A1B2C3", "nurse", "ICU", "", ""],  # badge already given to N0001
    ["N0003", "Zhou Min", "04000003", "surgeon", "ICU", "", ""],
    ["N0004", "Wu Fang", "04000004", "nurse", "", "98", ""],
    ["N0001", "Li Na", "04000005", "nurse", "ICU", "", ""],
    ["N0006", "Zheng Hui", "04000006", "nurse", "ICU", "", "maybe"],
]
ERRORS = [
    (5, "badge", "badge 04A1B2C3 given to two people"),
    (6, "role", "'surgeon' is not one of nurse, restocker, technician"),
    (7, "dept", "no department (use '*' for every department)"),
    (7, "pin", "a PIN is 4-12 digits"),
    (8, "staff_id", "staff id N0001 listed twice"),
    (9, "active", "'maybe' is not yes or no"),
]


def write_csv(path: Path) -> Path:
    lines = [",".join(HEADER)] + [",".join(r) for r in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_xlsx(path: Path) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(HEADER)
    for r in ROWS:
        ws.append([int(v) if k == "pin" and v else v for k, v in zip(HEADER, r, strict=True)])  # PINs as numbers
    wb.save(path)
    return path


@pytest.mark.parametrize("make", [write_csv, write_xlsx], ids=["csv", "xlsx"])
def test_staff_file_rows_are_checked_and_pins_hashed(tmp_path: Path, make: object) -> None:
    path = make(tmp_path / ("staff.csv" if make is write_csv else "staff.xlsx"))  # type: ignore[operator]
    members, errors = read_staff_file(path)
    assert [(e.line, e.column, e.reason) for e in errors] == ERRORS
    assert [(m.staff_id, m.badge, m.role, m.depts) for m in members] == [
        ("N0001", "04A1B2C3", Role.NURSE, ("CARD", "ICU")), ("R0007", "04FFEE01", Role.RESTOCKER, ("*",))]
    nurse = members[0]
    assert nurse.pin_hash is not None and nurse.pin_hash.startswith("scrypt$") and "1234" not in nurse.pin_hash
    assert members[1].pin_hash is None
    assert "98" not in json.dumps([e.reason for e in errors])  # a bad PIN is never echoed


def test_allow_lists_per_department_hold_the_staff_working_there(tmp_path: Path) -> None:
    members, _ = parse_staff_table(csv_table(
        "staff_id,badge,role,dept,pin\nN1,04000001,nurse,CARD,4321\nN2,04000002,nurse,ICU,\nR1,04000009,restocker,*,\n"))
    store = GatewayStore(tmp_path / "gw.db")
    import_staff(store, members)
    card = build_allowlist(store, dept="CARD")
    assert [(b["badge"], b["user"], b["role"]) for b in card["badges"]] == [
        ("04000001", "N1", "nurse"), ("04000009", "R1", "restocker")]
    _, badges = parse_allowlist({**card, "version": 3})  # what the cabinet checks
    assert badges["04000001"].verify_pin("4321") and not badges["04000001"].verify_pin("1234")
    assert not badges["04000009"].needs_pin
    assert [b["user"] for b in build_allowlist(store, dept="ICU")["badges"]] == ["N2", "R1"]
    assert build_allowlist(store, dept="OR-9")["badges"] == [{"badge": "04000009", "user": "R1", "role": "restocker"}]
    import_staff(store, members[1:])  # N1 left: the next list no longer admits the badge
    assert [m.staff_id for m in load_staff(store)] == ["N2", "R1"]
    listed = tmp_path / "allow.json"
    listed.write_text(json.dumps({**build_allowlist(store, dept="CARD"), "version": 4}), encoding="utf-8")
    assert AllowList(listed).lookup("04000001") is None
    store.close()


def test_staff_import_command_imports_nothing_from_a_file_with_bad_rows_unless_partial(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    f = write_csv(tmp_path / "staff.csv")
    assert gateway_main(["staff-import", "--db", str(db), str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{f}:6: role: 'surgeon' is not one of nurse, restocker, technician" in err
    assert "staff list not imported" in err
    store = GatewayStore(db)
    assert load_staff(store) == []
    store.close()
    assert gateway_main(["staff-import", "--db", str(db), "--partial", "--by", "hr.zhao", str(f)]) == 1
    assert "imported 2 staff (nurse: 1, restocker: 1), 6 row errors" in capsys.readouterr().out
    store = GatewayStore(db)
    entry = AuditLog(store).entries()[0]
    assert (entry.actor, entry.action, entry.detail) == ("hr.zhao", "staff_imported",
                                                         {"file": str(f), "staff": 2, "row_errors": 6})
    store.close()
    bad = tmp_path / "staff.txt"
    bad.write_text("x", encoding="utf-8")
    assert gateway_main(["staff-import", "--db", str(db), str(bad)]) == 2
    assert "expected a .csv or .xlsx file" in capsys.readouterr().err
    missing = tmp_path / "cols.csv"
    missing.write_text("staff_id,badge\nN1,04000001\n", encoding="utf-8")
    assert gateway_main(["staff-import", "--db", str(db), str(missing)]) == 1
    assert f"{missing}:1: role,dept: missing columns" in capsys.readouterr().err
