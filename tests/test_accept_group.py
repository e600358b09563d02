"""Acceptances recorded as a group write what recording them one by one writes.

`ChargeStore.mark_accepted_many` reads, updates and inserts for a whole group in a few multi-row statements;
two stores holding the same outbox (charges, and credits queued behind them) record the same answers, one
as groups and one charge at a time, and must end with the same charges, consumption list, returns and
items given back. Runs on both engines.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.charging import ChargingWorker
from gateway.data.charges import StoreError
from gateway.store import GatewayStore

from test_credits import CONFIG, STENT, Handheld

COMPARED = {
    "charges": "SELECT charge_id, device, seq, item_key, status, attempts, ack_code, his_ref, last_error "
               "FROM charges ORDER BY charge_id",
    "consumption": "SELECT device, seq, charge_id, admission, gtin, lot, serial, price_fen, operator, used_at_ms, "
                   "his_ref, credit_id, credit_his_ref FROM consumption ORDER BY device, seq",
    "returns": "SELECT device, seq, outcome, charge_id, credit_id FROM returns ORDER BY device, seq",
    "item_releases": "SELECT item_key, credit_id FROM item_releases ORDER BY credit_id",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[GatewayStore, GatewayStore]]:
    stores = []
    for name in ("one", "two"):
        location: Any = (request.getfixturevalue("pg_store_url") if name == "one" else
                         request.getfixturevalue("pg_url")) if request.param == "postgresql" \
            else tmp_path / f"{name}.db"
        store = GatewayStore(location, synchronous="OFF")
        store.upsert_catalog([(STENT, "IT-STENT", "C310001", "冠脉支架", "3.0x18mm", "ACME", 1_234_567, 1, 1)])
        stores.append(store)
    yield stores[0], stores[1]
    for store in stores:
        store.close()


def _fill(store: GatewayStore) -> list[str]:
    """Charges of three devices, some given back (credits queued behind them); the outbox's charge ids."""
    for d in range(3):
        hh = Handheld(store, f"HH0{d}")
        for n in range(40):
            hh.consume(f"S{d}-{n}", admission=f"ZY{n % 5:04d}")
        for n in range(0, 40, 7):
            hh.give_back(f"S{d}-{n}", restocked=n % 2 == 0)
    worker = ChargingWorker(store, CONFIG)
    while worker.run_once():
        pass
    return [str(r[0]) for r in store._engine.query("SELECT charge_id FROM charges ORDER BY id")]


def _tables(store: GatewayStore) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r) for r in store._engine.query(sql)] for name, sql in COMPARED.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_group_writes_what_one_by_one_writes(two_stores: tuple[GatewayStore, GatewayStore], seed: int) -> None:
    grouped, single = two_stores
    ids = _fill(grouped)
    assert _fill(single) == ids
    assert any(i for i in ids if grouped._engine.query("SELECT 1 FROM returns WHERE credit_id = ?", (i,)))
    rng = random.Random(seed)
    # the HIS's answers in lane order: a charge before its credit, some answered twice (a resend), in groups of
    # uneven size; a second answer for the same charge keeps the first
    answers = [(i, rng.choice(["AA", "CA"]), f"R{seed}-{k}") for k, i in enumerate(ids)]
    for k in rng.sample(range(len(answers)), 15):
        answers.insert(rng.randrange(k, len(answers)), (answers[k][0], "AA", f"again-{k}"))
    new_in_groups = 0
    at = 0
    while at < len(answers):
        size = rng.choice([1, 2, 17, 150, 401])
        new_in_groups += grouped.charges.mark_accepted_many(answers[at:at + size])
        at += size
    new_one_by_one = sum(single.charges.mark_accepted(*a) for a in answers)
    assert new_in_groups == new_one_by_one == len(ids)
    assert _tables(grouped) == _tables(single)
    assert len(_tables(grouped)["item_releases"]) > 0


def test_an_unknown_charge_fails_the_whole_group(two_stores: tuple[GatewayStore, GatewayStore]) -> None:
    store = two_stores[0]
    ids = _fill(store)
    with pytest.raises(StoreError, match="no charge NOPE"):
        store.charges.mark_accepted_many([(ids[0], "AA", "R1"), ("NOPE", "AA", "R2")])
    assert store._engine.query("SELECT status FROM charges WHERE charge_id = ?", (ids[0],)) == [("pending",)]
