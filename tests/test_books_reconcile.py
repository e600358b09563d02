"""Three-way reconciliation against a month sent through the real wire: it finds exactly what was injected.

One small month (4 cabinets, 3 days, 5 anomalies of each of the 8 kinds) is made up, sent as signed event
batches over MQTT to a real ``spd-gateway run``, charged through the bridge and the simulated HIS, booked at
the HIS (manual lines, edits), exported and loaded with ``spd-gateway his-import``; then ``spd-gateway
reconcile`` must list exactly the injected anomalies, and the normal flows (returns credited, items put
back, manual charges with their serial, takes and scans across the month's boundaries) must give nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.cli
from gateway.books.legs import month_period
from gateway.books.projection import catch_up
from gateway.books.reconcile import CHARGED_TWICE, KINDS, reconcile
from gateway.data.his_lines import HisLineRow
from gateway.store import GatewayStore
from hw_sim.month import MonthConfig, run_month

MONTH = "2026-11"


@pytest.fixture(scope="module")
def month_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("month")
    figures = run_month(MonthConfig(month=MONTH, cabinets=4, days=3, seed=11, settle_timeout_s=60), out)
    assert figures["quarantined"] == 0 and figures["gateway"]["refused"] == 5  # the five re-used serials
    return out


def _injected(out: Path) -> list[dict[str, Any]]:
    return list(json.loads((out / "injected.json").read_text(encoding="utf-8"))["injected"])


def _reconcile_json(out: Path, month: str, tmp_path: Path) -> dict[str, Any]:
    return _reconcile_json_at(str(out / "gateway.db"), month, tmp_path)


def _reconcile_json_at(db: str, month: str, tmp_path: Path) -> dict[str, Any]:
    report = tmp_path / f"reconcile-{month}.json"
    assert gateway.cli.main(["reconcile", "--db", db, "--month", month, "--format", "json",
                             "--output", str(report)]) == 0
    return dict(json.loads(report.read_text(encoding="utf-8")))


def test_reconcile_finds_exactly_the_injected_list(month_dir: Path, tmp_path: Path) -> None:
    injected = _injected(month_dir)
    assert sorted({i["kind"] for i in injected}) == sorted(KINDS)
    assert all(sum(i["kind"] == k for i in injected) == 5 for k in KINDS)
    doc = _reconcile_json(month_dir, MONTH, tmp_path)
    found = doc["mismatches"]["rows"]
    assert sorted((f["kind"], f["key"]) for f in found) == sorted((i["kind"], i["key"]) for i in injected)
    dept_of = {(i["kind"], i["key"]): i["dept"] for i in injected}
    assert all(f["dept"] == dept_of[(f["kind"], f["key"])] for f in found)
    assert doc["mismatch_count"] == 40 and doc["his_charges_standing"] > 50
    by_kind = {r["kind"]: r["count"] for r in doc["by_kind"]["rows"]}
    assert by_kind == dict.fromkeys(KINDS, 5)
    # every finding carries evidence: device events for what a device saw, HIS lines for what the HIS billed
    for f in found:
        hashes = f["event_hashes"].split()
        assert len(hashes) == len(f["events"].split()) and all(len(h) == 64 for h in hashes), f
        if f["kind"] in ("taken_not_charged", "serial_reused"):
            assert f["events"], f
        if f["kind"] == "serial_reused":
            assert len(f["events"].split()) == 2 and "serial_already_consumed" in f["detail"]
        if f["kind"] in ("charged_not_taken", "swapped_charge", "credit_without_charge", "charged_twice",
                         "price_markup", "expired_charged"):
            assert f["his_ids"], f
        if f["kind"] in ("swapped_charge", "price_markup", "expired_charged"):
            assert f["events"] and f["charge_ids"] and f["his_refs"], f


def test_the_months_around_hold_none_of_it(month_dir: Path, tmp_path: Path) -> None:
    """Takes on the 31st scanned after midnight belong to no month's mismatches (the period rule)."""
    assert _reconcile_json(month_dir, "2026-10", tmp_path)["mismatches"]["rows"] == []
    assert _reconcile_json(month_dir, "2026-12", tmp_path)["mismatches"]["rows"] == []


def test_a_credit_at_the_his_clears_a_double_charge(month_dir: Path, tmp_path: Path) -> None:
    """The finding follows the books: reverse one of the two charges of an item and it is gone."""
    work = tmp_path / "gateway.db"
    work.write_bytes((month_dir / "gateway.db").read_bytes())
    store = GatewayStore(work)
    try:
        period = month_period(MONTH)
        before = reconcile(store, period)
        twice = next(f for f in before.findings if f.kind == CHARGED_TWICE)
        manual = store.his_lines.lines(period.read_from_ms, period.read_to_ms)
        dup = next(ln for ln in manual if ln.his_id == twice.his_ids[-1])
        store.his_lines.upsert([HisLineRow(
            "CR-" + dup.his_id, "credit", dup.admission, dup.charge_code, dup.gtin, dup.lot, dup.serial, -1,
            dup.unit_price_fen, -dup.unit_price_fen, dup.at_ms + 3_600_000, "manual", dup.his_id, dup.dept,
            dup.operator, "")], imported_from="test", now=time.time())
        after = reconcile(store, period)
        assert {f.ident for f in before.findings} - {f.ident for f in after.findings} == {twice.ident}
        assert {f.ident for f in after.findings} < {f.ident for f in before.findings}
        assert catch_up(store) == 0  # every event already projected, once
    finally:
        store.close()


def test_inspectors_report_as_xlsx(month_dir: Path, tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    path = tmp_path / "inspect.xlsx"
    assert gateway.cli.main(["inspect", "--db", str(month_dir / "gateway.db"), "--month", MONTH, "--format", "xlsx",
                             "--output", str(path)]) == 0
    wb = openpyxl.load_workbook(path, read_only=True)
    assert wb.sheetnames == ["About", "Summary", "By department", "By kind", "Evidence"]
    summary = list(wb["Summary"].iter_rows(values_only=True))
    assert summary[0] == ("Dept", "Operator", "Kind", "Count", "Amount")
    assert summary[-1][0] == "total" and summary[-1][3] == 40
    assert sum(r[3] for r in summary[1:-1]) == 40
    evidence = list(wb["Evidence"].iter_rows(values_only=True))
    assert len(evidence) == 1 + 40 + 1  # heading, one row per flag, total
    assert {r[0] for r in evidence[1:-1]} == set(KINDS)
    money = {r[0]: r[2] for r in wb["By kind"].iter_rows(values_only=True)}
    assert round(money["total"], 2) == round(sum(r[8] for r in evidence[1:-1]), 2) == round(evidence[-1][8], 2)


def test_his_import_refuses_a_file_with_bad_rows(tmp_path: Path, store_location: Path | str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = store_location
    good = ("H1,charge,ZY1,33100001,,,,1,5890.00,5890.00,2026-11-02T10:00:00+08:00,manual,,DEP01,C1,\n")
    bad = ("H2,charge,ZY1,33100001,,,,1,5890.00,5800.00,2026-11-02T10:00:00+08:00,manual,,DEP01,C1,\n"
           "H3,credit,ZY1,33100001,,,,-1,1.001,-1.00,2026-11-02,manual,,DEP01,C1,\n"
           "H4,charge,ZY1,33100001,,,,1,1.00,1.00,yesterday,fax,,DEP01,C1,\n")
    head = "his_id,entry,admission,charge_code,gtin,lot,serial,qty,unit_price,amount,time,source,reverses,dept," \
           "operator,his_ref\n"
    f = tmp_path / "his.csv"
    f.write_text(head + good + bad, encoding="utf-8")
    assert gateway.cli.main(["his-import", "--db", str(db), str(f), "--by", "test"]) == 1
    err = capsys.readouterr().err
    assert ":3: amount:" in err and ":4: qty/unit_price/amount:" in err and ":4: reverses:" in err
    assert ":5: source:" in err and ":5: time:" in err and "nothing imported" in err
    f.write_text(head + good, encoding="utf-8")
    assert gateway.cli.main(["his-import", "--db", str(db), str(f), "--by", "test"]) == 0
    store = GatewayStore(db)
    try:
        (line,) = store.his_lines.lines(0, 2**62)
        assert (line.his_id, line.amount_fen, line.at_ms) == ("H1", 589000, 1793584800000)
    finally:
        store.close()
    f.write_text(head.replace("his_ref\n", "\n"), encoding="utf-8")
    assert gateway.cli.main(["his-import", "--db", str(db), str(f), "--by", "test"]) == 1


def test_a_month_is_local_calendar_month_with_its_grace_days() -> None:
    nov, dec, jan = month_period("2026-11"), month_period("2026-12"), month_period("2027-01", grace_days=0)
    assert nov.start_ms == 1793462400000  # 2026-10-31T16:00Z: midnight in UTC+8
    assert nov.end_ms == dec.start_ms and dec.end_ms == jan.start_ms
    assert nov.read_from_ms == nov.start_ms - 7 * 86_400_000 and jan.read_to_ms == jan.end_ms
    assert nov.local_date(nov.end_ms - 1).isoformat() == "2026-11-30" and not nov.holds(nov.end_ms)
    for bad in ("2026-13", "2026-1", "November"):
        with pytest.raises(ValueError):
            month_period(bad)


def _copy_to_postgresql(sqlite_db: Path, url: str) -> None:
    """Every row of the month's SQLite store into an empty PostgreSQL store with the same schema (triggers off:
    the stock balances are copied as they are, not summed again)."""
    import sqlite3

    import psycopg
    from psycopg import sql

    src = sqlite3.connect(sqlite_db)
    try:
        with psycopg.connect(url) as conn:
            conn.execute("SET session_replication_role = replica")
            tables = [str(r[0]) for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename != 'schema_migrations'").fetchall()]
            for table in tables:
                types: dict[str, str] = dict(conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND table_name = %s", (table,)).fetchall())
                columns = list(types)
                rows = src.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
                bools = [types[c] == "boolean" for c in columns]
                with conn.cursor() as cur:
                    cur.executemany(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
                        sql.SQL(", ").join(sql.Placeholder() * len(columns))),
                        [tuple(bool(v) if b and v is not None else v for v, b in zip(r, bools, strict=True))
                         for r in rows])
    finally:
        src.close()


def test_reconcile_on_postgresql_finds_what_it_finds_on_sqlite(month_dir: Path, pg_store_url: str,
                                                              tmp_path: Path) -> None:
    """The month's store copied to PostgreSQL: the same findings with the same evidence, nothing to project; the
    command reads it by its URL, and a credit at the HIS clears a double charge there too."""
    period = month_period(MONTH)
    on_sqlite = GatewayStore(month_dir / "gateway.db")
    try:
        expected = reconcile(on_sqlite, period)
    finally:
        on_sqlite.close()
    _copy_to_postgresql(month_dir / "gateway.db", pg_store_url)
    store = GatewayStore(pg_store_url)
    try:
        got = reconcile(store, period)
        assert len(got.findings) == 40
        assert got.findings == expected.findings
        assert catch_up(store) == 0
        twice = next(f for f in got.findings if f.kind == CHARGED_TWICE)
        dup = next(ln for ln in store.his_lines.lines(period.read_from_ms, period.read_to_ms)
                   if ln.his_id == twice.his_ids[-1])
        store.his_lines.upsert([HisLineRow(
            "CR-" + dup.his_id, "credit", dup.admission, dup.charge_code, dup.gtin, dup.lot, dup.serial, -1,
            dup.unit_price_fen, -dup.unit_price_fen, dup.at_ms + 3_600_000, "manual", dup.his_id, dup.dept,
            dup.operator, "")], imported_from="test", now=time.time())
    finally:
        store.close()
    doc = _reconcile_json_at(pg_store_url, MONTH, tmp_path)
    assert doc["mismatch_count"] == 39
    assert {(f["kind"], f["key"]) for f in doc["mismatches"]["rows"]} == \
        {(f.kind, f.key) for f in expected.findings if f.ident != twice.ident}
