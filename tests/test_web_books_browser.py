"""The books on the screen in a real browser (Debian's chromium, Playwright), against a gateway fed by hw_sim.

The spine of ``tests/test_web_browser.py`` (its fixtures, a second one for this module): a simulated handheld
whose charges the HIS accepts (the first two parked), a cabinet that gives out an item nobody charges. An
inspector opens the month's reconciliation, filters it and drills into that mismatch down to the cabinet's
``taken`` event; a finance officer exports the month's settlement and the downloaded workbook's total is the
store's. Screenshots go to docs/ui/.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest
from test_web_browser import CABINET, CHROMIUM, GTIN, SHOTS, Screen, _page, browser, screen

from gateway.books.legs import month_period

__all__ = ["browser", "screen"]  # the fixtures, imported for this module's own spine

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("mosquitto") is None,
                                reason="needs Debian's chromium and mosquitto (make deps)")
TAKEN = f"{GTIN}/W1"  # the cabinet's take that no charge follows


def _site_month() -> str:
    """This month at the site (the spine's screen runs at UTC+8)."""
    return time.strftime("%Y-%m", time.gmtime(time.time() + 480 * 60))


def test_an_inspector_opens_the_reconciliation_and_drills_into_a_mismatch(browser: object, screen: Screen) -> None:
    page = _page(browser, screen, "ins-wang")
    assert page.locator("nav a[href='/reconciliation']").count() == 1
    assert page.locator("nav a[href='/settlement']").count() == 0  # finance's, not the inspector's
    page.click("nav a[href='/reconciliation']")
    page.wait_for_selector("#mismatches")
    page.select_option("select[name=kind]", "taken_not_charged")
    page.select_option("select[name=dept]", "ICU")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/reconciliation?*kind=taken_not_charged*")
    rows = page.inner_text("#mismatches")
    assert TAKEN in rows and "charged_not_taken" not in rows
    page.screenshot(path=str(SHOTS / "reconciliation.png"), full_page=True)
    page.click("#mismatches a[href*='W1']")
    page.wait_for_selector("#device-events")
    assert "/reconciliation/finding?" in page.url
    events = page.inner_text("#device-events")
    assert CABINET in events and "taken" in events and '"serial": "W1"' in events and '"user": "N3"' in events
    assert "taken from the cabinet" in page.inner_text("#finding")
    page.screenshot(path=str(SHOTS / "reconciliation-finding.png"), full_page=True)
    page.context.close()  # type: ignore[attr-defined]


def test_an_inspector_downloads_the_inspectors_report(browser: object, screen: Screen, tmp_path: Path) -> None:
    page = _page(browser, screen, "ins-wang")
    page.goto(f"{screen.url}/inspection")
    page.screenshot(path=str(SHOTS / "inspection.png"), full_page=True)
    with page.expect_download() as download:  # type: ignore[attr-defined]
        page.click("#export-xlsx")
    d = download.value
    assert d.suggested_filename == f"inspect-{_site_month()}.xlsx"
    target = tmp_path / d.suggested_filename
    d.save_as(target)
    wb = openpyxl.load_workbook(io.BytesIO(target.read_bytes()), read_only=True)
    keys = {row[1] for row in wb["Evidence"].iter_rows(min_row=2, values_only=True)}
    assert TAKEN in keys
    page.context.close()  # type: ignore[attr-defined]
    s = screen.store()
    try:
        exports = [e for e in s.audit.latest(limit=300) if e.action == "books_exported"]
    finally:
        s.close()
    assert [(e.actor, e.outcome) for e in exports] == [("web:ins-wang", "ok")]



def test_finance_exports_the_settlement_and_the_workbooks_total_is_the_stores(browser: object, screen: Screen,
                                                                               tmp_path: Path) -> None:
    page = _page(browser, screen, "fin-wang")
    assert page.locator("nav a[href='/reconciliation']").count() == 1
    assert page.locator("nav a[href='/inspection']").count() == 0  # the inspector's, not finance's
    page.click("nav a[href='/settlement']")
    page.wait_for_selector("#settled-total")
    page.screenshot(path=str(SHOTS / "settlement.png"), full_page=True)
    with page.expect_download() as download:  # type: ignore[attr-defined]
        page.click("#export-xlsx")
    d = download.value
    month = _site_month()
    assert d.suggested_filename == f"settlement-{month}.xlsx"
    target = tmp_path / d.suggested_filename
    d.save_as(target)
    page.context.close()  # type: ignore[attr-defined]
    wb = openpyxl.load_workbook(io.BytesIO(target.read_bytes()), read_only=True)
    overview = [row for row in wb[f"Suppliers {month}"].iter_rows(values_only=True)]
    header, total = overview[0], overview[-1]
    assert total[0] == "total"
    settled = Decimal(str(total[header.index("Settled")]))
    units = int(total[header.index("Units")])
    # the store's own account: the month's charges the HIS accepted and no credit reversed, at their price
    period = month_period(month, grace_days=0)
    s = screen.store()
    try:
        used = [r for r in s.books.consumption(period.start_ms, period.end_ms) if not r.credit_id]
        exports = [e for e in s.audit.latest(limit=300) if e.action == "books_exported"]
    finally:
        s.close()
    assert units == len(used) >= 1
    assert settled == Decimal(sum(r.price_fen for r in used)) / 100
    assert ("web:fin-wang", "settlement") in {(e.actor, json.loads(e.detail).get("report")) for e in exports}
