"""Stable counting: the confirming-round math, suspects resolved on their own antennas, no phantom removals."""

from __future__ import annotations

import random

import pytest

from device.cabinet.inventory import InventoryPolicy, count_stable
from hw_sim.cabinet import SimTagField


def test_confirm_rounds_follow_the_phantom_bound() -> None:
    policy = InventoryPolicy(miss_rate=0.05, phantom_target=1e-5)
    assert policy.confirm_rounds(200) == 6  # ceil(ln(1e-5/200)/ln(0.05)) = ceil(5.61)
    assert policy.confirm_rounds(20) == 5  # ceil(4.84)
    assert policy.phantom_bound(200) == pytest.approx(200 * 0.05**6)
    assert InventoryPolicy(miss_rate=0.3, phantom_target=1e-6, max_rounds=12).confirm_rounds(500) == 12


def _field(n: int, miss: float, seed: int) -> tuple[SimTagField, dict[str, frozenset[int]]]:
    f = SimTagField(miss_rate=miss, seed=seed)
    for i in range(n):
        f.tags[f"{i:024X}"] = {1 + i % 4}
    return f, {e: frozenset(a) for e, a in f.tags.items()}


def test_removed_tags_are_confirmed_and_added_tags_reported() -> None:
    f, previous = _field(40, 0.05, seed=3)
    gone = ["00000000000000000000000A", "00000000000000000000000B"]
    for e in gone:
        del f.tags[e]
    f.tags["FFFF00000000000000000001"] = {2}
    r = count_stable(f, previous, InventoryPolicy(miss_rate=0.05, phantom_target=1e-5))
    assert r.taken == set(gone)
    assert r.added == {"FFFF00000000000000000001"}
    assert r.unconfirmed == set()
    assert set(r.present) == set(f.tags)


def test_confirming_rounds_run_only_on_the_suspects_antennas() -> None:
    f, previous = _field(40, 0.0, seed=1)
    del f.tags["000000000000000000000004"]  # on antenna 1 (4 % 4 = 0)
    r = count_stable(f, previous, InventoryPolicy(miss_rate=0.05, phantom_target=1e-5))
    k = r.confirm_rounds
    assert r.taken == {"000000000000000000000004"}
    assert (r.rounds, r.antenna_rounds) == (k, 4 + (k - 1))


def test_a_count_with_nothing_missing_is_one_round() -> None:
    f, previous = _field(40, 0.0, seed=1)
    r = count_stable(f, previous, InventoryPolicy())
    assert (r.rounds, r.antenna_rounds, r.taken, r.added) == (1, 4, set(), set())


def test_no_phantom_removal_in_300_noisy_counts() -> None:
    rng = random.Random(7)
    phantoms = missed = 0
    policy = InventoryPolicy(miss_rate=0.05, phantom_target=1e-5)
    for seed in range(300):
        f, previous = _field(200, 0.05, seed=seed)
        gone = set(rng.sample(sorted(f.tags), 3))
        for e in gone:
            del f.tags[e]
        r = count_stable(f, previous, policy)
        phantoms += len(r.taken - gone)
        missed += len(gone - r.taken)
    assert (phantoms, missed) == (0, 0)


def test_an_antenna_that_errors_gives_no_evidence_and_leaves_suspects_unconfirmed() -> None:
    class Broken(SimTagField):
        def inventory(self, rounds: int = 1, *, antennas: object = None, repeat: int = 1) -> object:
            res = super().inventory(rounds, antennas=antennas, repeat=repeat)
            res.antenna_errors[3] = "antenna_missing"  # type: ignore[attr-defined]
            for tags in (res.tags,):  # type: ignore[attr-defined]
                for e in [e for e, s in tags.items() if s.antennas == {3}]:
                    del tags[e]
            return res

    f = Broken(miss_rate=0.0)
    for i in range(8):
        f.tags[f"{i:024X}"] = {1 + i % 4}
    previous = {e: frozenset(a) for e, a in f.tags.items()}
    r = count_stable(f, previous, InventoryPolicy(max_rounds=6))
    assert r.taken == set()
    behind = {"000000000000000000000002", "000000000000000000000006"}  # antenna 3: never counted as a miss
    assert r.unconfirmed == behind
    assert behind <= set(r.present)
    assert r.rounds == 6
