"""Several gateways share the HIS sending through claims on the outbox (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.data.claims import member_lease
from gateway.store import GatewayStore

OpenStore = Callable[[], GatewayStore]


def _queue(store: GatewayStore, charges: list[tuple[str, str]]) -> None:
    """Queue (charge id, admission) pairs in this order."""
    with store.charges.batch() as db:
        for n, (charge_id, admission) in enumerate(charges, start=1):
            assert db.add_charge(charge_id, "HH01", n, admission, f"item/{charge_id}", "{}", f"MSH|{charge_id}", 1.0)


def _live(store: GatewayStore, *owners: str, now: float, ttl_s: float = 5.0) -> None:
    for owner in owners:
        assert store.hold_lease(member_lease(owner), owner, ttl_s, now=now)


def _ids(charges: list) -> list[str]:  # type: ignore[type-arg]
    return [c.charge_id for c in charges]


def test_live_instances_split_the_outbox_and_keep_each_patients_charges_with_one(open_store: OpenStore) -> None:
    a, b = open_store(), open_store()  # two gateways on one store
    _queue(a, [("P1", "ZY-P"), ("P2", "ZY-P"), ("Q1", "ZY-Q"), ("P3", "ZY-P"), ("Q2", "ZY-Q"), ("R1", "ZY-R")])
    _live(a, "gw-a", "gw-b", now=100.0)
    # two live instances: each claims half of what is free (here of the first two), in outbox order
    assert _ids(a.claims.claim_due("gw-a", now=100.0, limit=2)) == ["P1"]
    # P2 and P3 wait behind P1, which gw-a holds: gw-b takes half of the other patients' charges
    assert _ids(b.claims.claim_due("gw-b", now=100.1, limit=10)) == ["Q1", "Q2"]
    assert _ids(a.claims.claim_due("gw-a", now=100.2, limit=10)) == ["P1", "P2", "P3"]
    assert _ids(b.claims.claim_due("gw-b", now=100.3, limit=10)) == ["Q1", "Q2", "R1"]  # nothing of gw-a's
    assert a.claims.holders() == {"gw-a": 3, "gw-b": 3}
    # a charge the HIS answered leaves the outbox, and its claim with it
    assert a.mark_parked("P1", "AE", "refused") == []
    assert _ids(a.claims.claim_due("gw-a", now=100.4, limit=10)) == ["P2", "P3"]
    assert a.claims.holders() == {"gw-a": 2, "gw-b": 3}


def test_a_dead_instances_charges_are_taken_over_once_its_membership_runs_out(open_store: OpenStore) -> None:
    a, b = open_store(), open_store()
    _queue(a, [("P1", "ZY-P"), ("Q1", "ZY-Q"), ("P2", "ZY-P")])
    _live(a, "gw-a", now=100.0)
    assert _ids(a.claims.claim_due("gw-a", now=100.0, limit=10)) == ["P1", "Q1", "P2"]
    _live(b, "gw-b", now=102.0)  # added while gw-a holds everything: nothing for it yet
    assert _ids(b.claims.claim_due("gw-b", now=102.0, limit=10)) == []
    # gw-a is SIGKILLed: it renews nothing; its membership (5 s) runs out at 105
    _live(b, "gw-b", now=104.0)
    assert _ids(b.claims.claim_due("gw-b", now=104.9, limit=10)) == []
    assert _ids(b.claims.claim_due("gw-b", now=105.1, limit=10)) == ["P1", "Q1", "P2"]
    assert a.claims.holders() == {"gw-b": 3}
    # gw-a restarts under its name: it is live again but what gw-b holds stays gw-b's
    _live(a, "gw-a", now=106.0)
    assert _ids(a.claims.claim_due("gw-a", now=106.0, limit=10)) == []


def test_an_instance_that_stops_gives_its_claims_back(open_store: OpenStore) -> None:
    a, b = open_store(), open_store()
    _queue(a, [("P1", "ZY-P"), ("Q1", "ZY-Q")])
    _live(a, "gw-a", "gw-b", now=100.0)
    assert _ids(a.claims.claim_due("gw-a", now=100.0, limit=10)) == ["P1"]  # its half
    assert a.claims.release("gw-a") == 1
    assert _ids(b.claims.claim_due("gw-b", now=100.5, limit=10)) == ["P1"]  # half of the two now free
    assert _ids(b.claims.claim_due("gw-b", now=100.6, limit=10)) == ["P1", "Q1"]
