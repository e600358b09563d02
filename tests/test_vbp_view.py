"""The VBP view: winners' share of a category's use, and progress against the agreed yearly volume."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.books.period import Period, zone
from gateway.books.vbp import vbp_view
from gateway.cli import main
from gateway.data.terms import VbpCategoryRow, VbpItemRow
from gateway.store import GatewayStore

from settlement_helpers import Device, answer, catalog, charge, gtin, local_ms, outbox_id

WINNER, LOSER, JOINT, OTHER = gtin(1), gtin(2), gtin(3), gtin(4)
TZ = zone("Asia/Shanghai")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatewayStore]:
    s = GatewayStore(tmp_path / "gateway.db", synchronous="OFF")
    catalog(s, [(WINNER, 59_000, "SUP-A", True), (LOSER, 120_000, "SUP-B", True), (JOINT, 80_000, "SUP-A", True),
                (OTHER, 1_000, "SUP-B", True)])
    # 90 days to 31 March 2026: 18 winners by then is a pace of 73 a year, 17 is not
    s.terms.upsert_vbp_categories([VbpCategoryRow("STENT", 2026, "coronary stents", 73),
                                   VbpCategoryRow("JOINT", 2026, "knee joints", 10),
                                   VbpCategoryRow("STENT", 2025, "coronary stents", 5)])
    s.terms.upsert_vbp_items([VbpItemRow(WINNER, "STENT", True), VbpItemRow(LOSER, "STENT", False),
                              VbpItemRow(JOINT, "JOINT", True)])
    yield s
    s.close()


def use(store: GatewayStore, items: list[tuple[str, str]]) -> list[tuple[str, int]]:
    first = store.counts()["events"]
    dev = Device(store, f"HH{first + 1:04d}")
    keys = [dev.consume(g, f"S{first + i}", local_ms(at)) for i, (g, at) in enumerate(items)]
    dev.send()
    charge(store)
    answer(store, [outbox_id(store, k) for k in keys], "accept")
    return keys


def test_winners_share_and_progress_by_the_end_of_the_month(store: GatewayStore) -> None:
    use(store, [(WINNER, "2026-01-15 10:00")] * 10 + [(WINNER, "2026-03-31 23:30")] * 8
        + [(LOSER, "2026-03-02 10:00")] * 2 + [(OTHER, "2026-03-02 10:00")] + [(WINNER, "2026-04-01 00:30")]
        + [(JOINT, "2026-02-01 10:00")])
    view = vbp_view(store, 2026, Period.month("2026-03", TZ))
    assert view.year_elapsed * 365 == 90
    stent, joint = sorted(view.categories, key=lambda c: c.category, reverse=True)
    assert (stent.category, stent.winner_units, stent.other_units, stent.winner_share_pct) == ("STENT", 8, 2, 80.0)
    assert (stent.year_to_date, stent.progress_pct, stent.projected_year_end, stent.behind_pace) == (18, 24.7, 73,
                                                                                                     False)
    assert (joint.winner_units, joint.other_units, joint.winner_share_pct) == (0, 0, None)
    assert (joint.year_to_date, joint.projected_year_end, joint.behind_pace) == (1, 4, True)


def test_a_credit_takes_a_unit_back_and_puts_the_category_behind(store: GatewayStore) -> None:
    keys = use(store, [(WINNER, "2026-02-10 10:00")] * 18)
    dev = Device(store, "DESK1")
    back = dev.give_back(WINNER, "S0", local_ms("2026-03-05 10:00"))
    dev.send()
    charge(store)
    answer(store, [outbox_id(store, back)], "accept")
    assert keys
    [_, stent] = vbp_view(store, 2026, Period.month("2026-03", TZ)).categories
    assert (stent.winner_units, stent.year_to_date, stent.behind_pace) == (-1, 17, True)


def test_the_year_to_a_day(store: GatewayStore) -> None:
    use(store, [(WINNER, "2026-01-02 10:00")] * 2)
    view = vbp_view(store, 2026, Period.year(2026, TZ), as_of=dt.date(2026, 1, 10))
    assert (view.period.first, view.period.last) == (dt.date(2026, 1, 1), dt.date(2026, 1, 10))
    [_, stent] = view.categories
    assert (stent.winner_units, stent.projected_year_end, stent.behind_pace) == (2, 73, False)


def test_cli_json(store: GatewayStore, capsys: pytest.CaptureFixture[str]) -> None:
    use(store, [(WINNER, "2026-03-02 10:00"), (LOSER, "2026-03-02 10:00")])
    assert main(["vbp", "--db", str(store.path), "--year", "2026", "--month", "2026-03", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [table] = [v for k, v in doc.items() if k.startswith("vbp_")]
    stent = next(r for r in table["rows"] if r["category"] == "STENT")
    assert (stent["winner_units"], stent["other_units"], stent["winner_share_pct"], stent["behind_pace"]) == (
        1, 1, "50.0", "yes")
    assert main(["vbp", "--db", str(store.path), "--year", "2025", "--month", "2026-03"]) == 2
