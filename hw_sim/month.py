"""``spd-sim month``: a hospital's month through the real wire, with anomalies of every kind injected.

``spd-sim month --cabinets 100 --days 30 --seed N --out DIR`` makes up the month (:mod:`hw_sim.month_world`),
starts a private Mosquitto, the simulated HIS and a real ``spd-gateway run`` (:class:`hw_sim.harness.SpineHarness`),
sends every cabinet's and handheld's signed event batches over MQTT hour by hour (:mod:`hw_sim.month_wire`),
waits until the gateway has charged every scan through its bridge and the HIS has answered, then does what
the HIS's clerks did by hand (manual lines, edits), imports the lots' expiry dates and the purchase contracts
into the gateway, exports the HIS's lines of the month and loads them with ``spd-gateway his-import``.

It leaves in DIR the gateway store (``gateway.db``), the HIS's database and export (``his.db``,
``his-<month>.csv``) and ``injected.json``: the list of what it injected, kind and key as
``spd-gateway reconcile --month <month>`` names them. With ``--check`` it runs the reconciliation itself and
exits 1 unless it finds exactly that list.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.books.legs import month_period
from gateway.data.terms import OPEN_ENDED, ContractRow, SupplierRow
from gateway.lot_expiry import LotExpiry, import_lot_expiry
from gateway.store import GatewayStore
from hw_sim import reaper
from hw_sim.catalog import sim_catalog
from hw_sim.harness import HarnessError, SpineHarness
from hw_sim.his_books import HisBooks
from hw_sim.loadgen import charge_id, raise_fd_limit, wait_gateway_connected
from hw_sim.month_wire import send_month
from hw_sim.month_world import Month, make_month

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MonthConfig:
    month: str
    cabinets: int = 100
    days: int = 30
    seed: int = 1
    uses_per_day: int = 6
    per_kind: int = 5
    site: str = "H1"
    utc_offset_minutes: int = 480
    grace_days: int = 7
    settle_timeout_s: float = 900.0


def last_month(today: dt.date | None = None) -> str:
    first = (today or dt.date.today()).replace(day=1)
    prev = first - dt.timedelta(days=1)
    return f"{prev.year:04d}-{prev.month:02d}"


def run_month(cfg: MonthConfig, out: Path) -> dict[str, Any]:
    """Make, send and book the month in ``out``; the figures, and ``out/injected.json`` written."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    month = make_month(cfg.month, cabinets=cfg.cabinets, days=cfg.days, seed=cfg.seed, catalog=sim_catalog(),
                       uses_per_day=cfg.uses_per_day, per_kind=cfg.per_kind, utc_offset_minutes=cfg.utc_offset_minutes)
    figures: dict[str, Any] = {"figure": "month", **asdict(cfg), **month.counts,
                               "made_s": round(time.monotonic() - t0, 2)}
    raise_fd_limit(len(month.devices) + 1024)
    h = SpineHarness(out, site=cfg.site, seed=cfg.seed)
    try:
        h.start()
        wait_gateway_connected(h)
        _book_terms(h.gateway_db, month)
        figures.update(asyncio.run(send_month(month, h.broker.host, h.broker.port, site=cfg.site)))
        t1 = time.monotonic()
        figures["gateway"] = _wait_charged(h.gateway_db, cfg.settle_timeout_s)
        figures["settle_s"] = round(time.monotonic() - t1, 2)
    finally:
        h.close()
    _import_lot_expiry(h.gateway_db, month)
    figures["his_lines"] = _book_his(h.his_db, h.gateway_db, month, cfg, out)
    injected = [{"kind": i.kind, "key": i.key, "dept": i.dept, "operator": i.operator, "note": i.note}
                for i in month.injections]
    (out / "injected.json").write_text(json.dumps(
        {"month": cfg.month, "seed": cfg.seed, "cabinets": cfg.cabinets, "days": cfg.days, "per_kind": cfg.per_kind,
         "injected": injected}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    figures["injected"] = len(injected)
    figures["total_s"] = round(time.monotonic() - t0, 2)
    return figures


def _book_terms(gateway_db: Path, month: Month) -> None:
    """The purchase contracts in force: under zero mark-up the HIS bills at the purchase price."""
    since = (dt.date(int(month.month[:4]), int(month.month[5:]), 1) - dt.timedelta(days=365)).isoformat()
    store = GatewayStore(gateway_db)
    try:
        store.terms.upsert_suppliers([SupplierRow("SUP01", "华东医疗供应链有限公司", "LIC-2025-0001", "2028-12-31")])
        store.terms.upsert_contracts([ContractRow("SUP01", c.gtin, c.price_fen, since, OPEN_ENDED, "HT-2026-001")
                                      for c in sim_catalog()])
    finally:
        store.close()


def _import_lot_expiry(gateway_db: Path, month: Month) -> None:
    """The SPD's receiving records: every lot's expiry, including the lots whose codes carried none."""
    store = GatewayStore(gateway_db)
    try:
        import_lot_expiry(store, [LotExpiry(g, lot, dt.date.fromisoformat(e)) for g, lot, e in month.lot_expiry])
    finally:
        store.close()


def _book_his(his_db: Path, gateway_db: Path, month: Month, cfg: MonthConfig, out: Path) -> int:
    books = HisBooks(his_db, utc_offset_minutes=cfg.utc_offset_minutes)
    try:
        books.enter(month.manual)
        for edit in month.edits:
            scan = month.flows[edit.flow_index].scan
            assert scan is not None
            txn = charge_id(scan.device, scan.seq)
            books.edit(txn, charge_code=edit.charge_code, unit_price_fen=edit.unit_price_fen)
            for inj in month.injections:
                if inj.flow_index == edit.flow_index and not inj.key:
                    inj.key = txn
        period = month_period(cfg.month, grace_days=cfg.grace_days, utc_offset_minutes=cfg.utc_offset_minutes)
        export = out / f"his-{cfg.month}.csv"
        n = books.export(export, start_ms=period.read_from_ms, end_ms=period.read_to_ms)
    finally:
        books.close()
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "his-import", "--db", str(gateway_db), str(export),
                           "--by", "spd-sim", "--utc-offset-minutes", str(cfg.utc_offset_minutes)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HarnessError(f"his-import failed: {done.stderr[-2000:]}")
    return n


def _wait_charged(gateway_db: Path, timeout_s: float, *, quiet_s: float = 2.0) -> dict[str, int]:
    """Until every consume event is charged or refused and nothing waits in the outbox, stable for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last: tuple[int, ...] = ()
    stable_since = time.monotonic()
    while True:
        db = sqlite3.connect(f"file:{gateway_db}?mode=ro", uri=True, timeout=30)
        try:
            consumes = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'consume'").fetchone()[0]
            charged = db.execute("SELECT COUNT(*) FROM charges WHERE item_key NOT LIKE 'credit:%'").fetchone()[0]
            rejected = db.execute("SELECT COUNT(*) FROM charge_rejects").fetchone()[0]
            pending = db.execute("SELECT COUNT(*) FROM charges WHERE status = 'pending'").fetchone()[0]
            accepted = db.execute("SELECT COUNT(*) FROM consumption").fetchone()[0]
            credits = db.execute("SELECT COUNT(*) FROM charges WHERE item_key LIKE 'credit:%'").fetchone()[0]
            events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            db.close()
        now = (events, consumes, charged, rejected, pending, accepted, credits)
        if now != last:
            last, stable_since = now, time.monotonic()
        if consumes == charged + rejected and pending == 0 and time.monotonic() - stable_since >= quiet_s:
            return {"events": events, "consume_events": consumes, "charges": charged, "refused": rejected,
                    "consumption_records": accepted, "credits": credits}
        if time.monotonic() > deadline:
            raise HarnessError(f"the gateway did not settle within {timeout_s:.0f}s: {now}")
        time.sleep(0.25)


def check(out: Path, cfg: MonthConfig) -> dict[str, Any]:
    """Reconcile the month in ``out`` and compare with ``injected.json``: found, missed, extra."""
    from gateway.books.reconcile import reconcile

    injected = {(i["kind"], i["key"]) for i in json.loads((out / "injected.json").read_text())["injected"]}
    store = GatewayStore(out / "gateway.db")
    try:
        t0 = time.monotonic()
        rec = reconcile(store, month_period(cfg.month, grace_days=cfg.grace_days,
                                            utc_offset_minutes=cfg.utc_offset_minutes))
        took = time.monotonic() - t0
    finally:
        store.close()
    found = {f.ident for f in rec.findings}
    return {"reconcile_s": round(took, 2), "found": len(found), "injected": len(injected),
            "missed": sorted(injected - found), "extra": sorted(found - injected)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spd-sim month", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--month", default=None, help="the month to make up, YYYY-MM (default: last month)")
    p.add_argument("--cabinets", type=int, default=100, help="cabinets (about eight to a department)")
    p.add_argument("--days", type=int, default=30, help="days of the month to simulate, from the 1st")
    p.add_argument("--seed", type=int, default=1, help="the same seed makes the same month")
    p.add_argument("--uses-per-day", type=int, default=6, help="items taken from each cabinet each day")
    p.add_argument("--per-kind", type=int, default=5, help="anomalies injected of each kind")
    p.add_argument("--site", default="H1", help="the site id of the devices")
    p.add_argument("--out", type=Path, required=True, help="directory for the stores, the HIS export and "
                   "injected.json (kept)")
    p.add_argument("--check", action="store_true", help="reconcile afterwards; exit 1 unless exactly the injected "
                   "list is found")
    a = p.parse_args(argv)
    if not 1 <= a.days <= 31 or a.cabinets < 1 or a.uses_per_day < 1 or a.per_kind < 0:
        p.error("--days must be 1..31; --cabinets and --uses-per-day at least 1; --per-kind not negative")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    reaper.exit_on_signals()
    cfg = MonthConfig(month=a.month or last_month(), cabinets=a.cabinets, days=a.days, seed=a.seed,
                      uses_per_day=a.uses_per_day, per_kind=a.per_kind, site=a.site)
    figures = run_month(cfg, a.out)
    bad = False
    if a.check:
        result = check(a.out, cfg)
        figures["check"] = result
        bad = bool(result["missed"] or result["extra"])
    print(json.dumps(figures, ensure_ascii=False), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
