"""The screen's security: nothing without a session or token, the role table on every route, CSRF, the sign-in
rate limit, clear refusals of bad input, and every sign-in and action in the audit log.

In process (FastAPI's TestClient over ``https://testserver``: the session cookie is ``Secure``), against a
gateway store holding real cabinet events and parked charges.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what FastAPI documents
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount

from gateway.store import GatewayStore
from gateway.web.app import CSP, create_app
from gateway.web.context import WebContext
from gateway.web.ratelimit import LoginLimiter
from gateway.web.roles import Role
from gateway.web.settings import WebConfig

from web_helpers import CABINET, PASSWORD, add_accounts, add_cabinet_events, add_parked_charge, csrf_of

ALL = frozenset(Role)
SUP = frozenset({Role.SUPERVISOR})
RESEND = frozenset({Role.SUPERVISOR, Role.FINANCE})
ACK = frozenset({Role.SUPERVISOR, Role.TECHNICIAN})
RECONCILIATION = frozenset({Role.SUPERVISOR, Role.FINANCE, Role.INSPECTOR})
INSPECTION = frozenset({Role.SUPERVISOR, Role.INSPECTOR})
SETTLEMENT = frozenset({Role.SUPERVISOR, Role.FINANCE})
TRACE = frozenset({Role.SUPERVISOR, Role.INSPECTOR})
BOOK_ALERTS = frozenset({Role.SUPERVISOR, Role.FINANCE, Role.INSPECTOR})

# route -> the roles allowed on it; the application's routes must be exactly these plus PUBLIC
ROUTE_ROLES: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", "/"): ALL,
    ("GET", "/fleet"): ALL,
    ("GET", "/cabinets"): ALL,
    ("GET", "/cabinets/{device}"): ALL,
    ("GET", "/cabinets/{device}/unlock"): SUP,
    ("POST", "/cabinets/{device}/unlock"): SUP,
    ("GET", "/charges"): ALL,
    ("POST", "/charges/{charge_id}/resend"): RESEND,
    ("GET", "/alarms"): ALL,
    ("POST", "/alarms/{alarm_id}/acknowledge"): ACK,
    ("POST", "/logout"): ALL,
    ("GET", "/api/v1/overview"): ALL,
    ("GET", "/api/v1/charts"): ALL,
    ("GET", "/api/v1/devices"): ALL,
    ("GET", "/api/v1/cabinets"): ALL,
    ("GET", "/api/v1/cabinets/{device}"): ALL,
    ("POST", "/api/v1/cabinets/{device}/unlock"): SUP,
    ("GET", "/api/v1/charges"): ALL,
    ("POST", "/api/v1/charges/{charge_id}/resend"): RESEND,
    ("GET", "/api/v1/alarms"): ALL,
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): ACK,
    ("GET", "/api/v1/openapi.json"): ALL,
    # the books
    ("GET", "/reconciliation"): RECONCILIATION,
    ("GET", "/reconciliation/finding"): RECONCILIATION,
    ("GET", "/api/v1/reconciliation"): RECONCILIATION,
    ("GET", "/api/v1/reconciliation/finding"): RECONCILIATION,
    ("GET", "/inspection"): INSPECTION,
    ("GET", "/inspection/export"): INSPECTION,
    ("GET", "/api/v1/inspection"): INSPECTION,
    ("GET", "/api/v1/inspection/export"): INSPECTION,
    ("GET", "/settlement"): SETTLEMENT,
    ("GET", "/settlement/export"): SETTLEMENT,
    ("GET", "/api/v1/settlement"): SETTLEMENT,
    ("GET", "/api/v1/settlement/export"): SETTLEMENT,
    ("GET", "/vbp"): SETTLEMENT,
    ("GET", "/api/v1/vbp"): SETTLEMENT,
    ("GET", "/trace"): TRACE,
    ("GET", "/api/v1/trace"): TRACE,
    ("GET", "/stock-alerts"): BOOK_ALERTS,
    ("GET", "/api/v1/stock-alerts"): BOOK_ALERTS,
    ("GET", "/replenishment"): SUP,
    ("GET", "/replenishment/export"): SUP,
    ("GET", "/api/v1/replenishment"): SUP,
}
PUBLIC = {("GET", "/login"), ("POST", "/login")}
JSON_BODIES = {"/api/v1/cabinets/{device}/unlock": {"confirm": CABINET, "seconds": 3},
               "/api/v1/alarms/{alarm_id}/acknowledge": {"comment": "checked on site"}}
FORMS = {"/cabinets/{device}/unlock": {"confirm": CABINET, "seconds": "3"},
         "/alarms/{alarm_id}/acknowledge": {"comment": "checked on site"}}


class Site:
    def __init__(self, tmp: Path, config: WebConfig, location: Path | str | None = None) -> None:
        self.store = GatewayStore(tmp / "gateway.db" if location is None else location)
        self.tokens = add_accounts(self.store)
        add_cabinet_events(self.store, tmp)
        for n in range(1, 41):
            add_parked_charge(self.store, f"C-{n}", serial=f"S{100 + n}")
        self.context = WebContext(self.store, config)
        self.app = create_app(self.context)
        self.next_charge = 0

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="https://testserver")

    def signed_in(self, role: Role) -> TestClient:
        c = self.client()
        page = c.get("/login")
        r = c.post("/login", data={"username": role.value, "password": PASSWORD, "csrf": csrf_of(page.text),
                                   "next": "/"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        return c

    def url(self, template: str) -> str:
        """A concrete URL for a route: a real cabinet, a still-parked charge, a real alarm."""
        self.next_charge += 1
        return (template.replace("{device}", CABINET).replace("{charge_id}", f"C-{self.next_charge}")
                .replace("{alarm_id}", f"event:{CABINET}:7"))

    def audit_actions(self) -> list[tuple[str, str, str]]:
        return [(e.actor, e.action, e.outcome) for e in self.context.audit.entries(limit=1000)]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, WebConfig(login_attempts=3, login_window_s=60))
    yield s
    s.store.close()


@pytest.fixture
def any_site(tmp_path: Path, store_location: Path | str) -> Iterator[Site]:
    """The site on a SQLite store, then on PostgreSQL (for the tests that read and write the most)."""
    s = Site(tmp_path, WebConfig(login_attempts=3, login_window_s=60), store_location)
    yield s
    s.store.close()


def app_routes(site: Site) -> set[tuple[str, str]]:
    """Every (method, path) the application answers, included routers flattened (the static files excepted)."""
    out = set()
    for ctx in iter_route_contexts(site.app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute):
            assert ctx.path is not None
            out |= {(m, ctx.path) for m in route.methods}
        else:
            assert isinstance(route, Mount) and route.path == "/static", f"unexpected route {route}"
    return out


def test_the_role_table_names_every_route_of_the_application(site: Site) -> None:
    assert app_routes(site) == set(ROUTE_ROLES) | PUBLIC


@pytest.mark.parametrize("credentials", ["none", "bad cookie", "bad token", "other scheme"])
def test_no_page_or_api_call_without_a_session_or_token(site: Site, credentials: str) -> None:
    c = site.client()
    headers = {"bad token": {"Authorization": "Bearer spd_x_notatoken"},
               "other scheme": {"Authorization": "Basic c3VwZXJ2aXNvcjp4"}}.get(credentials, {})
    if credentials == "bad cookie":
        c.cookies.set("spd_session", "forged", domain="testserver")
    for method, template in sorted(app_routes(site) - PUBLIC):
        url = site.url(template)
        r = c.request(method, url, headers=headers, json=JSON_BODIES.get(template), follow_redirects=False)
        if template.startswith("/api/"):
            assert r.status_code == 401, (method, url, r.status_code)
        else:
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), (method, url, r.status_code)
    assert site.store.dashboard.charge_status_counts() == {"parked": 40}
    assert site.store.accounts.acks() == {}


@pytest.mark.parametrize("role", list(Role))
def test_every_route_allows_exactly_the_roles_of_the_table(any_site: Site, role: Role) -> None:
    browser = any_site.signed_in(role)
    csrf = csrf_of(browser.get("/").text)
    token = {"Authorization": f"Bearer {any_site.tokens[role]}"}
    for (method, template), roles in sorted(ROUTE_ROLES.items()):
        if template == "/logout":
            continue  # ends the session the other routes use: below
        url = any_site.url(template)
        if template.startswith("/api/"):
            r = browser.request(method, url, headers=token, json=JSON_BODIES.get(template))
        elif method == "POST":
            r = browser.post(url, data={"csrf": csrf, **FORMS.get(template, {})}, follow_redirects=False)
        else:
            r = browser.get(url, follow_redirects=False)
        if role in roles:
            assert r.status_code not in (401, 403) and not r.headers.get("location", "").startswith("/login"), \
                (role, method, url, r.status_code, r.text[:300])
        else:
            assert r.status_code == 403, (role, method, url, r.status_code)
    r = browser.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert browser.get("/", follow_redirects=False).status_code == 303  # the session is gone


def test_an_allowed_role_really_resends_and_acknowledges(any_site: Site) -> None:
    fin = any_site.signed_in(Role.FINANCE)
    csrf = csrf_of(fin.get("/charges").text)
    r = fin.post("/charges/C-40/resend", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert any_site.store.dashboard.charge("C-40").status == "pending"  # type: ignore[union-attr]
    assert fin.post("/charges/C-40/resend", data={"csrf": csrf}).status_code == 409  # not parked any more
    tech = {"Authorization": f"Bearer {any_site.tokens[Role.TECHNICIAN]}"}
    r = any_site.client().post(f"/api/v1/alarms/event:{CABINET}:7/acknowledge", headers=tech,
                           json={"comment": "door closed, nothing missing"})
    assert r.status_code == 200 and r.json()["ack"]["comment"] == "door closed, nothing missing"
    assert r.json()["open"] is False
    assert any_site.client().post(f"/api/v1/alarms/event:{CABINET}:7/acknowledge", headers=tech,
                              json={"comment": "again"}).status_code == 409
    actions = any_site.audit_actions()
    assert ("web:finance", "charge_resent", "ok") in actions
    assert ("api:token:technician-tool", "alarm_acknowledged", "ok") in actions


def test_a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(site: Site) -> None:
    sup = site.signed_in(Role.SUPERVISOR)
    for data in ({}, {"csrf": "forged"}):
        assert sup.post("/charges/C-1/resend", data=data).status_code == 403
        assert sup.post(f"/alarms/event:{CABINET}:7/acknowledge", data={**data, "comment": "x y z"}).status_code == 403
        assert sup.post("/logout", data=data).status_code == 403
    # the API with the session cookie (not a token) needs the token in X-CSRF-Token
    assert sup.post("/api/v1/charges/C-1/resend").status_code == 403
    assert sup.post("/api/v1/charges/C-1/resend", headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert site.store.dashboard.charge("C-1").status == "parked"  # type: ignore[union-attr]
    assert site.store.accounts.acks() == {}
    csrf = csrf_of(sup.get("/").text)
    assert sup.post("/api/v1/charges/C-1/resend", headers={"X-CSRF-Token": csrf}).status_code == 200
    # the sign-in form has its own: a POST without it signs nobody in
    r = site.client().post("/login", data={"username": "supervisor", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403 and "spd_session" not in r.headers.get("set-cookie", "")


def _login(c: TestClient, username: str, password: str) -> int:
    page = c.get("/login")
    return c.post("/login", data={"username": username, "password": password, "csrf": csrf_of(page.text)},
                  follow_redirects=False).status_code


def test_sign_in_is_rate_limited_per_account_and_address_and_every_attempt_is_audited(any_site: Site) -> None:
    c = any_site.client()
    assert [_login(c, "finance", "wrong password!") for _ in range(3)] == [401, 401, 401]
    r_status = _login(c, "finance", PASSWORD)  # right password, but the account is blocked for the window
    assert r_status == 429
    assert _login(c, "supervisor", PASSWORD) == 429  # the same address is blocked too
    failed = [a for a in any_site.audit_actions() if a[1] == "web_sign_in"]
    assert failed.count(("web:finance", "web_sign_in", "failed")) == 4
    assert ("web:supervisor", "web_sign_in", "failed") in failed
    assert not any(o == "ok" for _, _, o in failed)


def test_the_limiter_counts_accounts_and_addresses_apart_and_forgets_after_the_window() -> None:
    now = [0.0]
    lim = LoginLimiter(2, 10.0, clock=lambda: now[0])
    lim.failed("user:a", "addr:1")
    lim.failed("user:a", "addr:2")
    assert lim.blocked_for("user:a", "addr:3") == pytest.approx(10.0)  # two failures of one account
    assert lim.blocked_for("user:b", "addr:1") == 0  # one failure of that address
    now[0] = 10.5
    assert lim.blocked_for("user:a", "addr:3") == 0


def test_a_successful_sign_in_is_audited_and_the_session_cookie_is_locked_down(site: Site) -> None:
    c = site.client()
    page = c.get("/login")
    r = c.post("/login", data={"username": "inspector", "password": PASSWORD, "csrf": csrf_of(page.text),
                               "next": "//evil.example/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # never redirected off the site
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("spd_session="))
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert flag.lower() in cookie.lower()
    assert ("web:inspector", "web_sign_in", "ok") in site.audit_actions()
    home = c.get("/")
    assert home.headers["content-security-policy"] == CSP and "'unsafe-inline'" not in CSP
    assert home.headers["x-frame-options"] == "DENY" and home.headers["cache-control"] == "no-store"
    assert "http://" not in home.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from elsewhere
    assert "https://" not in home.text


def test_bad_input_gets_a_clear_4xx(site: Site) -> None:
    tok = {"Authorization": f"Bearer {site.tokens[Role.SUPERVISOR]}"}
    c = site.client()
    r = c.get("/api/v1/charges?gtin=abc", headers=tok)
    assert r.status_code == 422 and "gtin" in r.json()["detail"][0]
    assert c.get("/api/v1/charges?status=lost", headers=tok).status_code == 422
    assert c.get("/api/v1/charges?limit=0", headers=tok).status_code == 422
    assert c.get("/api/v1/cabinets/NOPE", headers=tok).status_code == 404
    assert c.get("/api/v1/cabinets/bad%20id", headers=tok).status_code == 422
    r = c.post(f"/api/v1/alarms/event:{CABINET}:7/acknowledge", headers=tok, json={"comment": ""})
    assert r.status_code == 422
    assert c.post("/api/v1/alarms/bogus/acknowledge", headers=tok, json={"comment": "abc"}).status_code == 422
    assert c.post("/api/v1/alarms/event:CAB01:999/acknowledge", headers=tok, json={"comment": "abc"}).status_code \
        == 404
    assert c.post("/api/v1/charges/NOPE-1/resend", headers=tok).status_code == 404
    r = c.post(f"/api/v1/cabinets/{CABINET}/unlock", headers=tok, json={"confirm": "CAB02"})
    assert r.status_code == 400 and "confirm" in r.json()["detail"]
    assert c.post(f"/api/v1/cabinets/{CABINET}/unlock", headers=tok, json={"confirm": CABINET, "seconds": 999}) \
        .status_code == 422
    sup = site.signed_in(Role.SUPERVISOR)
    page = sup.get("/charges?gtin=abc")
    assert page.status_code == 422 and "gtin" in page.text and "<html" in page.text  # a page, not a traceback


def test_an_unlock_without_a_fleet_link_is_refused_and_audited(site: Site) -> None:
    sup = site.signed_in(Role.SUPERVISOR)
    confirm = sup.get(f"/cabinets/{CABINET}/unlock")
    assert confirm.status_code == 200 and "Type the cabinet" in confirm.text
    csrf = csrf_of(confirm.text)
    unconfirmed = sup.post(f"/cabinets/{CABINET}/unlock", data={"csrf": csrf, "confirm": ""})
    assert unconfirmed.status_code == 400
    r = sup.post(f"/cabinets/{CABINET}/unlock", data={"csrf": csrf, "confirm": CABINET})
    assert r.status_code == 503 and "fleet link" in r.text
    insp = site.signed_in(Role.INSPECTOR)
    assert insp.post(f"/cabinets/{CABINET}/unlock", data={"csrf": csrf_of(insp.get("/").text),
                                                            "confirm": CABINET}).status_code == 403
    actions = site.audit_actions()
    assert ("web:supervisor", "unlock_refused", "refused") in actions
    assert ("web:inspector", "unlock_refused", "refused") in actions


def test_disabling_an_account_or_revoking_a_token_ends_its_access(any_site: Site) -> None:
    fin = any_site.signed_in(Role.FINANCE)
    assert fin.get("/", follow_redirects=False).status_code == 200
    any_site.store.accounts.set_disabled("finance", True, now=time.time())
    assert fin.get("/", follow_redirects=False).status_code == 303
    assert _login(any_site.client(), "finance", PASSWORD) == 401
    tok = {"Authorization": f"Bearer {any_site.tokens[Role.INSPECTOR]}"}
    assert any_site.client().get("/api/v1/overview", headers=tok).status_code == 200
    any_site.store.accounts.revoke_token("inspector-tool", now=time.time())
    assert any_site.client().get("/api/v1/overview", headers=tok).status_code == 401


def test_an_expired_session_is_no_session(tmp_path: Path) -> None:
    s = Site(tmp_path, WebConfig(session_lifetime_s=60))
    try:
        c = s.signed_in(Role.INSPECTOR)
        assert c.get("/", follow_redirects=False).status_code == 200
        assert s.store.accounts.session("x", now=time.time()) is None
        cookie = c.cookies.get("spd_session")
        from gateway.web.auth import secret_hash
        assert s.store.accounts.session(secret_hash(cookie), now=time.time() + 61) is None  # type: ignore[arg-type]
    finally:
        s.store.close()


def test_the_openapi_document_lists_the_api_and_needs_a_token(site: Site) -> None:
    assert site.client().get("/api/v1/openapi.json").status_code == 401
    doc = site.client().get("/api/v1/openapi.json",
                            headers={"Authorization": f"Bearer {site.tokens[Role.INSPECTOR]}"}).json()
    assert {"/api/v1/charges", "/api/v1/alarms/{alarm_id}/acknowledge", "/api/v1/cabinets/{device}/unlock"} \
        <= set(doc["paths"])
    assert "/login" not in doc["paths"]
    assert site.client().get("/docs").status_code == 404  # no docs UI: it would load its script from a CDN
