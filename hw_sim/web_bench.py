"""The screen's response times over a month of a hospital's events: the overview and a filtered charges page.

``python -m hw_sim.web_bench --events 3000000`` fills a fresh gateway store through the store's own write
paths (``ingest`` for the events, the charging batch and ``mark_accepted``/``mark_parked`` for the charges
of the ``consume`` events), spread over 30 days, 50 devices and 8 departments; then serves the screen with
uvicorn on a loopback port and times requests made with an API token, as a wall screen or an integration
makes them. Prints one JSON object; docs/benchmarks.md records it with the command.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.catalog import import_catalog, read_catalog_file, write_catalog_csv
from gateway.store import GatewayStore
from gateway.web.auth import LOGIN_COOKIE, SESSION_COOKIE, make_api_token, secret_hash
from gateway.web.passwords import hash_password
from gateway.web.server import WebServer
from gateway.web.settings import WebConfig
from hw_sim.catalog import sim_catalog
from spd_common.wire import GENESIS_HASH, Batch, Event, event_hash

DEPTS = ("ICU", "OR-1", "OR-2", "OR-3", "CATH", "CARD", "ORTH", "ER")
HANDHELDS, CABINETS = 40, 10
# share of each kind in the month's events (the rest: access)
MIX = (("consume", 0.20), ("taken", 0.18), ("restocked", 0.18), ("refused_scan", 0.04), ("alarm", 0.002))
BATCH = 500


def _kind(r: random.Random, cabinet: bool) -> str:
    x = r.random()
    for kind, share in MIX:
        if x < share:
            if cabinet and kind in ("consume", "refused_scan"):
                return "taken"
            if not cabinet and kind in ("taken", "restocked", "alarm"):
                return "access"
            return kind
        x -= share
    return "access"


def fill(path: Path, *, events: int, days: int, seed: int, admissions: int) -> dict[str, Any]:
    r = random.Random(seed)
    store = GatewayStore(path, synchronous="OFF")
    catalog = sim_catalog()
    csv_path = path.with_suffix(".catalog.csv")
    csv_path.write_text(write_catalog_csv([i.row() for i in catalog]), encoding="utf-8")
    entries, _ = read_catalog_file(csv_path)
    import_catalog(store, entries)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - days * 86_400_000
    devices = [(f"HH{i:03d}", False) for i in range(HANDHELDS)] + [(f"CB{i:03d}", True) for i in range(CABINETS)]
    per_device = events // len(devices)
    step_ms = (now_ms - start_ms) // max(1, per_device)
    # each device's chain: (prev hash, last seq, last ts, department); batches go round the devices in time order,
    # so the store's ids grow with the time the events were stored, as in a gateway that ran for the month
    chains = {d: (GENESIS_HASH, 0, start_ms + r.randrange(step_ms), DEPTS[r.randrange(len(DEPTS))])
              for d, _ in devices}
    t0 = time.perf_counter()
    charges = parked = 0
    while any(chains[d][1] < per_device for d, _ in devices):
        for device, cabinet in devices:
            prev, seq, ts, dept = chains[device]
            if seq >= per_device:
                continue
            batch: list[Event] = []
            consumed: list[tuple[Event, dict[str, Any]]] = []
            for _ in range(min(BATCH, per_device - seq)):
                seq += 1
                ts += r.randrange(1, 2 * step_ms)
                kind = _kind(r, cabinet)
                item = catalog[r.randrange(len(catalog))]
                serial = f"{device}S{seq:08d}"
                body: dict[str, Any]
                if kind == "consume":
                    body = {"admission": f"ZY{r.randrange(admissions):06d}", "udi": f"(01){item.gtin}(21){serial}",
                            "operator": f"N{r.randrange(300):03d}", "dept": dept}
                elif kind in ("taken", "restocked"):
                    body = {"epc": f"e{seq}", "gtin": item.gtin, "serial": serial, "dept": dept,
                            "role": "restocker" if kind == "restocked" else "nurse"}
                elif kind == "alarm":
                    body = {"alarm": r.choice(("door_ajar", "door_forced", "unknown_tag")), "dept": dept}
                elif kind == "refused_scan":
                    body = {"reason": "expired", "dept": dept}
                else:
                    body = {"result": r.choice(("granted", "door_opened", "door_closed")), "dept": dept}
                ev = Event(device, seq, ts, kind, body, prev, event_hash(device, seq, ts, kind, body, prev))
                prev = ev.hash
                batch.append(ev)
                if kind == "consume":
                    consumed.append((ev, {"admission": body["admission"], "gtin": item.gtin,
                                          "item_code": item.item_code, "name": item.name, "lot": "L1",
                                          "serial": serial, "expiry": "2028-12-31", "price_fen": item.price_fen,
                                          "operator": body["operator"], "dept": dept, "ts_ms": ts}))
            chains[device] = (prev, seq, ts, dept)
            store.ingest(Batch(device, "H1", batch, checked=True), now=ts / 1000)
            with store.charges.batch() as b:
                for ev, line in consumed:
                    b.add_charge(f"{ev.device}{ev.seq:010d}", ev.device, ev.seq, line["admission"],
                                 f"{line['gtin']}/{line['serial']}", json.dumps(line, ensure_ascii=False),
                                 "MSH|^~\\&|SPD", ev.ts_ms / 1000)
            for ev, _line in consumed:
                cid = f"{ev.device}{ev.seq:010d}"
                if r.random() < 0.005:
                    store.mark_parked(cid, "AE", "admission not known to the HIS")
                    parked += 1
                else:
                    store.mark_accepted(cid, "AA", f"R{cid}")
                charges += 1
    fill_s = time.perf_counter() - t0
    stored = store.counts()["events"]
    store.close()
    return {"events": stored, "charges": charges, "parked": parked, "fill_s": round(fill_s, 1),
            "store_mb": round(path.stat().st_size / 1e6, 1)}


def _time(client: httpx.Client, urls: list[str]) -> dict[str, float]:
    took = []
    for url in urls:
        t = time.perf_counter()
        r = client.get(url)
        took.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    took.sort()
    return {"n": len(took), "p50_ms": round(statistics.median(took), 1),
            "p95_ms": round(took[min(len(took) - 1, round(0.95 * (len(took) - 1)))], 1), "max_ms": round(took[-1], 1)}


def _sign_in(url: str, name: str, password: str) -> dict[str, str]:
    """The headers of a signed-in browser: the sign-in form (with its CSRF value), then the session cookie.

    The cookies are ``Secure`` and the bench serves plain HTTP on loopback, so they are carried by hand."""
    with httpx.Client(base_url=url, timeout=60) as c:
        form = c.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None, "no CSRF field on the sign-in form"
        done = c.post("/login", data={"username": name, "password": password, "csrf": csrf.group(1), "next": "/"},
                      headers={"Cookie": f"{LOGIN_COOKIE}={form.cookies[LOGIN_COOKIE]}"}, follow_redirects=False)
        assert done.status_code == 303, done.text[:300]
        return {"Cookie": f"{SESSION_COOKIE}={done.cookies[SESSION_COOKIE]}"}


def measure(path: Path, *, requests: int, seed: int, admissions: int, auth: str = "token") -> dict[str, Any]:
    """Response times (ms) of the overview and of filtered charges pages, and of the overview's JSON.

    ``auth``: ``token`` (an API token, as an integration) or ``session`` (a supervisor signed in through the
    sign-in form, as a wall screen's browser)."""
    r = random.Random(seed + 1)
    store = GatewayStore(path)
    name = f"bench-{int(time.time())}"  # a kept store may hold the token of an earlier run
    if auth == "session":
        password = secrets.token_urlsafe(16)
        store.accounts.add(name, "supervisor", hash_password(password), now=time.time())
    else:
        token = make_api_token(name)
        assert store.accounts.add_token(name, "supervisor", secret_hash(token), by="bench", now=time.time())
    server = WebServer(store, WebConfig(port=0)).start()
    gtins = [i.gtin for i in sim_catalog()]
    headers = _sign_in(server.url, name, password) if auth == "session" else {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
            targets = {
                "overview_page": ["/"] * requests,
                "overview_api": ["/api/v1/overview"] * requests,
                "charges_by_admission": [f"/charges?admission=ZY{r.randrange(admissions):06d}"
                                         for _ in range(requests)],
                "charges_parked_by_gtin": [f"/charges?status=parked&gtin={r.choice(gtins)}" for _ in range(requests)],
                "charges_accepted_latest": ["/charges?status=accepted"] * requests,
                "charges_parked": ["/charges?status=parked"] * requests,
                "charges_by_gtin": [f"/charges?gtin={r.choice(gtins)}" for _ in range(requests)],
            }
            first = _time(c, ["/"])["max_ms"]  # a fresh screen: the chart's past days not counted yet
            for urls in targets.values():  # warm the page cache and the templates
                _time(c, urls[:3])
            return {"overview_page_first_ms": first} | {name: _time(c, urls) for name, urls in targets.items()}
    finally:
        server.stop()
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw_sim.web_bench", description=__doc__)
    p.add_argument("--events", type=int, default=3_000_000, help="events in the month (default 3,000,000)")
    p.add_argument("--days", type=int, default=30, help="days the events span")
    p.add_argument("--admissions", type=int, default=6000, help="distinct patient admissions")
    p.add_argument("--requests", type=int, default=40, help="timed requests per page")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--db", type=Path, default=None, help="keep the filled store here (default: a temporary file)")
    p.add_argument("--auth", choices=("token", "session"), default="token",
                   help="how the requests are signed in: an API token (default) or a session cookie from the "
                        "sign-in form, as a browser")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = a.db or Path(tmp) / "gateway.db"
        filled = fill(path, events=a.events, days=a.days, seed=a.seed, admissions=a.admissions) \
            if not path.exists() else {"events": "existing store"}
        timings = measure(path, requests=a.requests, seed=a.seed, admissions=a.admissions, auth=a.auth)
    print(json.dumps({"store": filled, "auth": a.auth, "requests": timings}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
