"""Alerts over the books: one test per kind, each with the cases that must not alert."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.books.alerts import Alert, alerts
from gateway.books.projection import catch_up
from gateway.books.settings import BooksSettings
from gateway.config import parse_gateway_config
from gateway.data.catalog import LotExpiryRow, RecallRow
from gateway.data.terms import RegistrationRow, SupplierRow
from gateway.linking import LinkWatch
from gateway.store import GatewayStore
from spd_common.toml_config import ConfigError

from books_helpers import CATHETER, DAY, GAUZE, PATIENT, STENT, CabinetFeed, Clock, HandheldFeed, Site, gs1


@pytest.fixture
def store(store_location: Path | str) -> Iterator[GatewayStore]:
    s = GatewayStore(store_location)
    yield s
    s.close()


@pytest.fixture
def site(tmp_path: Path, store: GatewayStore) -> Site:
    return Site(tmp_path, store, Clock())


def _found(store: GatewayStore, site: Site, kinds: set[str], **kw: object) -> list[Alert]:
    catch_up(store)
    return alerts(store, BooksSettings(**kw), now_ms=site.clock.ms(), kinds=kinds)  # type: ignore[arg-type]


def test_stock_expiring_within_each_window_and_expired_stock_alert_with_their_severity(
        store: GatewayStore, site: Site) -> None:
    today = dt.date(2026, 11, 18)
    cabinet = CabinetFeed(site, "CB01", "ICU")
    for serial, days in (("E5", 5), ("E20", 20), ("E60", 60), ("E200", 200), ("GONE", -3), ("USED", 4)):
        cabinet.restock(STENT, serial, lot=f"L{serial}", expiry=today + dt.timedelta(days=days))
    cabinet.restock(CATHETER, "K1", lot="LK")  # no expiry on the tag: the lot expiry list says
    store.catalog.replace_lot_expiry([LotExpiryRow(CATHETER, "LK", (today + dt.timedelta(days=25)).isoformat())])
    cabinet.take(STENT, "USED")
    HandheldFeed(site, "HH01", "ICU").consume(PATIENT, gs1(STENT, lot="LUSED", serial="USED",
                                                           expiry=today + dt.timedelta(days=4)))
    found = _found(store, site, {"expiring", "expired_in_stock"})
    got = [(a.kind, a.severity, a.subject.split(" lot ")[1].split(",")[0]) for a in found]
    assert got == [("expired_in_stock", "critical", "LGONE"), ("expiring", "critical", "LE5"),
                   ("expiring", "warning", "LE20"), ("expiring", "warning", "LK"), ("expiring", "notice", "LE60")]
    assert found[1].evidence == ("serial E5",) and "in 5 days (within 7)" in found[1].detail
    narrow = _found(store, site, {"expiring"}, expiry_windows_days=(10,))
    assert [(a.subject, a.detail.split("(")[1]) for a in narrow] == [(found[1].subject, "within 10)")]


def test_a_recalled_lot_still_in_stock_alerts_with_where_it_is(store: GatewayStore, site: Site) -> None:
    icu, theatre = CabinetFeed(site, "CB01", "ICU"), CabinetFeed(site, "CB02", "OR")
    icu.restock(STENT, "R1", lot="BAD")
    theatre.restock(STENT, "R2", lot="BAD")
    theatre.restock(STENT, "R3", lot="GOOD")
    icu.restock(CATHETER, "C1", lot="USED-UP")
    icu.take(CATHETER, "C1")
    HandheldFeed(site, "HH01", "ICU").consume(PATIENT, gs1(CATHETER, lot="USED-UP", serial="C1"))
    store.catalog.store_recalls([RecallRow(STENT, "BAD", "sterility", "2026-11-10"),
                                 RecallRow(CATHETER, "USED-UP", "label", "2026-11-10"),
                                 RecallRow(GAUZE, "*", "all lots", "2026-11-10")], replace=True)
    found = _found(store, site, {"recalled_in_stock"})
    assert [(a.severity, a.subject.split(":")[0], a.evidence) for a in found] == [
        ("critical", "CB01", ("serial R1",)), ("critical", "CB02", ("serial R2",))]
    assert "sterility" in found[0].detail


def test_supplier_licences_expired_or_expiring_within_a_window(store: GatewayStore, site: Site) -> None:
    store.terms.upsert_suppliers([SupplierRow("S1", "Medsupply", "LIC-1", "2026-11-01"),
                                  SupplierRow("S2", "Cardio", "LIC-2", "2026-12-10"),
                                  SupplierRow("S3", "Farfuture", "LIC-3", "2029-01-01"),
                                  SupplierRow("S4", "Unknown", "", "")])
    found = _found(store, site, {"licence_expired", "licence_expiring"})
    assert [(a.kind, a.severity, a.subject) for a in found] == [
        ("licence_expired", "critical", "supplier S1 Medsupply: licence LIC-1"),
        ("licence_expiring", "warning", "supplier S2 Cardio: licence LIC-2")]
    assert found[1].detail == "expires 2026-12-10, in 22 days (within 30)"


def test_registration_certificates_expired_or_expiring_within_a_window(store: GatewayStore, site: Site) -> None:
    store.upsert_catalog([(STENT, "HC1", "C1", "Stent", "", "", 100, 1, 1)])
    store.terms.upsert_registrations([RegistrationRow(STENT, "REG-A", "2026-11-20"),
                                      RegistrationRow(STENT, "REG-OLD", "2025-01-01"),  # renewed by REG-A
                                      RegistrationRow(GAUZE, "REG-G", "2026-10-31"),
                                      RegistrationRow(CATHETER, "REG-B", "2030-01-01"),
                                      RegistrationRow(CATHETER, "REG-B0", "2026-11-19")])  # renewed by REG-B
    found = _found(store, site, {"registration_expired", "registration_expiring"})
    assert [(a.kind, a.severity, a.subject) for a in found] == [
        ("registration_expired", "critical", f"{GAUZE} ({GAUZE}): registration REG-G"),
        ("registration_expiring", "critical", f"Stent ({STENT}): registration REG-A")]


def test_items_taken_and_not_charged_in_time_come_from_the_link_watch_once(store: GatewayStore,
                                                                           site: Site) -> None:
    watch = LinkWatch(store, window_s=600.0, clock=site.clock)
    cabinet, handheld = CabinetFeed(site, "CB01", "ICU"), HandheldFeed(site, "HH01", "ICU")
    cabinet.take(STENT, "T1")
    cabinet.take(STENT, "T2")
    cabinet.take(STENT, "T3")
    site.clock.t += 60
    handheld.consume(PATIENT, gs1(STENT, lot="L", serial="T2"))  # charged in time
    site.clock.t += 1200
    watch.run_once()
    handheld.consume(PATIENT, gs1(STENT, lot="L", serial="T3"))  # charged late: the alarm is resolved
    watch.run_once()
    found = _found(store, site, {"not_charged"})
    assert [(a.severity, a.subject) for a in found] == [("warning", f"cabinet CB01: item {STENT}/T1")]
    assert found[0].evidence[0] == "cabinet CB01 seq 1"
    assert len(store.links.alarms()) == 2  # reported from the watch's alarms, none raised here


def test_abnormal_use_is_this_week_far_above_the_weeks_before(store: GatewayStore, site: Site) -> None:
    handheld = HandheldFeed(site, "HH01", "ICU")
    start = site.clock.t
    history = {STENT: [2, 3, 2, 2, 3, 2, 2, 3], CATHETER: [2, 9, 1, 8, 2, 10, 1, 9], GAUZE: [0] * 8}
    this_week = {STENT: 9, CATHETER: 11, GAUZE: 4}
    n = 0
    for week in range(9):
        for gtin in (STENT, CATHETER, GAUZE):
            count = history[gtin][week] if week < 8 else this_week[gtin]
            for _ in range(count):
                n += 1
                site.clock.t = start + week * 7 * DAY + n * 60
                handheld.consume(PATIENT, gs1(gtin, lot="L", serial=f"S{n}"))
    site.clock.t = start + 9 * 7 * DAY - DAY
    found = _found(store, site, {"abnormal_use"})
    assert [(a.subject, a.severity) for a in found] == [(f"dept ICU: {STENT} ({STENT})", "warning")]
    assert found[0].detail.startswith("9 used in the last 7 days")
    assert _found(store, site, {"abnormal_use"}, abnormal_min_count=10) == []
    assert _found(store, site, {"abnormal_use"}, abnormal_weeks=12) == []  # not that much history


def test_the_books_section_of_the_gateway_configuration() -> None:
    cfg = parse_gateway_config({"books": {"expiry_windows_days": [7, 60], "abnormal_k": 2.5,
                                          "routes": {"east": ["CB01", "dept:ICU"]}}})
    books = cfg["books"]
    assert (books.expiry_windows_days, books.abnormal_k, books.abnormal_weeks) == ((60, 7), 2.5, 8)
    assert books.routes == {"east": ("CB01", "dept:ICU")}
    with pytest.raises(ConfigError, match="expiry_windows_days"):
        parse_gateway_config({"books": {"expiry_windows_days": []}})
    with pytest.raises(ConfigError, match="abnormal_kk"):
        parse_gateway_config({"books": {"abnormal_kk": 2}})
