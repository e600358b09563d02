"""Property: a month's settlement per supplier is the HIS-accepted charges used in it less the HIS-accepted
credits returned in it, to the cent, whatever else happened (refusals, charges and credits still pending,
returns across the month's edges, several suppliers and one unknown); the suppliers add up to the total."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.books.period import Period, zone
from gateway.books.settlement import detail, settle
from gateway.data.terms import ContractRow
from gateway.store import GatewayStore

from settlement_helpers import Device, answer, catalog, charge, gtin, outbox_id

SUPPLIERS = ("SUP-A", "SUP-B", "")  # "": an item the catalog names no supplier for, and without contract
ITEMS = tuple(gtin(n) for n in range(1, 6))
SHANGHAI = zone("Asia/Shanghai")
FIRST = dt.datetime(2026, 10, 31, 0, 0, tzinfo=SHANGHAI)  # uses from the day before November ...
SPAN_MIN = 32 * 24 * 60  # ... to the day after it
VERDICTS = st.sampled_from(["accept", "accept", "accept", "refuse", "pending"])

item_terms = st.tuples(
    st.integers(1, 5_000_000),  # charged price in fen
    st.sampled_from(SUPPLIERS),
    st.one_of(st.none(), st.integers(1, 5_000_000)),  # a contract price that differs (a mark-up), or zero mark-up
)
a_use = st.tuples(
    st.integers(0, len(ITEMS) - 1),
    st.integers(0, SPAN_MIN - 1),  # minute of use from FIRST
    VERDICTS,
    st.one_of(st.none(), st.tuples(st.integers(1, 4 * 24 * 60), VERDICTS)),  # returned after so many minutes
)


def ms(at: dt.datetime) -> int:
    return int(at.timestamp() * 1000)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms=st.lists(item_terms, min_size=len(ITEMS), max_size=len(ITEMS)), uses=st.lists(a_use, max_size=25))
def test_settlement_is_accepted_charges_less_accepted_credits_per_supplier(
    terms: list[tuple[int, str, int | None]], uses: list[tuple[int, int, str, tuple[int, str] | None]]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = GatewayStore(Path(d) / "gateway.db", synchronous="OFF")
        try:
            check(store, terms, uses)
        finally:
            store.close()


def check(store: GatewayStore, terms: list[tuple[int, str, int | None]],
          uses: list[tuple[int, int, str, tuple[int, str] | None]]) -> None:
    catalog(store, [(g, price, supplier, True) for g, (price, supplier, _) in zip(ITEMS, terms, strict=True)])
    store.terms.upsert_contracts([
        ContractRow(supplier, g, price if contract is None else contract, "2026-01-01", "9999-12-31", f"K{i}")
        for i, (g, (price, supplier, contract)) in enumerate(zip(ITEMS, terms, strict=True)) if supplier])
    settled_price = [price if not supplier or contract is None else contract for price, supplier, contract in terms]

    ward, desk = Device(store, "CAB01"), Device(store, "DESK1")
    used = [(ward.consume(ITEMS[i], f"SN{n}", ms(FIRST + dt.timedelta(minutes=m)), admission=f"ZY{n % 7:04d}"),
             i, m, verdict, back) for n, (i, m, verdict, back) in enumerate(uses)]
    ward.send()
    charge(store)
    for key, _, _, verdict, _ in used:
        answer(store, [outbox_id(store, key)], verdict)
    returned = [(desk.give_back(ITEMS[i], f"SN{n}", ms(FIRST + dt.timedelta(minutes=m + back[0]))), n)
                for n, (_, i, m, _, back) in enumerate(used) if back is not None]
    desk.send()
    charge(store)
    credited: dict[int, str] = {}
    for key, n in returned:
        _, _, _, verdict, back = used[n]
        assert back is not None
        if verdict == "refuse":  # a return of a charge the HIS refused is voided: no credit is ever sent
            assert not store._engine.query("SELECT 1 FROM charges WHERE device = ? AND seq = ?", key)
            continue
        # the HIS accepts no credit for a charge it has not booked: that credit waits with its charge
        credited[n] = back[1] if verdict == "accept" else "pending"
        answer(store, [outbox_id(store, key)], credited[n])

    november = Period.month("2026-11", SHANGHAI)
    charged: dict[str, int] = defaultdict(int)
    settled: dict[str, int] = defaultdict(int)
    for n, (_, i, m, verdict, back) in enumerate(used):
        price, supplier, _ = terms[i]
        if verdict == "accept" and (FIRST + dt.timedelta(minutes=m)).month == 11:
            charged[supplier] += price
            settled[supplier] += settled_price[i]
        if back is not None and credited.get(n) == "accept" and (
                FIRST + dt.timedelta(minutes=m + back[0])).month == 11:
            charged[supplier] -= price
            settled[supplier] -= settled_price[i]

    result = settle(store, november)
    got_charged = {s.supplier: s.charged_fen for s in result.suppliers}
    got_settled = {s.supplier: s.settled_fen for s in result.suppliers}
    for supplier in SUPPLIERS:
        assert got_charged.get(supplier, 0) == charged[supplier], supplier
        assert got_settled.get(supplier, 0) == settled[supplier], supplier
    assert set(got_settled) <= set(SUPPLIERS)
    assert result.settled_fen == sum(settled.values()) == sum(got_settled.values())
    assert result.charged_fen == sum(charged.values())
    assert sum(line.settled_fen for line in detail(store, november)) == result.settled_fen
    for one in SUPPLIERS:
        assert settle(store, november, supplier=one).settled_fen == settled[one]
