"""The books on a month of events: fill a gateway store with a hospital's month, then time the books' reports.

``python -m hw_sim.books_bench --events 3000000 --store month.db`` (or ``spd-sim books-bench``):

1. **Fill** (skipped with ``--reuse`` when the store is already filled): a month of cabinet activity for
   ``--cabinets`` cabinets over ``--days`` days — badge sessions, items taken, used on patients (consume),
   put back, returned unused for a credit, restocked — as hash-chained events per cabinet, encoded as the
   devices send them and decoded and stored through the gateway's own ingest (``decode_batch`` then
   ``GatewayStore.ingest``, 500 events a batch). After each day the charging worker (the bridge) turns the
   day's consumptions into charges and returns into credits, and the HIS's answers are recorded as the
   sender records them (``mark_accepted``/``mark_parked``) with the simulated HIS's rules: charges of two
   items whose charge codes the HIS does not know are refused, a credit of a booked charge is accepted; the
   charges of the month's last two hours of activity are left waiting (the outbox at month end).
2. **Reports**: each report runs as ``spd-gateway`` does, in a fresh process, and that process's wall time
   and peak RSS (the process's ``VmHWM`` from ``/proc/self/status``, the high-water mark of the whole process,
   interpreter and imports included; the figure after imports is given as the baseline) are printed.
   Settlement, the VBP view, and — when their modules are installed (``gateway.books.reconcile``,
   ``gateway.books.inspect``) — reconciliation and the inspector's report; an absent one is skipped with a
   note.

Prints one JSON object per figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

SITE = "H1"
BATCH = 500
FILLED_CURSOR = "books_bench_filled"  # set in the store when a fill completed: the events it holds
TZ = ZoneInfo("Asia/Shanghai")
DEPTS = ("心内科", "骨科", "神经外科", "介入科", "普外科", "泌尿外科", "心外科", "血管外科", "手术室", "ICU")


@dataclass(frozen=True, slots=True)
class Item:
    gtin: str
    price_fen: int
    high_value: bool
    supplier: str


@dataclass(slots=True)
class Cabinet:
    device: str
    dept: str
    seq: int = 0
    prev: str = ""
    events: list[Any] = field(default_factory=list)
    charged: list[tuple[str, str, int]] = field(default_factory=list)  # (gtin, serial, day) of recent uses


def _gtin(n: int) -> str:
    from spd_common.gtin import check_digit

    body = f"0690000{n:06d}"
    return body + str(check_digit(body))


def build_catalog(rng: random.Random) -> list[Item]:
    """400 items: 240 high-value with serials, 160 low-value chargeable by lot; 20 suppliers, 5 items without."""
    items = []
    for n in range(400):
        high = n < 240
        price = rng.randint(1_000, 60_000) * 100 if high else rng.randint(5, 500) * 100
        supplier = "" if n % 80 == 79 else f"SUP{n % 20 + 1:02d}"
        items.append(Item(_gtin(n + 1), price, high, supplier))
    return items


def store_terms(store: Any, items: list[Item], year: int, month: int) -> None:
    from gateway.data.catalog import TermsRow
    from gateway.data.terms import ContractRow, SupplierRow, VbpCategoryRow, VbpItemRow

    store.upsert_catalog([(i.gtin, f"IT{n:04d}", f"C{n:06d}", f"item {n:04d}", "", "ACME", i.price_fen, 1,
                           int(i.high_value)) for n, i in enumerate(items)])
    store.catalog.upsert_terms([TermsRow(i.gtin, i.supplier, False, None) for i in items])
    contracts = []
    change = dt.date(year, month, 16).isoformat()
    for n, i in enumerate(items):
        if not i.supplier:
            continue
        if n % 40 == 3:  # the contract price changes mid-month
            contracts.append(ContractRow(i.supplier, i.gtin, i.price_fen, f"{year}-01-01",
                                         (dt.date.fromisoformat(change) - dt.timedelta(days=1)).isoformat(), f"K{n}"))
            contracts.append(ContractRow(i.supplier, i.gtin, i.price_fen * 95 // 100, change, "9999-12-31",
                                         f"K{n}b"))
        else:  # zero mark-up: the contract price is the charged price
            contracts.append(ContractRow(i.supplier, i.gtin, i.price_fen, f"{year}-01-01", "9999-12-31", f"K{n}"))
    store.terms.import_all(
        [SupplierRow(f"SUP{s:02d}", f"Supplier {s:02d}", f"LIC{s:04d}", f"{year + 1}-06-30") for s in range(1, 21)],
        contracts, [],
        [VbpCategoryRow(f"VBP{c}", year, f"category {c}", 20_000) for c in range(8)],
        [VbpItemRow(i.gtin, f"VBP{n % 8}", n % 3 == 0) for n, i in enumerate(items[:96])])


def udi(item: Item, serial: str, lot: str) -> str:
    head = f"]d201{item.gtin}17291231\x1d10{lot}"
    return f"{head}\x1d21{serial}" if item.high_value else head


class Month:
    """A month of cabinet events, day by day; ~4 events per item used (take, use, restock, session share)."""

    def __init__(self, *, events: int, cabinets: int, days: int, year: int, month: int, seed: int) -> None:
        from spd_common.wire import GENESIS_HASH

        self.rng = random.Random(seed)
        self.items = build_catalog(self.rng)
        self.high = [i for i in self.items if i.high_value]
        self.low = [i for i in self.items if not i.high_value]
        self.cabinets = [Cabinet(f"CAB{c:03d}", DEPTS[c % len(DEPTS)], 0, GENESIS_HASH) for c in range(cabinets)]
        self.days = days
        self.first = dt.date(year, month, 1)
        self.per_cabinet_day = max(8, events // (cabinets * days))
        self.serial = 0

    def emit(self, cab: Cabinet, kind: str, body: dict[str, Any], ts_ms: int) -> None:
        from spd_common.wire import Event, event_hash

        cab.seq += 1
        digest = event_hash(cab.device, cab.seq, ts_ms, kind, body, cab.prev)
        cab.events.append(Event(cab.device, cab.seq, ts_ms, kind, body, cab.prev, digest))
        cab.prev = digest

    def day(self, d: int) -> Iterator[Cabinet]:
        """Each cabinet with the day's events queued (its events list), one after the other."""
        date = self.first + dt.timedelta(days=d)
        midnight = int(dt.datetime(date.year, date.month, date.day, tzinfo=TZ).timestamp() * 1000)
        for cab in self.cabinets:
            cab.events = []
            self._cabinet_day(cab, d, midnight)
            yield cab

    def _cabinet_day(self, cab: Cabinet, d: int, midnight: int) -> None:
        """About ``per_cabinet_day`` events between 07:00 and 23:00 local time, in the device's time order."""
        rng = self.rng
        budget = self.per_cabinet_day
        step = 16 * 3_600_000 // max(1, budget // 4)  # one item used every ``step`` ms on average
        t = midnight + 7 * 3_600_000 + rng.randint(0, step)
        used_today: list[Item] = []
        while budget > 0:
            user = f"N{rng.randint(1, 400):04d}"
            self.emit(cab, "access", {"type": "badge", "result": "granted", "user": user, "role": "nurse"}, t)
            budget -= 1
            for _ in range(rng.randint(1, 3)):
                item = rng.choice(self.high) if rng.random() < 0.7 else rng.choice(self.low)
                self.serial += 1
                serial, lot = f"S{self.serial:010d}", f"L{d % 5}{item.gtin[-4:]}"
                t += rng.randint(1, max(1, step // 10))
                body = {"epc": f"3034{self.serial:020d}", "gtin": item.gtin, "serial": serial if item.high_value
                        else "", "lot": lot, "session": f"{cab.device}-{cab.seq}", "user": user, "role": "nurse",
                        "dept": cab.dept}
                self.emit(cab, "taken", body, t)
                if rng.random() < 0.05:  # taken and put back, never used
                    self.emit(cab, "returned", body, t + 1)
                    budget -= 2
                    continue
                t += rng.randint(1, max(1, step // 2))
                admission = f"ZY{d:02d}{rng.randint(0, 9999):05d}"
                self.emit(cab, "consume", {"admission": admission, "udi": udi(item, serial, lot), "operator": user,
                                           "dept": cab.dept}, t)
                used_today.append(item)
                budget -= 2
                if item.high_value and rng.random() < 0.02:
                    cab.charged.append((item.gtin, serial, d))
            t += rng.randint(1, max(1, step // 4))
            self.emit(cab, "access", {"type": "door", "result": "closed", "user": user}, t)
            budget -= 1
            # restock what was used, now and then in one session
            if len(used_today) >= 6 or budget <= 0:
                t += rng.randint(1, max(1, step // 10))
                for item in used_today:
                    self.serial += 1
                    self.emit(cab, "restocked", {"epc": f"3034{self.serial:020d}", "gtin": item.gtin,
                                                 "serial": f"S{self.serial:010d}" if item.high_value else "",
                                                 "user": "R001", "role": "restocker", "dept": cab.dept}, t)
                    budget -= 1
                used_today = []
        # items given back unused for a credit, a day or more after their use
        keep = []
        for gtin, serial, day in cab.charged:
            if day < d:
                self.emit(cab, "return_unused", {"udi": f"]d201{gtin}17291231\x1d10L{day % 5}{gtin[-4:]}"
                                                        f"\x1d21{serial}", "operator": "N0001", "dept": cab.dept,
                                                 "reason": "not opened", "restocked": True}, t + 60_000)
            else:
                keep.append((gtin, serial, day))
        cab.charged = keep


class His:
    """The HIS's answers as the simulated HIS gives them, recorded as the gateway's sender records them."""

    def __init__(self, refused_codes: set[str]) -> None:
        self.refused_codes = refused_codes
        self.accepted = self.refused = self.ref = 0

    def answer_all(self, store: Any, *, keep_after_ms: int | None = None) -> int:
        """Answer every pending charge and credit (those used after ``keep_after_ms`` are left waiting)."""
        kept: set[str] = set()
        while True:
            pending = [c for c in store.pending_charges(limit=5000 + len(kept)) if c.charge_id not in kept]
            if not pending:
                return len(kept)
            for c in pending:
                line = json.loads(c.line)
                credit = "credit_id" in line
                if keep_after_ms is not None and not credit and int(line.get("ts_ms", 0)) >= keep_after_ms:
                    kept.add(c.charge_id)
                    continue
                self.ref += 1
                if not credit and line.get("charge_code") in self.refused_codes:
                    store.mark_parked(c.charge_id, "AE", f"unknown charge code {line.get('charge_code')}")
                    self.refused += 1
                else:
                    store.mark_accepted(c.charge_id, "AA", f"HIS{self.ref:08d}")
                    self.accepted += 1


def fill(path: Path, *, events: int, cabinets: int, days: int, month: str, seed: int) -> dict[str, Any]:
    from gateway import bridge
    from gateway.books.output import progress
    from gateway.charging import ChargingWorker
    from gateway.store import GatewayStore
    from spd_common.wire import decode_batch, encode_batch

    year, mon = (int(x) for x in month.split("-"))
    gen = Month(events=events, cabinets=cabinets, days=days, year=year, month=mon, seed=seed)
    store = GatewayStore(path, synchronous="OFF")
    try:
        store_terms(store, gen.items, year, mon)
        worker = ChargingWorker(store, bridge.BridgeConfig(sending_facility="SPD", receiving_facility="HOSP"),
                                batch_size=5000)
        his = His({"C000007", "C000250"})
        timings = {"ingest_s": 0.0, "charging_s": 0.0, "his_s": 0.0}
        stored = last_ms = 0
        for d in progress(range(days), total=days, description="filling the month"):
            t0 = time.perf_counter()
            for cab in gen.day(d):
                last_ms = max([last_ms, *(ev.ts_ms for ev in cab.events)])
                for i in range(0, len(cab.events), BATCH):
                    chunk = cab.events[i:i + BATCH]
                    batch = decode_batch(f"spd/v1/{SITE}/{cab.device}/events", encode_batch(SITE, cab.device, chunk))
                    stored += store.ingest(batch).new
            t1 = time.perf_counter()
            while worker.run_once():
                pass
            t2 = time.perf_counter()
            last_day = d == days - 1
            waiting = his.answer_all(store, keep_after_ms=last_ms - 2 * 3_600_000 if last_day else None)
            t3 = time.perf_counter()
            timings["ingest_s"] += t1 - t0
            timings["charging_s"] += t2 - t1
            timings["his_s"] += t3 - t2
        with store._engine.transaction() as db:  # the fill completed: --reuse may take this store
            db.execute("INSERT INTO cursors (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "value = excluded.value", (FILLED_CURSOR, stored))
        counts = store.counts()
    finally:
        store.close()
    return {"figure": "books_fill", "events": stored, "cabinets": cabinets, "days": days, "month": month,
            **{k: round(v, 1) for k, v in timings.items()},
            "ingest_events_per_s": round(stored / timings["ingest_s"]) if timings["ingest_s"] else None,
            "charges_accepted": his.accepted, "charges_refused": his.refused, "left_pending": waiting,
            "store_mb": round(path.stat().st_size / 1e6), "counts": counts}


def filled_events(path: Path) -> int | None:
    """The events of a completed fill in the store at ``path``, or None."""
    if not path.exists():
        return None
    import sqlite3

    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM cursors WHERE name = ?", (FILLED_CURSOR,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return None if row is None else int(row[0])


XLSX_ALL = "xlsx-all"
"""``--only xlsx-all`` adds the whole month's workbook, left out otherwise: openpyxl writes a few thousand detail
rows a second of CPU, so a month of 3 million events (half a million high-value lines) takes minutes."""


def reports(store: Path, month: str, out: Path, *, heavy: bool = False) -> list[tuple[str, str | None, list[str]]]:
    """(name, module it needs or None, spd-gateway argv) of each report measured."""
    year = month.split("-")[0]
    db = ["--db", str(store)]
    chosen = [
        ("settlement (summary, JSON)", None, ["settlement", *db, "--month", month, "--no-detail", "--format", "json",
                                              "-o", str(out / "settlement.json")]),
        ("settlement with high-value detail (CSV)", None, ["settlement", *db, "--month", month, "--format", "csv",
                                                            "-o", str(out / "settlement.csv")]),
        ("settlement of one supplier with detail (XLSX)", None, ["settlement", *db, "--month", month, "--supplier",
                                                                  "SUP01", "--format", "xlsx",
                                                                  "-o", str(out / "sup01.xlsx")]),
        ("VBP view (month, JSON)", None, ["vbp", *db, "--year", year, "--month", month, "--format", "json",
                                          "-o", str(out / "vbp.json")]),
        ("reconciliation (JSON)", "gateway.books.reconcile", ["reconcile", *db, "--month", month, "--format", "json",
                                                              "-o", str(out / "reconcile.json")]),
        ("inspector's report (JSON)", "gateway.books.inspect", ["inspect", *db, "--month", month, "--format", "json",
                                                                "-o", str(out / "inspect.json")]),
    ]
    if heavy:
        chosen.append((f"settlement of every supplier with detail (XLSX, {XLSX_ALL})", None,
                       ["settlement", *db, "--month", month, "--format", "xlsx", "-o", str(out / "all.xlsx")]))
    return chosen


def peak_rss_kib() -> int:
    """This process's RSS high-water mark in KiB: ``VmHWM`` (Linux), else ``ru_maxrss``.

    ``ru_maxrss`` survives ``fork`` and ``exec``: a child started by a large process reports the parent's
    high-water mark. ``VmHWM`` belongs to the address space, which ``exec`` makes new.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(argv: list[str]) -> dict[str, Any]:
    """Run one spd-gateway command in this process: wall time and peak RSS (this is a fresh process)."""
    from gateway.cli import main

    baseline = peak_rss_kib()
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    peak = peak_rss_kib()
    return {"exit": rc, "seconds": round(seconds, 2), "peak_rss_mb": round(peak / 1024, 1),
            "baseline_rss_mb": round(baseline / 1024, 1)}


def run_reports(store: Path, month: str, only: set[str] | None) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        for name, module, argv in reports(store, month, Path(d), heavy=bool(only) and XLSX_ALL in (only or ())):
            if only and not any(word in name for word in only):
                continue
            if module is not None and importlib.util.find_spec(module) is None:
                yield {"figure": "books_report", "report": name, "skipped": f"{module} is not installed"}
                continue
            done = subprocess.run([sys.executable, "-m", "hw_sim.books_bench", "measure", "--", *argv],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                yield {"figure": "books_report", "report": name, "failed": done.stderr.strip()[-500:]}
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            sizes = {p.name: p.stat().st_size for p in Path(d).iterdir()}
            output = next((a for a in argv if a.startswith(d)), None)
            yield {"figure": "books_report", "report": name, **result,
                   "output_mb": round(sizes.get(Path(output).name, 0) / 1e6, 1) if output else None}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["measure"]:
        print(json.dumps(measure(args[2:] if args[1:2] == ["--"] else args[1:])))
        return 0
    p = argparse.ArgumentParser(prog="python -m hw_sim.books_bench", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--events", type=int, default=3_000_000, help="events in the month (default 3,000,000)")
    p.add_argument("--cabinets", type=int, default=100, help="cabinets, one device each (default 100)")
    p.add_argument("--days", type=int, default=30, help="days of the month filled (default 30)")
    p.add_argument("--month", default="2026-11", help="the month, YYYY-MM (default 2026-11)")
    p.add_argument("--seed", type=int, default=1, help="seed of the month's random activity")
    p.add_argument("--store", type=Path, default=None, help="the store file to fill (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="use --store as it is when a completed fill is in it")
    p.add_argument("--no-fill", action="store_true",
                   help="measure the reports on --store as it is, even without a completed fill (a partial month)")
    p.add_argument("--only", action="append", default=None,
                   help="measure only the reports whose name contains this word (repeatable)")
    a = p.parse_args(args)
    with tempfile.TemporaryDirectory() as d:
        path = a.store if a.store is not None else Path(d) / "books.db"
        have = filled_events(path) if a.reuse else None
        if a.no_fill:
            if a.store is None or not path.exists():
                p.error("--no-fill needs an existing --store")
            print(json.dumps({"figure": "books_fill", "as_is": str(path), "complete": filled_events(path) is not None}),
                  flush=True)
        elif have is None:
            if path.exists():
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            print(json.dumps(fill(path, events=a.events, cabinets=a.cabinets, days=a.days, month=a.month,
                                  seed=a.seed), ensure_ascii=False), flush=True)
        else:
            print(json.dumps({"figure": "books_fill", "reused": str(path), "events": have}), flush=True)
        for figure in run_reports(path, a.month, set(a.only) if a.only else None):
            print(json.dumps(figure, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
