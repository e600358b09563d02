"""The books benchmark's month: filled through the gateway's own ingest, charging and HIS answers, reusable,
and its settlement report measured in a fresh process."""

from __future__ import annotations

from pathlib import Path

from gateway.books.period import Period, zone
from gateway.books.settlement import settle
from gateway.store import GatewayStore
from hw_sim import books_bench


def test_a_small_month_is_filled_settled_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "month.db"
    figures = books_bench.fill(path, events=3000, cabinets=4, days=3, month="2026-11", seed=7)
    counts = figures["counts"]
    assert figures["events"] == counts["events"] >= 3000 * 0.8
    assert counts["quarantined"] == counts["chain_breaks"] == counts["charge_rejects"] == 0
    # every consumption was charged; the HIS refused the unknown charge codes and left the last hours waiting
    assert counts["charges"] == counts["consume_events"] + counts["credits_accepted"]
    assert counts["charges_parked"] == figures["charges_refused"]
    assert counts["charges_pending"] == figures["left_pending"] > 0
    assert books_bench.filled_events(path) == figures["events"]

    store = GatewayStore(path)
    try:
        month = settle(store, Period.month("2026-11", zone("Asia/Shanghai")))
        [(accepted,)] = store._engine.query("SELECT COALESCE(SUM(price_fen), 0) FROM consumption")
        [(credited,)] = store._engine.query("SELECT COALESCE(SUM(price_fen), 0) FROM consumption "
                                            "WHERE credit_id IS NOT NULL")
    finally:
        store.close()
    assert month.charged_fen == accepted - credited
    assert {s.supplier for s in month.suppliers} >= {"", "SUP01"}

    [report] = books_bench.run_reports(path, "2026-11", {"summary"})
    assert (report["report"], report["exit"]) == ("settlement (summary, JSON)", 0)
    assert report["peak_rss_mb"] >= report["baseline_rss_mb"] > 0
