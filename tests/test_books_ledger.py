"""The stock ledger: device events become movements, balances per location, receipts, counts, packs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cli
from gateway.books.imports import read_count, read_receipts
from gateway.books.ledger import discrepancies, import_count, on_hand, record_receipts
from gateway.books.projection import CURSOR, catch_up
from gateway.data.catalog import RecallRow
from gateway.data.stock import MovementRow
from gateway.store import GatewayStore
from spd_common.wire import decode_batch, encode_batch

from books_helpers import CATHETER, GAUZE, PATIENT, STENT, CabinetFeed, Clock, HandheldFeed, Site, gs1

EXP = dt.date(2027, 6, 30)


@pytest.fixture
def store(store_location: Path | str) -> Iterator[GatewayStore]:
    s = GatewayStore(store_location)
    yield s
    s.close()


@pytest.fixture
def site(tmp_path: Path, store: GatewayStore) -> Site:
    return Site(tmp_path, store, Clock())


def _held(store: GatewayStore, **kw: str) -> dict[tuple[str, str, str], int]:
    return {(s.location, s.gtin, s.serial or s.lot): s.qty for s in on_hand(store, **kw)}  # type: ignore[arg-type]


def _receive_stents(store: GatewayStore, tmp: Path, serials: list[str]) -> None:
    rows = "".join(f"DN-1,receipt,,{STENT},1,L7,{s},2027-06-30,2026-11-17\n" for s in serials)
    path = tmp / "receipts.csv"
    path.write_text("ref,kind,location,gtin,qty,lot,serial,expiry,at\n" + rows, encoding="utf-8")
    lines, errors = read_receipts(path)
    assert errors == []
    record_receipts(store, lines, by="SPD01")


def test_cabinet_and_handheld_events_balance_per_location(tmp_path: Path, store: GatewayStore, site: Site) -> None:
    _receive_stents(store, tmp_path, ["SN1", "SN2", "SN3"])
    cabinet, handheld = CabinetFeed(site, "CB01", "ICU"), HandheldFeed(site, "HH01", "ICU")
    for s in ("SN1", "SN2", "SN3"):
        cabinet.restock(STENT, s, lot="L7", expiry=EXP)
    cabinet.take(STENT, "SN1")
    handheld.consume(PATIENT, gs1(STENT, lot="L7", serial="SN1", expiry=EXP))
    cabinet.take(STENT, "SN2")
    cabinet.put_back(STENT, "SN2")
    cabinet.take(STENT, "SN3")  # in a nurse's hands, not used yet
    catch_up(store)
    assert _held(store) == {("CB01", STENT, "SN2"): 1, ("dept:ICU", STENT, "SN3"): 1}
    assert [(s.lot, s.expiry, s.dept) for s in on_hand(store, location="CB01")] == [("L7", "2027-06-30", "ICU")]
    takes = store.stock.movements(0, 2**62, ["take"])
    assert [(m.location, m.qty, m.serial, m.counterpart) for m in takes] == [
        ("CB01", -1, "SN1", "dept:ICU"), ("CB01", -1, "SN2", "dept:ICU"), ("CB01", -1, "SN3", "dept:ICU")]
    (use,) = store.stock.movements(0, 2**62, ["use"])
    assert (use.location, use.qty, use.admission, use.operator, use.lot, use.serial, use.source) == (
        "dept:ICU", -1, PATIENT, "N0001", "L7", "SN1", "HH01:1")
    # the projection again, and every batch resent: nothing moves twice
    site.deliver(cabinet.log)
    store.devices.set_cursor(CURSOR, 0)
    catch_up(store)
    assert _held(store) == {("CB01", STENT, "SN2"): 1, ("dept:ICU", STENT, "SN3"): 1}


def test_the_projection_goes_on_from_its_cursor(store: GatewayStore, site: Site) -> None:
    cabinet = CabinetFeed(site, "CB02", "OR")
    cabinet.restock(CATHETER, "C1")
    assert catch_up(store) == 1
    cabinet.restock(CATHETER, "C2")
    cabinet.take(CATHETER, "C1")
    assert catch_up(store) == 2
    assert catch_up(store) == 0
    assert store.cursor(CURSOR) == store.last_event_id()
    assert _held(store, location="CB02") == {("CB02", CATHETER, "C2"): 1}
    assert _held(store, location="operator") == {("operator", CATHETER, "C1"): -1, ("operator", CATHETER, "C2"): -1}


def test_an_item_returned_unused_comes_back_to_the_department_unless_discarded(store: GatewayStore,
                                                                               site: Site) -> None:
    handheld = HandheldFeed(site, "HH02", "ICU")
    for serial in ("A", "B"):
        handheld.consume(PATIENT, gs1(CATHETER, lot="L1", serial=serial, expiry=EXP))
    handheld.return_unused(gs1(CATHETER, lot="L1", serial="A", expiry=EXP))
    handheld.return_unused(gs1(CATHETER, lot="L1", serial="B", expiry=EXP), restocked=False)
    catch_up(store)
    assert _held(store) == {("dept:ICU", CATHETER, "B"): -1}  # A is back at 0; B used, discarded: gone


def test_a_count_lists_expected_against_counted_and_brings_the_ledger_to_the_shelf(
        tmp_path: Path, store: GatewayStore, site: Site) -> None:
    notes = tmp_path / "restock.csv"
    notes.write_text(f"ref,kind,location,gtin,qty,lot\nRN-9,restock,dept:ICU,{GAUZE},10,G1\n", encoding="utf-8")
    lines, errors = read_receipts(notes)
    assert errors == []
    record_receipts(store, lines, by="SPD01", now_ms=site.clock.ms())
    record_receipts(store, lines, by="SPD01", now_ms=site.clock.ms())  # the same note again: recorded once
    handheld = HandheldFeed(site, "HH03", "ICU")
    for _ in range(3):
        handheld.consume(PATIENT, gs1(GAUZE, lot="G1"))
    cabinet = CabinetFeed(site, "CB03", "ICU")
    cabinet.restock(STENT, "X1")
    cabinet.restock(STENT, "X2")
    catch_up(store)
    assert _held(store, location="dept:ICU") == {("dept:ICU", GAUZE, "G1"): 7}
    sheet = tmp_path / "count.csv"
    sheet.write_text(f"location,gtin,lot,serial,counted\ndept:ICU,{GAUZE},G1,,6\nCB03,{STENT},,X1,1\n",
                     encoding="utf-8")
    counted, errors = read_count(sheet)
    assert errors == []
    at = site.clock.ms() + 1000
    outcomes = import_count(store, counted, at_ms=at, by="SPD02", origin="import:count.csv")
    assert [(o.location, o.recorded) for o in outcomes] == [("CB03", True), ("dept:ICU", True)]
    assert [(d.location, d.gtin, d.serial or d.lot, d.expected, d.counted, d.difference)
            for d in discrepancies(store)] == [("CB03", STENT, "X2", 1, 0, -1), ("dept:ICU", GAUZE, "G1", 7, 6, -1)]
    assert _held(store, location="dept:ICU") == {("dept:ICU", GAUZE, "G1"): 6}
    assert _held(store, location="CB03") == {("CB03", STENT, "X1"): 1}
    again = import_count(store, counted, at_ms=at, by="SPD02", origin="import:count.csv")
    assert [o.recorded for o in again] == [False, False]
    assert len(discrepancies(store)) == 2
    adjust = store.stock.movements(0, 2**62, ["count_adjust"])
    assert sorted((m.location, m.qty) for m in adjust) == [("CB03", -1), ("dept:ICU", -1)]


def test_import_files_report_bad_rows_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("ref,kind,location,gtin,qty,serial\n"
                    f"DN-1,receipt,,{STENT},1,S1\n"
                    f"DN-1,transfer,,{STENT},1,S2\n"
                    "DN-1,receipt,,12345,1,S3\n"
                    f"DN-1,restock,,{STENT},1,S4\n"
                    f"DN-1,receipt,,{STENT},2,S5\n"
                    f"DN-1,receipt,,{STENT},1,S1\n", encoding="utf-8")
    lines, errors = read_receipts(path)
    assert [ln.serial for ln in lines] == ["S1"]
    assert [(e.line, e.column) for e in errors] == [(3, "kind"), (4, "gtin"), (5, "location"), (6, "qty"),
                                                     (7, "ref")]


def test_a_pack_opened_on_the_handheld_is_the_departments_use_once(store: GatewayStore, site: Site) -> None:
    handheld = HandheldFeed(site, "HH04", "WARD-3")
    label = gs1(GAUZE, lot="G2", serial="PK0001", count=20)
    handheld.open_pack(label)
    handheld.open_pack(label)  # the same pack scanned again
    handheld.open_pack(gs1(GAUZE, lot="G2", serial="PK0002", count=20))
    (first, *_) = handheld.log.events()
    assert (first.kind, first.body["qty"], first.body["gtin"], first.body["dept"]) == ("pack_opened", 20, GAUZE,
                                                                                      "WARD-3")
    assert not handheld.handheld.open_pack(gs1(GAUZE, lot="G2", serial="S1")).accepted  # no count: not a pack
    catch_up(store)
    packs = store.stock.movements(0, 2**62, ["pack_open"])
    assert [(m.location, m.qty, m.source) for m in packs] == [("dept:WARD-3", -20, f"pack:{GAUZE}/PK0001"),
                                                              ("dept:WARD-3", -20, f"pack:{GAUZE}/PK0002")]
    assert store.stock.outflow(0, 2**62) == [("dept:WARD-3", GAUZE, 40)]


def test_stock_command_brings_a_fresh_store_up_to_date_first(tmp_path: Path, store_location: Path | str, site: Site,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    CabinetFeed(site, "CB05", "ICU").restock(STENT, "Z9", lot="L1", expiry=EXP)
    site.store.close()
    assert cli.main(["stock", "--db", str(store_location), "--dept", "ICU", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["location"], r["serial"], r["qty"], r["expiry"]) for r in doc["stock_on_hand"]["rows"]] == [
        ("CB05", "Z9", 1, "2027-06-30")]
    site.store = GatewayStore(store_location)


def test_a_cabinet_snapshot_after_a_full_count_counts_the_cabinet_in_the_ledger(tmp_path: Path,
                                                                                store: GatewayStore) -> None:
    from hw_sim.cabinet import SimCabinet

    cab = SimCabinet(tmp_path / "cab", device="CB09", items=6, extra_toml="[cabinet.stock]\nsnapshot_s = 3600\n")
    cab.start()
    try:
        cab.badge("N0001")
        assert cab.open_door()
        (gone,) = cab.take(1)
        cab.close_door()
        events = cab.events()
    finally:
        cab.stop()
    snapshots = [e for e in events if e.kind == "stock_counted"]
    assert len(snapshots) == 1  # the baseline's; the next count is within the hour
    assert (snapshots[0].body["total"], snapshots[0].body["part"], snapshots[0].body["parts"]) == (6, 1, 1)
    # the gateway gets the cabinet's log: the baseline opens its balance, the take moves one out
    store.ingest(decode_batch("spd/v1/H1/CB09/events", encode_batch("H1", "CB09", events)))
    catch_up(store)
    held = on_hand(store, location="CB09")
    assert len(held) == 5 and all(s.qty == 1 for s in held) and gone.serial not in {s.serial for s in held}
    (count,) = store.stocktake.counts()
    assert (count.location, count.counted_by, count.origin) == ("CB09", "rfid", "device:CB09")
    assert [(d.expected, d.counted) for d in discrepancies(store)] == [(0, 1)] * 6  # the opening balance


def test_a_snapshot_in_parts_is_counted_once_with_every_part(store: GatewayStore, site: Site) -> None:
    cabinet = CabinetFeed(site, "CB10", "OR")
    for s in ("P1", "P2", "P3"):
        cabinet.restock(STENT, s)
    cabinet.log.append_many([("stock_counted", {"dept": "OR", "items": [[STENT, "P1"]], "part": 1, "parts": 2,
                                                "total": 3}),
                             ("stock_counted", {"dept": "OR", "items": [[STENT, "P2"], [STENT, "P9"]], "part": 2,
                                                "parts": 2, "total": 3})])
    site.deliver(cabinet.log)
    catch_up(store)
    assert [(d.serial, d.expected, d.counted) for d in discrepancies(store)] == [("P3", 1, 0), ("P9", 0, 1)]
    assert {s.serial for s in on_hand(store, location="CB10")} == {"P1", "P2", "P9"}
    assert [c.count_id for c in store.stocktake.counts()] == ["CB10:5"]


def test_the_nurse_scans_a_pack_label_as_it_is_opened_no_patient_needed(tmp_path: Path) -> None:
    from device.cabinet.allowlist import AllowList
    from device.config import HandheldConfig
    from device.eventlog import EventLog
    from device.handheld_runtime.station import ScanStation
    from spd_common.allowlist import Badge, Role

    log = EventLog(tmp_path / "hh.db", device="HH09")
    station = ScanStation(HandheldConfig(dept="WARD-3"), eventlog=log,
                          allowlist=AllowList.from_entries([Badge("04A1", "N0001", Role.NURSE)]))
    station.on_scan("]C004A1", 1.0)
    opened = station.on_scan(gs1(GAUZE, lot="G1", serial="PK1", count=10), 2.0)
    assert opened is not None and (opened.ok, opened.title) == (True, "PACK OPENED")
    refused = station.on_scan(gs1(GAUZE, lot="G1", serial="S1"), 3.0)  # an item, not a pack: needs a patient
    assert refused is not None and refused.reason == "no_patient"
    kinds = [(e.kind, e.body.get("qty"), e.body.get("operator")) for e in log.events()]
    assert kinds[1] == ("pack_opened", 10, "N0001")


def test_the_gateway_thread_keeps_the_ledger_up_to_date_with_a_heartbeat(store: GatewayStore, site: Site) -> None:
    from gateway.books.projection import StockProjection
    from spd_common.heartbeat import HeartbeatRegistry

    from conftest import wait_for

    beats = HeartbeatRegistry()
    projection = StockProjection(store, every_s=0.05, heartbeats=beats).start()
    try:
        assert beats.names() == ["stock-ledger"]
        CabinetFeed(site, "CB11", "ICU").restock(STENT, "Q1")
        wait_for(lambda: len(on_hand(store, location="CB11")) == 1, timeout=10)
    finally:
        projection.stop()
    assert beats.names() == []


def test_the_projections_quick_udi_reader_reads_as_the_bridge_does() -> None:
    import random

    from gateway import bridge
    from gateway.books.projection import read_item

    rng = random.Random(5)
    alphabet = "0123456789ABCxyz-./_!%\x1d "
    codes = []
    for _ in range(2000):
        code = gs1(rng.choice([STENT, GAUZE]), lot="".join(rng.choices("AB12-./", k=rng.randint(0, 6))),
                   serial="".join(rng.choices("XY89_", k=rng.randint(0, 5))),
                   expiry=rng.choice([None, dt.date(2027, 2, 28), dt.date(1999, 12, 31)]),
                   symbology=rng.choice(["]d2", "]C1", "", "]Q3"]))
        if rng.random() < 0.5:  # damaged: a character changed, dropped or added
            i = rng.randrange(len(code))
            code = code[:i] + rng.choice(["", rng.choice(alphabet)]) + code[i + rng.randint(0, 1):]
        codes.append(code)
    for code in codes:
        try:
            expected: object = bridge.read_item(code, reference_year=2026)
        except bridge.UdiUnreadable:
            expected = "unreadable"
        try:
            got: object = read_item(code, 2026)
        except bridge.UdiUnreadable:
            got = "unreadable"
        assert got == expected, repr(code)


def test_count_import_and_discrepancies_commands(tmp_path: Path, store_location: Path | str, site: Site,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cabinet = CabinetFeed(site, "CB12", "ICU")
    cabinet.restock(STENT, "M1")
    cabinet.restock(STENT, "M2")
    site.store.close()
    db = str(store_location)
    sheet = tmp_path / "take.csv"
    sheet.write_text(f"location,gtin,serial,counted\nCB12,{STENT},M1,1\nCB12,{STENT},M7,2\n", encoding="utf-8")
    assert cli.main(["stock", "count-import", "--db", db, "--by", "SPD02", str(sheet)]) == 1  # a bad row
    assert "take.csv:3: counted: a serialised item is there (1) or not (0)" in capsys.readouterr().err
    sheet.write_text(f"location,gtin,serial,counted\nCB12,{STENT},M1,1\n", encoding="utf-8")
    assert cli.main(["stock", "--db", db, "count-import", "--at", "2026-11-19T08:00", str(sheet)]) == 0
    assert "1 discrepancies" in capsys.readouterr().out
    assert cli.main(["stock", "discrepancies", "--db", db, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["count_discrepancies"]["rows"]
    assert [(r["location"], r["serial"], r["expected"], r["counted"], r["difference"]) for r in rows] == [
        ("CB12", "M2", 1, 0, -1)]
    assert cli.main(["stock", "discrepancies"]) == 2
    assert cli.main(["alerts", "--db", db, "--format", "json", "--fail-on-critical"]) == 0
    assert json.loads(capsys.readouterr().out)["alert_count"] == 0
    site.store = GatewayStore(store_location)
    site.store.catalog.store_recalls([RecallRow(STENT, "*", "field safety notice", "2026-11-19")], replace=True)
    site.store.close()
    assert cli.main(["alerts", "--db", db, "--format", "csv", "--fail-on-critical"]) == 1
    assert "recalled_in_stock" in capsys.readouterr().out
    site.store = GatewayStore(store_location)


def test_an_expired_or_recalled_pack_is_refused_at_the_handheld(tmp_path: Path) -> None:
    from device.catalog_cache import CatalogCache
    from device.eventlog import EventLog
    from device.handheld import Handheld
    from device.scan_policy import ConsumedSerials, ScanPolicy
    from spd_common.catalog_doc import DOC_SCHEMA, content_digest

    item = {"item_code": "HC9", "charge_code": "C9", "spec": "", "manufacturer": "", "price_fen": 0,
            "chargeable": False, "high_value": False, "supplier": "", "vbp": False, "vbp_price_fen": None}
    doc: dict[str, object] = {
        "schema": DOC_SCHEMA, "version": 1, "generated_at": "", "dept": None,
        "items": [{**item, "gtin": GAUZE, "name": "Gauze"}],
        "recalled_lots": [{"gtin": GAUZE, "lot": "BAD", "reason": "torn wrap"}], "dept_stock": {},
        "consumed_serials": [], "patients": {"in_house": [], "discharged": []},
    }
    doc["digest"] = content_digest(doc)
    cache = CatalogCache(tmp_path / "catalog.json")
    cache.apply(doc)
    policy = ScanPolicy(cache, ConsumedSerials(tmp_path / "consumed.db"), today=lambda: dt.date(2026, 11, 18))
    hh = Handheld(EventLog(tmp_path / "hh.db", device="HH10"), operator="N0001", dept="WARD-3", policy=policy)
    assert hh.open_pack(gs1(GAUZE, lot="OK", serial="P1", count=10, expiry=dt.date(2027, 1, 1))).accepted
    recalled = hh.open_pack(gs1(GAUZE, lot="BAD", serial="P2", count=10))
    expired = hh.open_pack(gs1(GAUZE, lot="OK", serial="P3", count=10, expiry=dt.date(2026, 11, 1)))
    unknown = hh.open_pack(gs1(STENT, lot="OK", serial="P4", count=10))
    assert [(o.accepted, o.reason) for o in (recalled, expired, unknown)] == [
        (False, "recalled_lot"), (False, "expired"), (False, "unknown_item")]
    assert [e.kind for e in hh.log.events()] == ["pack_opened", "refused_scan", "refused_scan", "refused_scan"]


def test_a_delivery_note_in_xlsx(tmp_path: Path, store: GatewayStore) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["ref", "kind", "location", "gtin", "qty", "lot", "expiry", "at"])
    ws.append(["DN-7", "receipt", None, GAUZE, 40, "G5", dt.date(2027, 5, 1), dt.datetime(2026, 11, 17, 9, 30)])
    ws.append(["DN-7", "restock", "dept:ICU", GAUZE, 15.0, "G5", None, dt.datetime(2026, 11, 17, 14, 0)])
    path = tmp_path / "note.xlsx"
    wb.save(path)
    lines, errors = read_receipts(path)
    assert errors == []
    record_receipts(store, lines, by="SPD01")
    assert _held(store) == {("dept:ICU", GAUZE, "G5"): 15, ("operator", GAUZE, "G5"): 25}
    (receipt,) = store.stock.movements(0, 2**62, ["receipt"])
    assert (receipt.expiry, receipt.at_ms) == ("2027-05-01", 1_794_879_000_000)  # 09:30 at UTC+8


def test_the_balance_table_agrees_with_the_movements_and_is_filled_on_upgrade(tmp_path: Path) -> None:
    from gateway.data.engine import SqliteEngine
    from gateway.data.migrations import migrate
    from gateway.data.schema import MIGRATIONS

    before = next(i for i, m in enumerate(MIGRATIONS) if m.label == "0009_books_ledger")
    engine = SqliteEngine(tmp_path / "v5.db")
    migrate(engine, MIGRATIONS[:before])  # a store of the release before the ledger, holding movements already
    with engine.transaction() as db:
        db.executemany("INSERT INTO stock_movements (source, at_ms, kind, location, dept, gtin, lot, serial, qty) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [("a:1", 1, "restock", "CB01", "ICU", STENT, "L1", "S1", 1),
                        ("a:2", 2, "take", "CB01", "ICU", STENT, "", "S1", -1),
                        ("a:3", 3, "restock", "CB01", "ICU", STENT, "", "S2", 1),
                        ("n:1", 4, "receipt", "operator", "", GAUZE, "G1", "", 30)])
    engine.close()
    store = GatewayStore(tmp_path / "v5.db")
    try:
        assert store.schema.applied == [m.label for m in MIGRATIONS[before:]]
        filled = store.stock.balances()
        assert [(b.location, b.gtin, b.lot, b.serial, b.qty) for b in filled] == [
            ("CB01", STENT, "", "S2", 1), ("operator", GAUZE, "G1", "", 30)]
        handheld_use = MovementRow("HH:1", 5, "use", "dept:ICU", "ICU", GAUZE, "G1", "", -4, "N1", PATIENT, "HH", 1)
        store.stock.record([handheld_use, handheld_use])  # once
        store.stock.record([MovementRow("t:1", 6, "take", "CB01", "ICU", STENT, "L9", "S2", -1, "N1", "", "CB01",
                                        9, "dept:ICU")])
        kept, summed = store.stock.balances(), store.stock.balances(as_of_ms=2**62)
        assert kept == summed
        assert [(b.location, b.serial or b.lot, b.qty, b.lot) for b in kept] == [
            ("dept:ICU", "S2", 1, "L9"), ("dept:ICU", "G1", -4, "G1"), ("operator", "G1", 30, "G1")]
    finally:
        store.close()
