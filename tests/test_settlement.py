"""Monthly settlement: the period rule, the prices, what is and is not settled, and the exports."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest

from gateway.books.period import Period, zone
from gateway.books.settlement import detail, settle, supplier_totals
from gateway.cli import main
from gateway.data.terms import ContractRow, SupplierRow
from gateway.store import GatewayStore

from settlement_helpers import Device, answer, catalog, charge, gtin, local_ms, outbox_id

STENT, BALLOON, GAUZE, LOOSE = gtin(1), gtin(2), gtin(3), gtin(4)
NOV = Period.month("2026-11", zone("Asia/Shanghai"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatewayStore]:
    s = GatewayStore(tmp_path / "gateway.db", synchronous="OFF")
    catalog(s, [(STENT, 1_234_567, "SUP-A", True), (BALLOON, 250_000, "SUP-B", True), (GAUZE, 500, "SUP-B", False),
                (LOOSE, 9_900, "", True)])
    s.terms.upsert_suppliers([SupplierRow("SUP-A", "Alpha Medical", "LIC-1", "2027-06-30"),
                              SupplierRow("SUP-B", "Beta Devices", "LIC-2", "2027-06-30")])
    s.terms.upsert_contracts([ContractRow("SUP-A", STENT, 1_234_567, "2026-01-01", "9999-12-31", "K-A1"),
                              ContractRow("SUP-B", BALLOON, 250_000, "2026-01-01", "9999-12-31", "K-B1"),
                              ContractRow("SUP-B", GAUZE, 500, "2026-01-01", "9999-12-31", "K-B2")])
    yield s
    s.close()


def use(store: GatewayStore, uses: list[tuple[str, str, str]], verdict: str = "accept") -> list[str]:
    """Consume (gtin, serial, local time) items on one handheld, charge them, and have the HIS answer."""
    dev = Device(store, f"HH{store.counts()['events'] + 1:04d}")
    keys = [dev.consume(g, serial, local_ms(at)) for g, serial, at in uses]
    dev.send()
    charge(store)
    ids = [outbox_id(store, k) for k in keys]
    answer(store, ids, verdict)
    return ids


def give_back(store: GatewayStore, item: str, serial: str, at: str, verdict: str = "accept") -> str:
    dev = Device(store, f"RT{store.counts()['events'] + 1:04d}")
    key = dev.give_back(item, serial, local_ms(at))
    dev.send()
    charge(store)
    credit = outbox_id(store, key)
    answer(store, [credit], verdict)
    return credit


def test_a_line_belongs_to_the_local_day_of_its_use(store: GatewayStore) -> None:
    use(store, [(STENT, "S0", "2026-10-31 23:59"), (STENT, "S1", "2026-11-01 00:00"),
                (STENT, "S2", "2026-11-30 23:59"), (STENT, "S3", "2026-12-01 00:00")])
    [sup] = settle(store, NOV).suppliers
    assert (sup.supplier, sup.units, sup.settled_fen) == ("SUP-A", 2, 2 * 1_234_567)
    assert [d.serial for d in detail(store, NOV)] == ["S1", "S2"]
    # 2026-11-30 23:59 in Shanghai is 15:59 UTC: in Europe/London's November both S2 and S3 are
    london = settle(store, Period.month("2026-11", zone("Europe/London")))
    assert london.units == 2 and [d.serial for d in detail(store, Period.month("2026-11", zone("UTC")))] == ["S2",
                                                                                                          "S3"]


def test_only_charges_the_his_accepted_are_settled_and_the_rest_are_counted(store: GatewayStore) -> None:
    use(store, [(STENT, "S1", "2026-11-03 10:00")])
    use(store, [(STENT, "S2", "2026-11-03 11:00")], "refuse")
    use(store, [(BALLOON, "B1", "2026-11-03 12:00"), (BALLOON, "B2", "2026-11-03 12:05")], "pending")
    s = settle(store, NOV)
    assert supplier_totals(s) == [("SUP-A", 1, 1_234_567, 1_234_567)]
    na = s.not_accepted
    assert (na.pending, na.pending_fen, na.refused, na.refused_fen) == (2, 500_000, 1, 1_234_567)


def test_a_credit_counts_in_the_month_of_the_return_at_the_price_of_its_charge(store: GatewayStore) -> None:
    use(store, [(STENT, "S1", "2026-10-30 10:00"), (STENT, "S2", "2026-11-02 10:00")])
    give_back(store, STENT, "S1", "2026-11-05 09:00")
    give_back(store, STENT, "S2", "2026-11-06 09:00", "refuse")  # the HIS refused the credit: S2 stays charged
    # the contract price changed on 1 November: the October charge's credit keeps October's price
    store.terms.upsert_contracts([ContractRow("SUP-A", STENT, 1_200_000, "2026-11-01", "9999-12-31", "K-A2"),
                                  ContractRow("SUP-A", STENT, 1_234_567, "2026-01-01", "2026-10-31", "K-A1")])
    [sup] = settle(store, NOV).suppliers
    lines = [(x.entry, x.units, x.settled_unit_fen, x.contract_no, x.settled_fen) for x in sup.lines]
    assert lines == [("charge", 1, 1_200_000, "K-A2", 1_200_000), ("credit", -1, 1_234_567, "K-A1", -1_234_567)]
    assert sup.settled_fen == 1_200_000 - 1_234_567
    october = settle(store, Period.month("2026-10", zone("Asia/Shanghai")))
    assert supplier_totals(october) == [("SUP-A", 1, 1_234_567, 1_234_567)]


def test_a_charge_above_the_contract_price_is_settled_at_the_contract_price_and_says_so(store: GatewayStore) -> None:
    store.terms.upsert_contracts([ContractRow("SUP-B", BALLOON, 240_000, "2026-11-15", "9999-12-31", "K-B3")])
    use(store, [(BALLOON, "B1", "2026-11-14 23:00"), (BALLOON, "B2", "2026-11-15 01:00"),
                (BALLOON, "B3", "2026-11-20 01:00")])
    [sup] = settle(store, NOV).suppliers
    got = [(x.units, x.charged_fen, x.settled_fen, x.contract_no, x.note) for x in sup.lines]
    assert got == [
        (1, 250_000, 250_000, "K-B1", ""),
        (2, 500_000, 480_000, "K-B3", "charged 2500.00 above the contract price 2400.00 (mark-up): settled at the "
                                      "contract price"),
    ]
    assert (sup.charged_fen, sup.settled_fen) == (750_000, 730_000)
    assert [d.settled_fen for d in detail(store, NOV)] == [250_000, 240_000, 240_000]


def test_lines_without_supplier_are_listed_under_unknown_supplier(store: GatewayStore) -> None:
    use(store, [(LOOSE, "L1", "2026-11-03 10:00"), (GAUZE, "G1", "2026-11-03 10:00")])
    s = settle(store, NOV)
    assert [(x.supplier, x.label, x.units, x.settled_fen) for x in s.suppliers] == [
        ("SUP-B", "SUP-B", 1, 500), ("", "unknown supplier", 1, 9_900)]
    assert s.suppliers[1].lines[0].note == "no contract in force: settled at the charged price"
    # gauze is not high-value: in the totals, not in the trace
    assert [t.gtin for x in s.suppliers for t in x.trace] == [LOOSE]
    assert [(d.supplier, d.serial) for d in detail(store, NOV)] == [("", "L1")]


def test_supplier_totals_match_the_lines_and_the_grand_total_to_the_cent(store: GatewayStore) -> None:
    use(store, [(STENT, f"S{i}", f"2026-11-{1 + i:02d} 08:00") for i in range(5)]
        + [(BALLOON, f"B{i}", f"2026-11-{10 + i:02d} 08:00") for i in range(3)])
    give_back(store, BALLOON, "B1", "2026-11-20 08:00")
    s = settle(store, NOV)
    assert [x.settled_fen for x in s.suppliers] == [5 * 1_234_567, 2 * 250_000]
    assert s.settled_fen == sum(sum(line.settled_fen for line in x.lines) for x in s.suppliers)
    assert sum(d.settled_fen for d in detail(store, NOV)) == s.settled_fen
    assert settle(store, NOV, supplier="SUP-B").settled_fen == 2 * 250_000


def test_cli_csv_json_and_one_workbook_per_supplier(store: GatewayStore, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    use(store, [(STENT, "S1", "2026-11-03 10:00"), (BALLOON, "B1", "2026-11-04 10:00")])
    use(store, [(BALLOON, "B2", "2026-11-05 10:00")], "pending")
    db = str(store.path)
    assert main(["settlement", "--db", db, "--month", "2026-11", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert (doc["settled_fen"], doc["pending_at_his"]) == (1_484_567, 1)
    assert "still waiting for the HIS" in err
    assert [r["supplier"] for r in doc["suppliers_2026_11"]["rows"]] == ["SUP-A", "SUP-B"]
    assert len(doc["high_value_detail_2026_11"]["rows"]) == 2

    assert main(["settlement", "--db", db, "--month", "2026-11", "--supplier", "SUP-A", "--format", "csv"]) == 0
    sections = capsys.readouterr().out.split("\n\n")
    rows = list(csv.reader(io.StringIO(sections[0])))
    assert rows[0] == ["# Settlement SUP-A 2026-11"] and rows[-1][-3:-1] == ["12345.67", "12345.67"]

    book = tmp_path / "sup-b.xlsx"
    assert main(["settlement", "--db", db, "--month", "2026-11", "--supplier", "SUP-B", "--format", "xlsx",
                 "-o", str(book)]) == 0
    wb = openpyxl.load_workbook(book)
    assert wb.sheetnames == ["About", "Settlement SUP-B 2026-11", "High-value summary 2026-11",
                             "High-value detail 2026-11"]
    detail_rows = list(wb["High-value detail 2026-11"].iter_rows(values_only=True))
    assert [r[5] for r in detail_rows[1:]] == ["B1"]

    all_book = tmp_path / "all.xlsx"
    assert main(["settlement", "--db", db, "--month", "2026-11", "--format", "xlsx", "-o", str(all_book)]) == 0
    assert openpyxl.load_workbook(all_book).sheetnames == [
        "About", "Suppliers 2026-11", "Settlement SUP-A 2026-11", "Settlement SUP-B 2026-11",
        "High-value summary 2026-11", "High-value detail 2026-11"]


def test_cli_refuses_a_bad_month(store: GatewayStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settlement", "--db", str(store.path), "--month", "2026-13"]) == 2
    assert "YYYY-MM" in capsys.readouterr().err
