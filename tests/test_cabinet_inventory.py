"""Stable counting: the confirming-round math, suspects resolved on their own antennas, Gen2 sessions, no phantoms."""

from __future__ import annotations

import random

import pytest

from device.cabinet.inventory import InventoryPolicy, count_stable
from device.hal.rfid.r2000 import Session, Target
from device.hal.rfid.reader import InventoryResult
from hw_sim.rfid_reader import SimGen2Field

QUIET = 6.0  # door-open time between counts, longer than the S1 persistence ceiling


def test_confirm_rounds_follow_the_phantom_bound() -> None:
    policy = InventoryPolicy(miss_rate=0.05, phantom_target=1e-5)
    assert policy.confirm_rounds(200) == 6  # ceil(ln(1e-5/200)/ln(0.05)) = ceil(5.61)
    assert policy.confirm_rounds(20) == 5  # ceil(4.84)
    assert policy.phantom_bound(200) == pytest.approx(200 * 0.05**6)
    assert InventoryPolicy(miss_rate=0.3, phantom_target=1e-6, max_rounds=12).confirm_rounds(500) == 12


def test_session_zero_is_refused_for_counting() -> None:
    with pytest.raises(ValueError, match="S0"):
        InventoryPolicy(session=Session.S0)


def _field(n: int, miss: float, seed: int, **kw: object) -> tuple[SimGen2Field, dict[str, frozenset[int]]]:
    f = SimGen2Field(miss_rate=miss, seed=seed, **kw)  # type: ignore[arg-type]
    for i in range(n):
        f.add_tag(f"{i:024X}", (1 + i % 4,))
    return f, f.tags()


def test_removed_tags_are_confirmed_and_added_tags_reported() -> None:
    f, previous = _field(40, 0.05, seed=3)
    gone = ["00000000000000000000000A", "00000000000000000000000B"]
    for e in gone:
        f.remove_tag(e)
    f.add_tag("FFFF00000000000000000001", (2,))
    r = count_stable(f, previous, InventoryPolicy(miss_rate=0.05, phantom_target=1e-5))
    assert r.session is Session.S1
    assert r.taken == set(gone)
    assert r.added == {"FFFF00000000000000000001"}
    assert r.unconfirmed == set()
    assert set(r.present) == set(f.tags())


def test_confirming_rounds_query_only_unread_tags() -> None:
    f, previous = _field(40, 0.0, seed=1)
    f.remove_tag("000000000000000000000004")  # on antenna 1 (4 % 4 = 0)
    r = count_stable(f, previous, InventoryPolicy(miss_rate=0.05, phantom_target=1e-5))
    k = r.confirm_rounds
    assert r.taken == {"000000000000000000000004"}
    assert (r.rounds, r.antenna_rounds, r.plain_antenna_rounds) == (k, 4 * k, 1)
    s1 = Session.S1
    every = [(1, s1), (2, s1), (3, s1), (4, s1)]
    # k sweeps of every antenna (for tags put in); the suspect's k-th miss is a real-time round on its antenna
    assert f.commands == every * (k - 1) + [(2, s1), (3, s1), (4, s1), (1, None)]
    # 39 tags in round 1, nothing in the target-A rounds, the 9 left on antenna 1 in the deciding real-time round
    assert f.reads == 39 + 9


def test_a_count_with_nothing_missing_reads_each_tag_once() -> None:
    f, previous = _field(40, 0.0, seed=1)
    r = count_stable(f, previous, InventoryPolicy())
    k = r.confirm_rounds
    assert (r.rounds, r.antenna_rounds, r.taken, r.added) == (k, 4 * k, set(), set())
    assert f.reads == 40  # the sweeps after round 1 are answered only by tags not read yet: none


@pytest.mark.parametrize("seed", range(20))
def test_tags_put_in_are_found_even_when_round_one_misses_them(seed: int) -> None:
    f, previous = _field(60, 0.2, seed=seed)
    new = [f"FFFF{i:020X}" for i in range(30)]
    for i, e in enumerate(new):
        f.add_tag(e, (1 + i % 4,))
    policy = InventoryPolicy(miss_rate=0.2, phantom_target=1e-5)
    r = count_stable(f, previous, policy)
    assert r.added == set(new)  # one round would miss each with probability 0.2: 6 of 30 on average
    assert r.taken == set() and set(r.present) == set(f.tags())


@pytest.mark.parametrize("seed", range(10))
def test_the_first_count_finds_every_tag(seed: int) -> None:
    f, _ = _field(200, 0.05, seed=seed)
    r = count_stable(f, {}, InventoryPolicy(miss_rate=0.05, phantom_target=1e-5))
    assert set(r.present) == set(f.tags()) and r.added == set(f.tags())


def test_a_reader_used_within_the_quiet_time_counts_on_real_time_inventories() -> None:
    f, previous = _field(40, 0.0, seed=1)
    f.inventory()
    f.advance(4.9)
    f.remove_tag("000000000000000000000004")
    r = count_stable(f, previous, InventoryPolicy(flag_quiet_s=5.0))
    assert r.session is None
    assert r.taken == {"000000000000000000000004"}
    assert r.plain_antenna_rounds == r.antenna_rounds
    assert all(s is None for _, s in f.commands)


def test_tags_whose_flags_outlast_the_quiet_time_are_not_reported_taken() -> None:
    # A tag population out of spec: S1 flags persist 60 s, the count waited only 6 s.
    f, previous = _field(40, 0.0, seed=4, s1_persistence_s=(60.0, 60.0))
    f.inventory(session=Session.S1)
    f.advance(QUIET)
    f.remove_tag("000000000000000000000004")
    r = count_stable(f, previous, InventoryPolicy())
    assert r.session is Session.S1
    assert r.taken == {"000000000000000000000004"}  # the 39 silent tags were read by the deciding round
    assert set(r.present) == set(f.tags())


def test_a_round_that_lost_packets_on_the_line_turns_its_antenna_to_real_time_inventories() -> None:
    class LossyLine(SimGen2Field):
        """The first session round on antenna 2 reads a tag (its flag flips) but the packet is lost on the line."""

        lost = False

        def inventory(self, rounds: int = 1, *, antennas: object = None, repeat: int = 1,
                      session: Session | None = None, target: Target = Target.A) -> InventoryResult:
            res = super().inventory(rounds, antennas=antennas, repeat=repeat,  # type: ignore[arg-type]
                                    session=session, target=target)
            victim = "000000000000000000000005"
            if session is not None and not self.lost and victim in res.tags:
                self.lost = True
                del res.tags[victim]
                res.line_errors[2] = 1
            return res

    f, previous = _field(40, 0.0, seed=1)
    f.__class__ = LossyLine
    r = count_stable(f, previous, InventoryPolicy())
    assert r.taken == set()
    assert "000000000000000000000005" in r.present
    assert (2, None) in f.commands  # the flipped, unreported tag got a round it could answer


def _noisy_counts(n_counts: int, policy: InventoryPolicy, seed: int) -> tuple[int, int, list[float]]:
    rng = random.Random(seed)
    f, _ = _field(200, 0.05, seed=seed)
    phantoms = missed = 0
    times: list[float] = []
    for _ in range(n_counts):
        previous = f.tags()
        gone = set(rng.sample(sorted(previous), 3))
        for e in gone:
            f.remove_tag(e)
        f.advance(QUIET)
        t0 = f.now
        r = count_stable(f, previous, policy)
        times.append(f.now - t0)
        phantoms += len(r.taken - gone)
        missed += len(gone - r.taken)
        for e in gone:  # put back before the next count
            f.add_tag(e, previous[e])
    return phantoms, missed, times


def test_no_phantom_removal_in_300_noisy_counts_with_sessions() -> None:
    phantoms, missed, times = _noisy_counts(300, InventoryPolicy(miss_rate=0.05, phantom_target=1e-5), seed=7)
    assert (phantoms, missed) == (0, 0)
    assert sorted(times)[150] < 1.6  # 200 tags, 300 reads/s, modelled time


def test_no_phantom_removal_in_300_noisy_counts_on_real_time_inventories() -> None:
    policy = InventoryPolicy(miss_rate=0.05, phantom_target=1e-5, session=None)
    assert _noisy_counts(300, policy, seed=8)[:2] == (0, 0)


def test_an_antenna_that_errors_gives_no_evidence_and_leaves_suspects_unconfirmed() -> None:
    class Broken(SimGen2Field):
        def inventory(self, rounds: int = 1, *, antennas: object = None, repeat: int = 1,
                      session: Session | None = None, target: Target = Target.A) -> InventoryResult:
            res = super().inventory(rounds, antennas=antennas, repeat=repeat,  # type: ignore[arg-type]
                                    session=session, target=target)
            res.antenna_errors[3] = "antenna_missing"
            for e in [e for e, s in res.tags.items() if s.antennas == {3}]:
                del res.tags[e]
            return res

    f, previous = _field(8, 0.0, seed=1)
    f.__class__ = Broken
    r = count_stable(f, previous, InventoryPolicy(max_rounds=6))
    assert r.taken == set()
    behind = {"000000000000000000000002", "000000000000000000000006"}  # antenna 3: never counted as a miss
    assert r.unconfirmed == behind
    assert behind <= set(r.present)
    assert r.rounds == 6
