"""The books on the screen, in process: the reconciliation with its filters and drill-down to the evidence, the
inspector's report and its download (a real workbook, audited), and who may see them.

A gateway store with a high-value item in the catalog, a cabinet whose nurse took one of them and never charged
it (``taken_not_charged``, evidence: the cabinet's ``taken`` event) and a HIS line entered by hand for a serial
no cabinet ever gave out (``charged_not_taken``, evidence: the HIS line).
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what FastAPI documents
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from gateway.catalog import CatalogEntry, import_catalog
from gateway.data.his_lines import CHARGE, MANUAL, HisLineRow
from gateway.store import GatewayStore
from gateway.web.app import create_app
from gateway.web.books_cache import MonthReports, this_month
from gateway.web.context import WebContext
from gateway.web.download import CONTENT_TYPES
from gateway.web.roles import Role
from gateway.web.settings import WebConfig

from web_helpers import CABINET, GTIN, PASSWORD, add_accounts, add_cabinet_events, csrf_of

PRICE = 1_234_56  # fen
TAKEN_KEY = f"{GTIN}/S2"


class Books:
    def __init__(self, tmp: Path) -> None:
        self.store = GatewayStore(tmp / "gateway.db")
        self.tokens = add_accounts(self.store)
        import_catalog(self.store, [CatalogEntry(GTIN, "HC00001", "33100001", "Coronary stent", "3.0x18", "Acme",
                                                 PRICE, True, True)])
        add_cabinet_events(self.store, tmp)
        self.store.his_lines.upsert([HisLineRow("HIS-9", CHARGE, "ZY0009", "33100001", GTIN, "L9", "S99", 1, PRICE,
                                                PRICE, int(time.time() * 1000), MANUAL, "", "CATH", "dr.hu", "R-9")],
                                    imported_from="his.csv", now=time.time())
        self.context = WebContext(self.store, WebConfig())
        self.app = create_app(self.context)
        self.month = this_month(self.context)

    def api(self, role: Role) -> TestClient:
        return TestClient(self.app, base_url="https://testserver",
                          headers={"Authorization": f"Bearer {self.tokens[role]}"})

    def signed_in(self, role: Role) -> TestClient:
        c = TestClient(self.app, base_url="https://testserver")
        r = c.post("/login", data={"username": role.value, "password": PASSWORD, "csrf": csrf_of(c.get("/login").text),
                                   "next": "/"}, follow_redirects=False)
        assert r.status_code == 303
        return c


@pytest.fixture
def books(tmp_path: Path) -> Iterator[Books]:
    b = Books(tmp_path)
    yield b
    b.store.close()


def test_the_reconciliation_lists_each_mismatch_and_filters_by_department_and_kind(books: Books) -> None:
    doc = books.api(Role.INSPECTOR).get("/api/v1/reconciliation").json()
    assert doc["meta"]["month"] == books.month
    assert {(m["kind"], m["key"], m["dept"]) for m in doc["mismatches"]} == {
        ("taken_not_charged", TAKEN_KEY, "ICU"), ("charged_not_taken", "HIS-9", "CATH")}
    assert doc["departments"] == ["CATH", "ICU"]
    assert {r["kind"]: r["count"] for r in doc["by_kind"]}["taken_not_charged"] == 1
    icu = books.api(Role.FINANCE).get("/api/v1/reconciliation", params={"dept": "ICU"}).json()
    assert [m["key"] for m in icu["mismatches"]] == [TAKEN_KEY] and icu["filtered_fen"] == PRICE
    only = books.api(Role.FINANCE).get("/api/v1/reconciliation", params={"kind": "charged_not_taken"}).json()
    assert [m["key"] for m in only["mismatches"]] == ["HIS-9"]
    other = books.api(Role.SUPERVISOR).get("/api/v1/reconciliation", params={"month": "2020-01"}).json()
    assert other["mismatches"] == [] and other["meta"]["month"] == "2020-01"
    page = books.signed_in(Role.INSPECTOR).get("/reconciliation", params={"dept": "CATH"})
    assert page.status_code == 200 and "HIS-9" in page.text and TAKEN_KEY not in page.text


def test_a_mismatch_drills_down_to_its_device_event_and_its_his_line(books: Books) -> None:
    insp = books.api(Role.INSPECTOR)
    taken = insp.get("/api/v1/reconciliation/finding", params={"kind": "taken_not_charged", "key": TAKEN_KEY}).json()
    assert taken["finding"]["events"] == [f"{CABINET}:6"]
    (event,) = taken["device_events"]
    assert (event["device"], event["seq"], event["kind"]) == (CABINET, 6, "taken")
    assert event["body"]["serial"] == "S2" and event["body"]["user"] == "N1" and len(event["hash"]) == 64
    assert event["hash"] == taken["finding"]["event_hashes"][0]
    charged = insp.get("/api/v1/reconciliation/finding", params={"kind": "charged_not_taken", "key": "HIS-9"}).json()
    assert charged["device_events"] == [] and charged["charges"] == []
    (line,) = charged["his_lines"]
    assert (line["his_id"], line["source"], line["serial"], line["amount_fen"], line["his_ref"]) == \
        ("HIS-9", "manual", "S99", PRICE, "R-9")
    page = books.signed_in(Role.INSPECTOR).get(
        "/reconciliation/finding", params={"kind": "taken_not_charged", "key": TAKEN_KEY})
    assert page.status_code == 200 and '"serial": "S2"' in page.text.replace("&#34;", '"')
    assert insp.get("/api/v1/reconciliation/finding", params={"kind": "price_markup", "key": "HIS-9"}) \
        .status_code == 404
    assert insp.get("/api/v1/reconciliation/finding", params={"kind": "lost", "key": "HIS-9"}).status_code == 422
    assert insp.get("/api/v1/reconciliation", params={"month": "2026-13"}).status_code == 422


def test_the_inspectors_report_downloads_as_a_workbook_and_the_download_is_audited(books: Books) -> None:
    insp = books.signed_in(Role.INSPECTOR)
    page = insp.get("/inspection")
    assert page.status_code == 200 and 'id="export-xlsx"' in page.text and "CATH" in page.text
    r = insp.get("/inspection/export", params={"month": books.month, "format": "xlsx"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert r.headers["content-disposition"] == f'attachment; filename="inspect-{books.month}.xlsx"'
    wb = openpyxl.load_workbook(io.BytesIO(r.content), read_only=True)
    assert wb.sheetnames == ["About", "Summary", "By department", "By kind", "Evidence"]
    evidence = [row for row in wb["Evidence"].iter_rows(values_only=True)]
    assert {(row[0], row[1]) for row in evidence[1:-1]} == {("taken_not_charged", TAKEN_KEY),
                                                           ("charged_not_taken", "HIS-9")}
    assert float(evidence[-1][8]) == 2 * PRICE / 100  # the totals row, in yuan
    csv = books.api(Role.SUPERVISOR).get("/api/v1/inspection/export", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and "HIS-9" in csv.content.decode("utf-8-sig")
    exports = [e for e in books.context.audit.entries(limit=100) if e.action == "books_exported"]
    assert sorted((e.actor, e.detail["report"], e.detail["format"], e.detail["month"]) for e in exports) == [
        ("api:token:supervisor-tool", "inspection", "csv", books.month),
        ("web:inspector", "inspection", "xlsx", books.month)]


def test_the_books_pages_follow_the_roles(books: Books) -> None:
    tech = books.signed_in(Role.TECHNICIAN)
    home = tech.get("/").text
    assert "/reconciliation" not in home and "/inspection" not in home  # not in the technician's navigation
    assert tech.get("/reconciliation").status_code == 403
    assert books.api(Role.TECHNICIAN).get("/api/v1/inspection/export").status_code == 403
    assert books.api(Role.FINANCE).get("/api/v1/inspection").status_code == 403
    fin_home = books.signed_in(Role.FINANCE).get("/").text
    assert 'href="/reconciliation"' in fin_home and 'href="/inspection"' not in fin_home
    assert not [e for e in books.context.audit.entries(limit=100) if e.action == "books_exported"]


def test_trace_an_item_and_a_lot_through_the_stock_ledger(books: Books) -> None:
    insp = books.api(Role.INSPECTOR)
    item = insp.get("/api/v1/trace", params={"gtin": GTIN, "serial": "S2"}).json()
    assert [(m["kind"], m["location"]) for m in item["movements"]][:2] == [("restock", CABINET), ("take", CABINET)]
    assert item["uses"] == [] and not any(s["location"] == CABINET for s in item["on_hand"])
    lot = insp.get("/api/v1/trace", params={"gtin": GTIN, "lot": "L1"}).json()
    assert {(s["location"], s["serial"]) for s in lot["on_hand"]} >= {(CABINET, "S1")}
    assert insp.get("/api/v1/trace", params={"serial": "S2"}).status_code == 400  # a serial without its GTIN
    assert insp.get("/api/v1/trace", params={"gtin": "123"}).status_code == 422
    page = books.signed_in(Role.SUPERVISOR).get("/trace", params={"gtin": GTIN, "serial": "S2"})
    assert page.status_code == 200 and 'id="movements"' in page.text
    assert books.api(Role.FINANCE).get("/api/v1/trace", params={"admission": "ZY0009"}).status_code == 403


def test_the_cabinet_page_shows_the_ledgers_balance(books: Books) -> None:
    doc = books.api(Role.TECHNICIAN).get(f"/api/v1/cabinets/{CABINET}").json()
    stock = doc["stock"]
    assert [(line["gtin"], line["count"]) for line in stock["lines"]] == [(GTIN, 2)]  # S1 and S3; S2 was taken
    assert "ledger" in stock["source"]


def test_a_months_report_is_computed_once_while_it_is_kept() -> None:
    now = [0.0]
    kept = MonthReports(ttl_s=300.0, clock=lambda: now[0])
    computed: list[str] = []

    def compute(month: str) -> str:
        computed.append(month)
        return f"report {month} #{len(computed)}"

    assert kept.get("reconciliation", "2026-11", lambda: compute("2026-11")) == "report 2026-11 #1"
    now[0] = 299.0
    assert kept.get("reconciliation", "2026-11", lambda: compute("2026-11")) == "report 2026-11 #1"
    assert kept.get("reconciliation", "2026-10", lambda: compute("2026-10")) == "report 2026-10 #2"
    now[0] = 300.5
    assert kept.get("reconciliation", "2026-11", lambda: compute("2026-11")) == "report 2026-11 #3"
    assert computed == ["2026-11", "2026-10", "2026-11"]


def _accepted_charge(store: GatewayStore, charge_id: str, seq: int, serial: str, price_fen: int) -> None:
    """A charge the HIS accepted (its consumption record follows), used today in ICU."""
    line = {"admission": "ZY0009", "gtin": GTIN, "item_code": "HC00001", "name": "Coronary stent", "lot": "L1",
            "serial": serial, "expiry": "2027-01-31", "price_fen": price_fen, "operator": "N1", "dept": "ICU",
            "ts_ms": int(time.time() * 1000)}
    with store.charges.batch() as b:
        b.add_charge(charge_id, "HH07", seq, "ZY0009", f"{GTIN}/{serial}", json.dumps(line), "MSH|...", time.time())
    store.mark_accepted(charge_id, "AA", f"R-{charge_id}")


def test_the_settlement_shows_the_months_totals_and_exports_them(books: Books) -> None:
    _accepted_charge(books.store, "A-1", 1, "S51", PRICE)
    _accepted_charge(books.store, "A-2", 2, "S52", PRICE + 1)
    fin = books.api(Role.FINANCE)
    doc = fin.get("/api/v1/settlement").json()
    assert doc["meta"]["month"] == books.month
    assert (doc["meta"]["units"], doc["meta"]["settled_fen"]) == (2, 2 * PRICE + 1)
    assert sum(s["settled_fen"] for s in doc["suppliers"]) == 2 * PRICE + 1
    assert fin.get("/api/v1/settlement", params={"month": "2020-01"}).json()["meta"]["settled_fen"] == 0
    r = books.signed_in(Role.FINANCE).get("/settlement/export", params={"format": "xlsx"})
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPES["xlsx"]
    assert r.headers["content-disposition"] == f'attachment; filename="settlement-{books.month}.xlsx"'
    wb = openpyxl.load_workbook(io.BytesIO(r.content), read_only=True)
    overview = [row for row in wb[wb.sheetnames[1]].iter_rows(values_only=True)]
    assert overview[-1][0] == "total" and Decimal(str(overview[-1][6])) == Decimal(2 * PRICE + 1) / 100
    csv = fin.get("/api/v1/settlement/export", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and "S52" in csv.content.decode("utf-8-sig")
    page = books.signed_in(Role.SUPERVISOR).get("/settlement")
    assert page.status_code == 200 and 'id="export-xlsx"' in page.text and "2469.13" in page.text
    assert books.api(Role.INSPECTOR).get("/api/v1/settlement").status_code == 403
    assert books.api(Role.TECHNICIAN).get("/api/v1/vbp").status_code == 403
    assert fin.get("/api/v1/vbp").status_code == 200
    exports = [e for e in books.context.audit.entries(limit=100) if e.action == "books_exported"]
    assert sorted((e.actor, e.detail["report"], e.detail["format"]) for e in exports) == [
        ("api:token:finance-tool", "settlement", "csv"), ("web:finance", "settlement", "xlsx")]
