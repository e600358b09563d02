"""The one back-off rule (spd_common.backoff) that the scanners, the RFID reader and the HIS sender share."""

from __future__ import annotations

import itertools
import random

import pytest

from spd_common.backoff import backoff_delay, backoff_delays


def test_delays_double_from_the_first_up_to_the_ceiling() -> None:
    assert list(itertools.islice(backoff_delays(0.1, 1.0), 6)) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.mark.parametrize("bad", [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_bounds_are_refused_at_the_call(bad: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="0 < first <= ceiling"):
        backoff_delays(*bad)


def test_jitter_scales_into_half_to_whole_and_doubling_stops_after_sixteen_steps() -> None:
    rng = random.Random(7)
    for attempt in range(20):
        full = backoff_delay(attempt, first_s=0.5, ceiling_s=30.0)
        assert full == min(30.0, 0.5 * 2 ** min(attempt, 16))
        assert full / 2 <= backoff_delay(attempt, first_s=0.5, ceiling_s=30.0, rng=rng) < full or full == 0
    assert backoff_delay(40, first_s=0.001, ceiling_s=1e9) == 0.001 * 2**16
    assert backoff_delay(3, first_s=0.0, ceiling_s=0.0, rng=rng) == 0.0  # tests run the sender without waits
