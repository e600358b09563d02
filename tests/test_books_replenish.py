"""Replenishment: par levels, average use, urgent requests first, pick lists per route in walking order."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cli
from gateway.books.imports import read_par_levels, read_receipts, read_routes
from gateway.books.ledger import record_receipts
from gateway.books.projection import catch_up
from gateway.books.replenish import close_request, request, suggestions
from gateway.books.settings import BooksSettings
from gateway.data.replenishment import ParRow, RouteStop
from gateway.store import GatewayStore

from books_helpers import CATHETER, DAY, GAUZE, PATIENT, STENT, CabinetFeed, Clock, HandheldFeed, Site, gs1


@pytest.fixture
def store(store_location: Path | str) -> Iterator[GatewayStore]:
    s = GatewayStore(store_location)
    yield s
    s.close()


@pytest.fixture
def site(tmp_path: Path, store: GatewayStore) -> Site:
    return Site(tmp_path, store, Clock())


def _ward(tmp_path: Path, store: GatewayStore, site: Site) -> None:
    """CB01 (ICU) holds 2 stents of 5 at par; the ICU store used 8 catheters and 2 packs of 20 gauze in 28 days."""
    cabinet, handheld = CabinetFeed(site, "CB01", "ICU"), HandheldFeed(site, "HH01", "ICU")
    for s in ("A", "B", "C", "D"):
        cabinet.restock(STENT, s, lot="L1")
    cabinet.take(STENT, "A")
    cabinet.take(STENT, "B")
    for i in range(8):
        site.clock.t += 3 * DAY
        handheld.consume(PATIENT, gs1(CATHETER, lot="K1", serial=f"K{i}"))
    handheld.open_pack(gs1(GAUZE, lot="G1", serial="P1", count=20))
    handheld.open_pack(gs1(GAUZE, lot="G1", serial="P2", count=20))
    notes = tmp_path / "in.csv"
    notes.write_text("ref,kind,location,gtin,qty,lot,expiry\n"
                     f"DN-1,receipt,,{GAUZE},100,G9,2027-09-01\nDN-1,receipt,,{GAUZE},60,G1,2027-03-01\n"
                     f"DN-1,receipt,,{CATHETER},5,K2,\n", encoding="utf-8")
    lines, errors = read_receipts(notes)
    assert errors == []
    record_receipts(store, lines, by="SPD01", now_ms=site.clock.ms())
    store.replenishment.upsert_par([ParRow("CB01", STENT, 5)])
    catch_up(store)


def test_suggestions_from_par_and_from_average_use_with_urgent_requests_first(
        tmp_path: Path, store: GatewayStore, site: Site) -> None:
    _ward(tmp_path, store, site)
    rid = request(store, location="dept:ICU", gtin=CATHETER, qty=3, by="N0009", note="case at 14:00",
                  now_ms=site.clock.ms())
    got = [(s.location, s.gtin, s.qty, s.reason, s.on_hand, s.target) for s in
           suggestions(store, now_ms=site.clock.ms())]
    assert got == [
        ("dept:ICU", CATHETER, 3, "urgent", -8, 0),
        ("CB01", STENT, 3, "par", 2, 5),  # par 5, 2 in the cabinet
        ("dept:ICU", GAUZE, 10, "average use", -40, 10),  # 40 in 28 days: 10 a week, none on hand
    ]  # catheters: 8 in 28 days = 2 a week, less the 3 requested: nothing more
    lines = suggestions(store, now_ms=site.clock.ms())
    assert lines[0].request == f"#{rid} by N0009: case at 14:00"
    assert lines[2].pick_from == "lot G1 (60, exp 2027-03-01), lot G9 (100, exp 2027-09-01)"  # earliest first
    assert store.audit.latest(limit=1)[0].action == "replenish_requested"
    assert close_request(store, rid, by="SPD03") and not close_request(store, rid, by="SPD03")
    after = suggestions(store, now_ms=site.clock.ms())
    assert [(s.gtin, s.qty, s.reason) for s in after if s.location == "dept:ICU"] == [
        (CATHETER, 2, "average use"), (GAUZE, 10, "average use")]
    weekly = suggestions(store, BooksSettings(replenish_period_days=14), now_ms=site.clock.ms())
    assert [(s.gtin, s.qty) for s in weekly if s.location == "dept:ICU"] == [(CATHETER, 4), (GAUZE, 20)]


def test_pick_lists_follow_the_routes_in_walking_order(tmp_path: Path, store: GatewayStore, site: Site) -> None:
    _ward(tmp_path, store, site)
    CabinetFeed(site, "CB07", "OR").restock(STENT, "Z")
    store.replenishment.upsert_par([ParRow("CB07", STENT, 2), ParRow("CB09", CATHETER, 1)])
    routes = tmp_path / "routes.csv"
    routes.write_text("route,location,stop\neast,dept:ICU,2\neast,CB01,1\nwest,CB07,1\n", encoding="utf-8")
    stops, errors = read_routes(routes)
    assert errors == []
    store.replenishment.replace_routes([RouteStop(r.route, r.location, r.stop) for r in stops])
    request(store, location="CB07", gtin=GAUZE, qty=1, by="N0002", now_ms=site.clock.ms())
    catch_up(store)
    settings = BooksSettings(routes={"west": ("CB07", "CB09"), "east": ("CB99",)})
    got = [(s.route, s.stop, s.location, s.reason) for s in suggestions(store, settings, now_ms=site.clock.ms())]
    assert got == [("east", 1, "CB01", "par"), ("east", 2, "dept:ICU", "average use"),
                   ("east", 2, "dept:ICU", "average use"),
                   ("west", 1, "CB07", "urgent"), ("west", 1, "CB07", "par"), ("west", 2, "CB09", "par")]
    assert [s.location for s in suggestions(store, settings, now_ms=site.clock.ms(), route="west")] == [
        "CB07", "CB07", "CB09"]


def test_par_import_and_the_printable_pick_list(tmp_path: Path, store_location: Path | str, store: GatewayStore,
                                                site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    CabinetFeed(site, "CB01", "ICU").restock(STENT, "A")
    par = tmp_path / "par.csv"
    par.write_text(f"location,gtin,par\nCB01,{STENT},4\nCB01,{STENT},6\nCB02,{STENT},-1\n", encoding="utf-8")
    levels, errors = read_par_levels(par)
    assert [(p.location, p.par) for p in levels] == [("CB01", 4)]
    assert [(e.line, e.column) for e in errors] == [(3, "location"), (4, "par")]
    par.write_text(f"location,gtin,par\nCB01,{STENT},4\n", encoding="utf-8")
    store.close()
    db = str(store_location)
    assert cli.main(["replenish", "par-import", "--db", db, "--by", "SPD01", str(par)]) == 0
    assert cli.main(["replenish", "request", "--db", db, "--location", "CB01", "--gtin", CATHETER, "--qty", "2",
                     "--by", "N0001"]) == 0
    capsys.readouterr()
    assert cli.main(["replenish", "--db", db, "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:6] == ["Stop", "Location", "GTIN", "Item", "Bring", "Why"]
    assert [(r[1], r[2], r[4], r[5]) for r in rows[1:-1]] == [("CB01", CATHETER, "2", "urgent"),
                                                              ("CB01", STENT, "3", "par")]
    assert rows[-1][1:5] == ["total", "", "", "5"]
    out = tmp_path / "pick.xlsx"
    assert cli.main(["replenish", "--db", db, "--format", "xlsx", "--output", str(out)]) == 0
    assert out.stat().st_size > 0
    site.store = GatewayStore(store_location)


def test_an_item_taken_from_a_cabinet_and_used_is_the_cabinets_use_not_the_ward_stores(
        store: GatewayStore, site: Site) -> None:
    cabinet, handheld = CabinetFeed(site, "CB01", "ICU"), HandheldFeed(site, "HH01", "ICU")
    for i in range(4):
        cabinet.restock(STENT, f"T{i}")
        cabinet.take(STENT, f"T{i}")
        handheld.consume(PATIENT, gs1(STENT, lot="L", serial=f"T{i}"))
    catch_up(store)
    assert store.stock.outflow(0, 2**62) == [("CB01", STENT, 4)]
    assert [(s.location, s.qty) for s in suggestions(store, now_ms=site.clock.ms())] == [("CB01", 1)]
