"""The compiled bridge and its pure-Python twin give identical results on valid and malformed input."""

from __future__ import annotations

import datetime as dt
import importlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.bridge import _twin
from gateway.bridge.types import (
    MAX_LOCAL_MS,
    MAX_SEQ,
    BridgeConfig,
    Catalog,
    CatalogItem,
    CompactBatch,
    ConfigError,
    CreditRequest,
)


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("gateway.bridge._cbridge")
    except ImportError:
        return None


cbridge = _compiled()
pytestmark = pytest.mark.skipif(
    cbridge is None, reason="compiled bridge not built (python setup.py build_ext --inplace); nothing to compare")


def gtin(first13: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(first13))
    return first13 + str((10 - total % 10) % 10)


GTINS = [gtin(f"069{i:010d}") for i in range(12)]
CATALOG = Catalog([
    CatalogItem(g, f"IT{i}", f"C{i}" if i % 5 else "", f"耗材|{i}^&~\\", "规格\r\n", "厂家", i * 1001,
                i % 5 != 0, i % 2 == 0)
    for i, g in enumerate(GTINS[:10])  # the last two GTINs are unknown to the catalog
])
CONFIGS = [
    BridgeConfig(sending_facility="SPD|1", receiving_facility="医院"),
    BridgeConfig(sending_facility="S", receiving_facility="H", utc_offset_minutes=-210, processing_id="T"),
]

CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
values = st.text(alphabet=CSET82, min_size=1, max_size=22)
serials = st.text(alphabet=CSET82, min_size=1, max_size=20)
yymmdd = st.builds(lambda y, m, d: f"{y:02d}{m:02d}{d:02d}", st.integers(0, 99), st.integers(0, 13),
                   st.integers(0, 32))
ts_ms = st.one_of(st.integers(0, 4_102_444_800_000), st.just(1_735_700_000_000), st.integers(-10**20, 10**20))


@st.composite
def element_udis(draw: st.DrawFn) -> str:
    """GS1 element strings and (AI) text, mostly valid, in any AI order, with optional symbology prefix."""
    parts = [("01", draw(st.sampled_from(GTINS)))]
    if draw(st.booleans()):
        parts.append(("17", draw(yymmdd)))
    if draw(st.booleans()):
        parts.append(("11", draw(yymmdd)))
    if draw(st.booleans()):
        parts.append(("10", draw(values)))
    if draw(st.booleans()):
        parts.append(("21", draw(values)))
    if draw(st.booleans()):
        parts.append((draw(st.sampled_from(["240", "241"])), draw(values)))
    if draw(st.booleans()):
        parts.append((draw(st.sampled_from(["30", "37"])), draw(st.text("0123456789", min_size=1, max_size=9))))
    if draw(st.booleans()):
        parts.append(("7003", draw(st.text("0123456789", min_size=10, max_size=10))))
    parts = draw(st.permutations(parts))
    if draw(st.integers(0, 3)) == 0:
        return "".join(f"({ai}){value}" for ai, value in parts)
    prefix = draw(st.sampled_from(["", "]d2", "]C1", "]Q3", "]e0", "]d2\x1d"]))
    text = prefix
    for ai, value in parts:
        text += ai + value + ("\x1d" if ai not in ("01", "11", "17", "7003") or draw(st.booleans()) else "")
    return text


def mutate(udi: str, data: st.DataObject) -> str:
    """Break a UDI: flip a check digit, drop separators, splice in garbage, truncate."""
    how = data.draw(st.integers(0, 4))
    if how == 0:
        return udi.replace("\x1d", "")
    if how == 1 and udi:
        at = data.draw(st.integers(0, len(udi) - 1))
        return udi[:at] + data.draw(st.text(max_size=3)) + udi[at + 1:]
    if how == 2:
        return udi[: data.draw(st.integers(0, len(udi)))]
    if how == 3:
        return udi.replace(GTINS[0][-1], str((int(GTINS[0][-1]) + 1) % 10), 1)
    return udi + data.draw(st.text(max_size=40))


texts = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "ZY|1^2&3~4\\5", "骨科\r\n", "x" * 300]))
udis = st.one_of(element_udis(), st.text(max_size=60), st.just(""), st.just("]d2"))
events = st.tuples(st.sampled_from(["CAB-01", "CAB-02", "柜-3", "", "D|1"]), st.integers(-2, 10**10 + 1), ts_ms,
                   texts, udis, texts, texts)
malformed = st.one_of(
    st.none(), st.integers(), st.tuples(st.text()), st.lists(st.text(), min_size=7, max_size=7),
    st.tuples(st.text(), st.text(), st.integers(), st.text(), st.text(), st.text(), st.text()),
    st.tuples(st.text(), st.booleans(), st.integers(), st.text(), st.text(), st.text(), st.text()),
    st.tuples(st.text(), st.integers(0, 10), st.floats(), st.text(), st.text(), st.text(), st.text()),
    st.tuples(st.just("C"), st.integers(0, 9), st.just(0), st.text(), st.just("\udcff"), st.text(), st.text()),
)


def run_both(batch: list[Any], consumed: set[str], config: BridgeConfig) -> tuple[CompactBatch, set[str]]:
    assert cbridge is not None
    pure_consumed = _twin.ConsumedSet(consumed)
    compiled_consumed = cbridge.ConsumedSet(consumed)
    pure = _twin.charge_compact(batch, CATALOG, pure_consumed, config)
    compiled = cbridge.charge_compact(batch, CATALOG, compiled_consumed, config)
    assert compiled.status == pure.status
    assert compiled.details == pure.details
    assert compiled.messages == pure.messages
    assert compiled.ends == pure.ends
    assert compiled.udi == pure.udi
    assert set(compiled_consumed) == set(pure_consumed)
    assert len(compiled_consumed) == len(pure_consumed)
    return pure, set(pure_consumed)


FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(batch=st.lists(events, max_size=12), config=st.sampled_from(CONFIGS),
       preconsumed=st.sets(st.builds(lambda g, s: f"{g}/{s}", st.sampled_from(GTINS), serials), max_size=3))
def test_generated_events_give_identical_results(batch: list[Any], config: BridgeConfig,
                                                 preconsumed: set[str]) -> None:
    run_both(batch, preconsumed, config)


@FAST
@given(udi=element_udis(), ts=st.integers(946_684_800_000, 4_102_444_800_000), config=st.sampled_from(CONFIGS))
def test_valid_udis_give_identical_charges(udi: str, ts: int, config: BridgeConfig) -> None:
    run_both([("CAB-01", 1, ts, "ZY1", udi, "N1", "心内科")], set(), config)


@FAST
@given(data=st.data(), udi=element_udis())
def test_broken_udis_give_identical_rejects(data: st.DataObject, udi: str) -> None:
    broken = mutate(udi, data)
    run_both([("CAB-01", 1, 1_735_700_000_000, "ZY1", broken, "N1", "D")], set(), CONFIGS[0])


@FAST
@given(batch=st.lists(st.one_of(malformed, events), max_size=8))
def test_malformed_events_give_identical_rejects(batch: list[Any]) -> None:
    run_both(batch, set(), CONFIGS[0])


@FAST
@given(field=st.text(min_size=200, max_size=2000), udi_tail=st.text(alphabet=CSET82, min_size=20, max_size=400))
def test_huge_fields_give_identical_results(field: str, udi_tail: str) -> None:
    udi = f"01{GTINS[1]}21{udi_tail}"
    run_both([("CAB-" + field, 1, 1_735_700_000_000, field, udi, field, field),
              ("CAB-01", 2, 1_735_700_000_000, field, f"(01){GTINS[1]}(10){udi_tail[:20]}", field, field)],
             set(), CONFIGS[0])


def test_duplicate_serials_across_a_batch_leave_identical_consumed_sets() -> None:
    udi = f"01{GTINS[2]}21SER1"
    batch = [("CAB-01", i, 1_735_700_000_000, "ZY1", udi, "N", "D") for i in range(5)]
    pure, consumed = run_both(batch, set(), CONFIGS[0])
    assert pure.status == bytes([0, 8, 8, 8, 8])
    assert consumed == {f"{GTINS[2]}/SER1"}


def test_consumed_must_be_the_implementations_own_set() -> None:
    assert cbridge is not None
    batch = [("CAB-01", 1, 1_735_700_000_000, "ZY1", f"01{GTINS[2]}21S1", "N", "D")]
    with pytest.raises(TypeError):
        cbridge.charge_compact(batch, CATALOG, set(), CONFIGS[0])
    with pytest.raises(TypeError):
        _twin.charge_compact(batch, CATALOG, set(), CONFIGS[0])  # type: ignore[arg-type]


# ---- time and integer boundaries: both implementations take the same events ---------------------------------

OFFSETS = [-840, -210, 0, 345, 480, 840]
INT64 = 2**63


def _utc_ms(*local: int, offset_minutes: int) -> int:
    """Unix ms of a local wall-clock time (year, month, day, hour, minute, second, ms) at the given offset."""
    when = dt.datetime(*local[:6], local[6] * 1000, tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes)))
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def boundary_timestamps(offset_minutes: int) -> list[int]:
    """Scan times at and around the ends of the local range (1970-01-01 .. 9999-12-31), the int64 limits,
    the old compiled pre-check at +-MAX_LOCAL_MS, and the small-int fast path's limits."""
    off = offset_minutes * 60_000
    return [
        -off - 1, -off, -off + 1, -1, 0, 1,
        MAX_LOCAL_MS - off - 1, MAX_LOCAL_MS - off, MAX_LOCAL_MS - off - 3_600_000,
        _utc_ms(9999, 12, 31, 20, 0, 0, 0, offset_minutes=offset_minutes),
        _utc_ms(9999, 12, 31, 23, 59, 59, 999, offset_minutes=offset_minutes),
        MAX_LOCAL_MS - 1, MAX_LOCAL_MS, MAX_LOCAL_MS + 1, -MAX_LOCAL_MS - 1, -MAX_LOCAL_MS,
        2 * MAX_LOCAL_MS, 2 * MAX_LOCAL_MS + 1, -2 * MAX_LOCAL_MS - 1,
        2**30 - 1, 2**30, 2**60 - 1, 2**60, -(2**60), INT64 - 1, INT64, -INT64, -INT64 - 1, 2**64, -(2**64),
        _utc_ms(2000, 2, 29, 12, 0, 0, 0, offset_minutes=offset_minutes),
        _utc_ms(2016, 12, 31, 23, 59, 59, 999, offset_minutes=offset_minutes),  # a leap second followed
        _utc_ms(2049, 6, 1, 0, 0, 0, 0, offset_minutes=offset_minutes),
        _utc_ms(2051, 6, 1, 0, 0, 0, 0, offset_minutes=offset_minutes),
        _utc_ms(9950, 1, 1, 0, 0, 0, 0, offset_minutes=offset_minutes),
    ]


# expiry dates whose century follows the scan's year: 00 is 10000 in 9999 (refused), 2100 in 2051 (not a
# leap year, so 000229 is no date), 2000 in 2049 and 1970
BOUNDARY_UDIS = [f"01{GTINS[2]}17{exp}21S{i}" for i, exp in
                 enumerate(["991231", "991200", "000000", "000229", "691231", "700101", "491231", "500101"])]


@pytest.mark.parametrize("offset", OFFSETS)
def test_boundary_timestamps_give_identical_results(offset: int) -> None:
    config = BridgeConfig(sending_facility="S", receiving_facility="H", utc_offset_minutes=offset)
    batch = [("CAB-01", i, ts, "ZY1", udi, "N1", "D")
             for i, (ts, udi) in enumerate((ts, udi) for ts in boundary_timestamps(offset) for udi in BOUNDARY_UDIS)]
    run_both(batch, set(), config)


def test_last_hours_of_year_9999_west_of_utc_are_charged_by_both() -> None:
    # 9999-12-31 20:00 at UTC-14:00 is 10000-01-01 10:00 UTC: the compiled bridge used to refuse it (it
    # bounded the UTC time as well as the local one) where the twin charged it.
    config = BridgeConfig(utc_offset_minutes=-840)
    ts = _utc_ms(9999, 12, 31, 20, 0, 0, 0, offset_minutes=-840)
    assert ts > MAX_LOCAL_MS
    pure, _ = run_both([("CAB-01", 1, ts, "ZY1", f"01{GTINS[2]}21S1", "N1", "D")], set(), config)
    assert pure.status == b"\x00"
    assert b"|99991231200000-1400|" in pure.messages


@pytest.mark.parametrize("seq", [-1, 0, MAX_SEQ, MAX_SEQ + 1, 2**30, 2**60 - 1, 2**60, -(2**60), INT64 - 1, INT64,
                                 -INT64, -INT64 - 1, 2**64, True, False])
def test_boundary_sequence_numbers_give_identical_results(seq: Any) -> None:
    run_both([("CAB-01", seq, 1_735_700_000_000, "ZY1", f"01{GTINS[2]}21S1", "N1", "D")], set(), CONFIGS[0])


@pytest.mark.parametrize("offset", OFFSETS)
def test_boundary_timestamps_give_identical_credits(offset: int) -> None:
    assert cbridge is not None
    config = BridgeConfig(utc_offset_minutes=offset)
    credits = [CreditRequest("CAB-02", i % (MAX_SEQ + 1), ts, "N1", "D", "CF4B9C1F5E0000000007", "ZY1", GTINS[2],
                             "L1", "S1", "9999-12-31", "IT", "C1", "n", "s", "m", 100)
               for i, ts in enumerate(boundary_timestamps(offset))]
    pure = _twin.credit_compact(credits, config)
    compiled = cbridge.credit_compact(credits, config)
    assert (compiled.status, compiled.details, compiled.messages, compiled.ends, compiled.udi) == (
        pure.status, pure.details, pure.messages, pure.ends, pure.udi)


class LyingTuple(tuple[Any, ...]):
    """A tuple subclass whose Python-level view differs from what it stores."""

    def __iter__(self) -> Any:
        return iter(("CAB-09", 9, 0, "ZY9", "x", "y", "z"))

    def __getitem__(self, i: Any) -> Any:
        return "lie"

    def __len__(self) -> int:
        return 3


class FakeTuple:
    """Not a tuple, but isinstance(FakeTuple(), tuple) is True."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return tuple

    def __len__(self) -> int:
        return 7

    def __iter__(self) -> Any:
        return iter(("CAB-09", 9, 1_735_700_000_000, "ZY9", f"01{GTINS[2]}21S9", "N", "D"))


def test_tuple_subclasses_are_read_by_what_they_store_and_look_alikes_are_refused() -> None:
    stored = ("CAB-01", 1, 1_735_700_000_000, "ZY1", f"01{GTINS[2]}21S1", "N", "D")
    pure, _ = run_both([LyingTuple(stored), FakeTuple(), LyingTuple(stored[:6])], set(), CONFIGS[0])
    assert pure.status == bytes([0, 1, 1])
    assert b"CAB-01" in pure.messages


def test_a_tampered_utc_offset_is_refused_by_both() -> None:
    assert cbridge is not None
    for minutes in (841, -841, 10**10, 10**20, True):
        config = BridgeConfig()
        object.__setattr__(config, "utc_offset_minutes", minutes)
        batch = [("CAB-01", 1, -minutes * 60_000, "ZY1", f"01{GTINS[2]}21S1", "N", "D")]
        for module in (_twin, cbridge):
            with pytest.raises(ConfigError):
                module.charge_compact(batch, CATALOG, module.ConsumedSet(), config)
            with pytest.raises(ConfigError):
                module.credit_compact([], config)


class KeyLike(str):
    """A str subclass equal to an item key."""


def test_consumed_sets_answer_alike_for_values_that_are_no_item_key() -> None:
    assert cbridge is not None
    key = f"{GTINS[2]}/S1"
    for module in (_twin, cbridge):
        consumed = module.ConsumedSet([key])
        for value in ([1], {}, 5, None, KeyLike(key), key + "\x00", key.encode()):
            assert value not in consumed
            consumed.discard(value)
        assert key in consumed and len(consumed) == 1
