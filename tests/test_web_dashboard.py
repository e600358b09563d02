"""The screen's reads and pictures: today's scans by store time, cabinets found by index, the charge search's
filters (LIKE characters taken literally), stock and door replayed from a cabinet's events, escaped charts."""

from __future__ import annotations

import time
from pathlib import Path

from device.eventlog import EventLog
from gateway.store import GatewayStore
from gateway.web import charts
from gateway.web.stock import cabinet_stock, door_state
from spd_common.wire import decode_batch, encode_batch

from web_helpers import CABINET, GTIN, add_cabinet_events, add_parked_charge


def _scans(store: GatewayStore, tmp: Path, device: str, n: int, *, at: float) -> None:
    log = EventLog(tmp / f"{device}.db", device=device)
    events = [log.append("consume", {"admission": "ZY1", "udi": f"u{i}", "operator": "N", "dept": "D"})
              for i in range(n)]
    log.close()
    store.ingest(decode_batch(f"spd/v1/H1/{device}/events", encode_batch("H1", device, events)), now=at)


def test_todays_scans_are_those_stored_since_the_start_of_the_day(tmp_path: Path,
                                                                  store_location: Path | str) -> None:
    store = GatewayStore(store_location)
    try:
        assert store.dashboard.scans_stored_since(0) == 0
        _scans(store, tmp_path, "HH01", 7, at=1000.0)
        _scans(store, tmp_path, "HH02", 5, at=2000.0)
        _scans(store, tmp_path, "HH03", 3, at=3000.0)
        assert [store.dashboard.scans_stored_since(t) for t in (0, 1000, 1500, 2000, 2999, 3000, 3001)] == \
            [15, 15, 8, 8, 3, 3, 0]
    finally:
        store.close()


def test_cabinets_are_told_from_handhelds_and_their_stock_and_door_replayed(tmp_path: Path,
                                                                            store_location: Path | str) -> None:
    store = GatewayStore(store_location)
    try:
        _scans(store, tmp_path, "HH01", 3, at=time.time())
        add_cabinet_events(store, tmp_path)
        assert store.dashboard.cabinet_devices() == [CABINET]
        stock = cabinet_stock(store, CABINET)
        assert stock.items == 2 and len(stock.lines) == 1
        line = stock.lines[0]
        assert (line.gtin, line.count, line.lots, line.next_expiry) == (GTIN, 2, ("L1", "L2"), "2027-01-31")
        door = door_state(store, CABINET)
        assert (door.door, door.lock, door.lockdown) == ("open", "released", False)
    finally:
        store.close()


def test_the_charge_search_filters_and_takes_like_characters_literally(store_location: Path | str) -> None:
    store = GatewayStore(store_location)
    try:
        add_parked_charge(store, "C-1", admission="ZY1", serial="S_1")
        add_parked_charge(store, "C-2", admission="ZY2", serial="S91")
        add_parked_charge(store, "C-3", admission="ZY1", serial="X%")
        d = store.dashboard
        assert [c.charge_id for c in d.search_charges(admission="ZY1")] == ["C-3", "C-1"]
        assert [c.charge_id for c in d.search_charges(serial="S_1")] == ["C-1"]  # '_' is no wildcard
        assert [c.charge_id for c in d.search_charges(serial="%")] == []
        assert [c.charge_id for c in d.search_charges(serial="X%")] == ["C-3"]
        assert len(d.search_charges(gtin=GTIN[:7])) == 3 and d.search_charges(gtin="0000000") == []
        assert len(d.search_charges(gtin=GTIN, status="parked")) == 3
        assert d.search_charges(status="accepted") == []
        assert d.search_charges(limit=1)[0].charge_id == "C-3"
    finally:
        store.close()


def test_charts_escape_their_labels_and_scale_to_the_data() -> None:
    days = [20000, 20001, 20002]
    svg = charts.stacked_bars("uses <b>", days, [charts.Series("<script>x</script>", (1.0, 0.0, 7.0))])
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;b&gt;" in svg
    assert svg.count("<rect class=\"series-0\"") == 3  # two bars and the legend's swatch
    assert ">8<" in svg  # the axis tops at 8 for a highest bar of 7
    empty = charts.stacked_bars("none", days, [])
    assert "nothing in this period" in empty
    assert charts.percentile([3.0, 1.0, 2.0, 10.0], 0.5) in (2.0, 3.0) and charts.percentile([], 0.95) == 0.0


def test_an_item_is_found_by_its_code_or_a_part_of_its_name(tmp_path: Path,
                                                            store_location: Path | str) -> None:
    from gateway.catalog import import_catalog, read_catalog_file, write_catalog_csv
    from hw_sim.catalog import sim_catalog

    store = GatewayStore(store_location)
    try:
        items = sim_catalog()
        (tmp_path / "items.csv").write_text(write_catalog_csv([i.row() for i in items]), encoding="utf-8")
        import_catalog(store, read_catalog_file(tmp_path / "items.csv")[0])
        stent, balloon = items[0], items[1]
        add_parked_charge(store, "C-1", gtin=stent.gtin, serial="A1")
        add_parked_charge(store, "C-2", gtin=balloon.gtin, serial="A2")
        d = store.dashboard
        assert d.gtins_of_item(stent.item_code) == [stent.gtin]
        assert stent.gtin in d.gtins_of_item(stent.name[1:4])  # a part of the name
        assert [c.charge_id for c in d.search_charges(gtins=d.gtins_of_item(balloon.item_code))] == ["C-2"]
        assert d.search_charges(gtins=d.gtins_of_item("no such item")) == []
        assert d.search_charges(gtins=[]) == []
        assert d.search_charges(admission="ZY0001")[0].item_name == balloon.name
    finally:
        store.close()
