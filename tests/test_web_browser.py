"""The supervisor's screen in a real browser: Debian's chromium driven by Playwright, against a gateway fed by hw_sim.

One spine for the module (broker, simulated HIS, the gateway as ``spd-gateway run`` with ``[web] enabled``
and TLS from a site CA, a simulated handheld whose first charges the HIS refuses, a cabinet's events sent
over MQTT by a device event log). Accounts and an API token are made with the real CLI. The tests sign in,
look at a cabinet's stock, filter charges, re-send a parked charge, acknowledge an alarm, are refused an
unlock as an inspector and send one as a supervisor, after the confirmation step. Screenshots go to docs/ui/.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from device.eventlog import EventLog
from gateway.commands import generate_signing_key
from gateway.pki import CertRole, SiteCA, write_private_key
from gateway.store import GatewayStore
from gateway.web.stock import cabinet_stock
from hw_sim.broker import free_port
from hw_sim.catalog import sim_catalog
from hw_sim.harness import SpineHarness
from spd_common.wire import encode_batch

from conftest import wait_for

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "ui"
CABINET = "CB09"
GTIN = sim_catalog()[0].gtin  # an item of the catalog the spine imports
PASSWORD = "ward rounds at seven"
PARKED = 2  # the HIS refuses the first charges with AE: parked

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("mosquitto") is None,
                                reason="needs Debian's chromium and mosquitto (make deps)")


class WebSpine(SpineHarness):
    """The spine whose gateway also serves the screen (``[web] enabled``) and signs commands (``[fleet]``)."""

    def __init__(self, workdir: Path, *, web_port: int, cert: Path, key: Path, signing_key: Path) -> None:
        super().__init__(workdir)
        self.web_port = web_port
        self.extra = (f'\n[fleet]\nsigning_key = {json.dumps(str(signing_key))}\n\n'
                      f'[web]\nenabled = true\nhost = "127.0.0.1"\nport = {web_port}\n'
                      f'cert_file = {json.dumps(str(cert))}\nkey_file = {json.dumps(str(key))}\n'
                      "utc_offset_minutes = 480\n")

    def gateway_toml(self, instance: int = 0, *, protocol: str = "mllp") -> str:
        return super().gateway_toml(instance, protocol=protocol) + self.extra


def _cli(*args: str, stdin: str = "") -> str:
    r = subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _send_cabinet_events(spine: SpineHarness, tmp: Path) -> None:
    """A cabinet's day as its own event log records it, published on its events topic like the device sync does."""
    log = EventLog(tmp / f"{CABINET}.db", device=CABINET)
    bodies: list[tuple[str, dict[str, object]]] = [
        ("access", {"result": "granted", "dept": "ICU", "user": "R7", "session": "r1"}),
        ("access", {"result": "door_opened", "dept": "ICU", "user": "R7", "session": "r1"}),
        *(("restocked", {"epc": f"e{i}", "gtin": GTIN, "serial": f"W{i}", "lot": "L24", "expiry": "2027-06-30",
                         "dept": "ICU", "role": "restocker", "user": "R7", "session": "r1"}) for i in range(5)),
        ("access", {"result": "door_closed", "dept": "ICU", "user": "R7", "session": "r1"}),
        ("access", {"result": "granted", "dept": "ICU", "user": "N3", "session": "n1"}),
        ("access", {"result": "door_opened", "dept": "ICU", "user": "N3", "session": "n1"}),
        ("taken", {"epc": "e1", "gtin": GTIN, "serial": "W1", "dept": "ICU", "role": "nurse", "user": "N3",
                   "session": "n1"}),
        ("access", {"result": "door_closed", "dept": "ICU", "user": "N3", "session": "n1"}),
        ("alarm", {"alarm": "door_forced", "dept": "ICU"}),
    ]
    events = [log.append(kind, body) for kind, body in bodies]
    log.close()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cb09-sim")
    client.connect("127.0.0.1", spine.broker.port)
    client.loop_start()
    client.publish(f"spd/v1/{spine.site}/{CABINET}/events", encode_batch(spine.site, CABINET, events), qos=1) \
        .wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


class Screen:
    def __init__(self, spine: WebSpine, url: str, ca: Path, token: str) -> None:
        self.spine, self.url, self.ca, self.token = spine, url, ca, token
        self.commands: list[dict[str, object]] = []
        self._sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cmd-watch")
        self._sub.on_message = lambda c, u, m: self.commands.append(json.loads(m.payload))
        connected = threading.Event()
        self._sub.on_connect = lambda c, u, f, rc, p: (c.subscribe(f"spd/v1/+/{CABINET}/cmd", qos=1),
                                                       connected.set())
        self._sub.connect("127.0.0.1", spine.broker.port)
        self._sub.loop_start()
        assert connected.wait(10)

    def store(self) -> GatewayStore:
        return GatewayStore(self.spine.gateway_db)

    def close(self) -> None:
        self._sub.loop_stop()
        self._sub.disconnect()


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Screen]:
    tmp = tmp_path_factory.mktemp("web")
    ca = SiteCA.create(tmp / "ca", site="H1")
    key, cert = ca.issue_with_new_key("spd-gw.test", role=CertRole.SERVER, dns_names=("localhost",),
                                      ip_addresses=("127.0.0.1",))
    from cryptography.hazmat.primitives import serialization
    (tmp / "web.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(tmp / "web.key", key)
    generate_signing_key(tmp / "signing.key")
    port = free_port()
    spine = WebSpine(tmp / "spine", web_port=port, cert=tmp / "web.crt", key=tmp / "web.key",
                     signing_key=tmp / "signing.key")
    spine.his.answer_next("AE", PARKED, "patient admission not known to the HIS")
    spine.start()
    try:
        db = str(spine.gateway_db)
        for role in ("supervisor", "inspector", "finance", "technician"):
            _cli("user", "add", f"{role[:3]}-wang", "--db", db, "--role", role, "--password-stdin", "--by", "test",
                 stdin=PASSWORD + "\n")
        token = _cli("web-token", "create", "--db", db, "--role", "inspector", "--name", "wall-screen").strip()
        spine.start_handheld("HH01", scans=10, rate=20.0)
        _send_cabinet_events(spine, tmp)
        spine.wait_handhelds(60)
        t = spine.wait_settled(60)
        assert t.parked == PARKED, t

        def cabinet_on_hand() -> int:
            s = GatewayStore(spine.gateway_db)
            try:
                return cabinet_stock(s, CABINET).items
            finally:
                s.close()

        # the gateway's stock-ledger thread projects the cabinet's events into the ledger the page reads
        wait_for(lambda: cabinet_on_hand() == 4, timeout=30, interval=0.5, message="the cabinet's stock in the ledger")
        url = f"https://127.0.0.1:{port}"
        wait_for(lambda: _reachable(url, tmp / "ca" / "ca.crt"), timeout=20, message="the screen over TLS")
        s = Screen(spine, url, ca.ca_path, token)
        try:
            yield s
        finally:
            s.close()
    finally:
        spine.close()


def _reachable(url: str, ca: Path) -> bool:
    try:
        r = httpx.get(f"{url}/login", verify=ssl.create_default_context(cafile=str(ca)), timeout=2)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _page(browser: object, screen: Screen, user: str) -> object:
    """A fresh browser context signed in as ``user`` (the site CA is not in chromium's store: errors ignored)."""
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    page = ctx.new_page()
    page.goto(f"{screen.url}/")
    assert page.url.startswith(f"{screen.url}/login")
    if user == "sup-wang":
        page.screenshot(path=str(SHOTS / "login.png"))
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{screen.url}/")
    return page


def test_the_screen_is_served_over_tls_from_the_site_ca_and_the_api_answers_a_token(screen: Screen) -> None:
    r = httpx.get(f"{screen.url}/api/v1/overview", verify=ssl.create_default_context(cafile=str(screen.ca)),
                  headers={"Authorization": f"Bearer {screen.token}"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["parked_charges"] == PARKED and doc["scans_today"] >= 10
    assert "strict-transport-security" in r.headers
    anonymous = httpx.get(f"{screen.url}/api/v1/overview", verify=ssl.create_default_context(cafile=str(screen.ca)))
    assert anonymous.status_code == 401


def test_sign_in_and_see_the_overview_and_a_cabinets_stock(browser: object, screen: Screen) -> None:
    page = _page(browser, screen, "sup-wang")
    tiles = page.inner_text(".tiles")
    assert f"{PARKED}\nparked charges" in tiles
    assert "svg" in page.inner_html(".charts")
    page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
    page.click("nav >> text=Cabinets")
    page.click(f"text={CABINET}")
    page.wait_for_url(f"{screen.url}/cabinets/{CABINET}")
    assert page.inner_text("#stock-total") == "4"  # five restocked, one taken
    row = page.locator("#stock tbody tr").first
    assert GTIN in row.inner_text() and "L24" in row.inner_text() and sim_catalog()[0].name in row.inner_text()
    assert "closed" in page.inner_text(".tiles") and "latched" in page.inner_text(".tiles")
    page.screenshot(path=str(SHOTS / "cabinet.png"), full_page=True)
    page.context.close()


def test_filter_charges_and_resend_a_parked_one(browser: object, screen: Screen) -> None:
    store = screen.store()
    try:
        accepted = store.dashboard.search_charges(status="accepted", limit=1)[0]
        parked = store.dashboard.search_charges(status="parked")
    finally:
        store.close()
    assert len(parked) == PARKED
    page = _page(browser, screen, "fin-wang")
    page.goto(f"{screen.url}/charges")
    page.fill("input[name=admission]", accepted.admission)
    page.click("form.filters button")
    page.wait_for_url(f"**/charges?admission={accepted.admission}*")
    rows = page.locator("#charges tbody tr")
    assert rows.count() >= 1
    assert all(accepted.admission in rows.nth(i).inner_text() for i in range(rows.count()))
    page.screenshot(path=str(SHOTS / "charges-filtered.png"), full_page=True)
    page.select_option("select[name=status]", "parked")
    page.fill("input[name=admission]", "")
    page.click("form.filters button")
    assert page.locator("#charges tbody tr").count() == PARKED
    assert "patient admission not known" in page.inner_text("#charges")
    page.screenshot(path=str(SHOTS / "charges-parked.png"), full_page=True)
    page.locator("#charges tbody tr").first.locator("button", has_text="Re-send").click()
    assert "is back in the HIS outbox" in page.inner_text("p.ok")
    assert page.locator("#charges tbody tr").count() == PARKED - 1
    page.screenshot(path=str(SHOTS / "charge-resent.png"), full_page=True)
    page.context.close()

    def resent_and_accepted() -> bool:
        s = screen.store()
        try:
            return s.dashboard.charge_status_counts().get("parked", 0) == PARKED - 1 and \
                s.dashboard.charge_status_counts().get("pending", 0) == 0
        finally:
            s.close()

    wait_for(resent_and_accepted, timeout=20, message="the re-sent charge accepted by the HIS")
    s = screen.store()
    try:
        assert any(e.action == "charge_resent" and e.actor == "web:fin-wang" for e in s.audit.latest(limit=200))
    finally:
        s.close()


def test_acknowledge_an_alarm_with_a_comment(browser: object, screen: Screen) -> None:
    page = _page(browser, screen, "tec-wang")
    page.click("nav >> text=Alarms")
    row = page.locator("#alarms tbody tr", has_text="door_forced").filter(has_text=CABINET)
    assert row.count() == 1
    page.screenshot(path=str(SHOTS / "alarms.png"), full_page=True)
    row.locator("input[name=comment]").fill("door checked with the ward: restocker's trolley, nothing missing")
    row.locator("button", has_text="Acknowledge").click()
    page.wait_for_url(f"{screen.url}/alarms")
    assert page.locator("#alarms tbody tr", has_text="door_forced").filter(has_text=CABINET).count() == 0
    page.click("text=All")
    acked = page.locator("#alarms tbody tr", has_text="door_forced").filter(has_text=CABINET)
    assert "tec-wang" in acked.inner_text() and "restocker's trolley" in acked.inner_text()
    page.screenshot(path=str(SHOTS / "alarm-acknowledged.png"), full_page=True)
    page.context.close()
    s = screen.store()
    try:
        assert any(e.action == "alarm_acknowledged" and e.actor == "web:tec-wang" for e in s.audit.latest(limit=200))
    finally:
        s.close()


def test_an_inspector_is_refused_an_unlock_and_a_supervisor_unlocks_after_confirming(browser: object,
                                                                                    screen: Screen) -> None:
    insp = _page(browser, screen, "ins-wang")
    insp.goto(f"{screen.url}/cabinets/{CABINET}")
    assert insp.locator("text=Remote unlock").count() == 0  # no button for a read-only role
    insp.goto(f"{screen.url}/cabinets/{CABINET}/unlock")
    assert "Not allowed" in insp.inner_text("h1") and "inspector role may not" in insp.inner_text("p.error")
    insp.screenshot(path=str(SHOTS / "unlock-refused-inspector.png"), full_page=True)
    insp.context.close()
    assert screen.commands == []

    sup = _page(browser, screen, "sup-wang")
    sup.goto(f"{screen.url}/cabinets/{CABINET}")
    sup.click("text=Remote unlock")
    sup.wait_for_url(f"{screen.url}/cabinets/{CABINET}/unlock")
    sup.click("button.danger")  # without typing the id: not sent (the browser's own check stops the form)
    assert screen.commands == []
    sup.fill("input[name=confirm]", CABINET)
    sup.screenshot(path=str(SHOTS / "unlock-confirm.png"), full_page=True)
    sup.click("button.danger")
    sup.wait_for_url(f"**/cabinets/{CABINET}?unlocked=*")
    assert "Unlock sent" in sup.inner_text("p.ok")
    sup.screenshot(path=str(SHOTS / "unlock-sent.png"), full_page=True)
    sup.context.close()
    wait_for(lambda: screen.commands, timeout=10, message="the signed unlock on the cabinet's cmd topic")
    cmd = screen.commands[-1]
    assert (cmd["kind"], cmd["device"], cmd["by"]) == ("unlock", CABINET, "web:sup-wang")
    assert cmd["sig"] and cmd["args"] == {"seconds": 5}
    s = screen.store()
    try:
        rows = [(e.actor, e.action, e.device) for e in s.audit.latest(limit=300)]
    finally:
        s.close()
    assert ("web:ins-wang", "unlock_refused", CABINET) not in rows  # a GET of the form changes nothing
    assert ("web:sup-wang", "command_sent", CABINET) in rows


