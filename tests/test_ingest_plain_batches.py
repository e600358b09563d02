"""A plain batch — new events and resends whose links are all known — is written in one ``executemany``;
whatever the batches, the store ends as it ends when every event is written one by one.

:func:`gateway.data.events._plain_rows` plans such a batch from the links read before it and hands anything
else (a conflict, a chain break, scattered seqs) to the event-by-event path. Here random sequences of
batches — from a device's history and from a second history under the same device id, in any order, with
gaps, resends, repeats and mixtures — go into two stores, one with the plan and one without; every batch's
result and both stores' events, chain breaks, quarantine and acks must be the same.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.data.events as events_module
from device.eventlog import EventLog
from gateway.store import GatewayStore
from spd_common.wire import Batch, Event, decode_batch, encode_batch

DEVICE = "HH01"


def _history(folder: Path, n: int, tag: str) -> list[Event]:
    log = EventLog(folder / f"{tag}.db", device=DEVICE)
    return [log.append("consume", {"admission": "ZY1", "udi": f"{tag}{i}", "operator": "N", "dept": "D"})
            for i in range(n)]


@pytest.fixture(scope="module")
def histories() -> Iterator[tuple[list[Event], list[Event]]]:
    with tempfile.TemporaryDirectory() as d:
        yield _history(Path(d), 14, "a"), _history(Path(d), 14, "b")  # b: the same seqs, other contents


def _batch(events: list[Event]) -> Batch:
    return decode_batch(f"spd/v1/H1/{DEVICE}/events", encode_batch("H1", DEVICE, events))


def _outcome(store: GatewayStore, batches: list[Batch]) -> tuple[Any, ...]:
    results = []
    for batch in batches:
        r = store.ingest(batch)
        results.append((r.new, r.duplicates, r.quarantined, r.conflicts, r.contiguous, r.unidentified,
                        [(x.seq, x.reason) for x in r.rejected], r.chain_breaks))
    q = store._engine.query
    return (results,
            q("SELECT device, seq, hash, prev, body FROM events ORDER BY device, seq"),
            q("SELECT device, seq, detail FROM chain_breaks ORDER BY device, seq, detail"),
            q("SELECT device, seq, reason FROM quarantine ORDER BY device, seq"),
            q("SELECT device, contiguous_seq FROM devices ORDER BY device"))


# a batch: seqs (1-based) drawn from one history or the other, in any order, repeats allowed
_picks = st.lists(st.tuples(st.booleans(), st.integers(1, 14)), min_size=1, max_size=8)
_stretch = st.tuples(st.integers(1, 14), st.integers(1, 6)).map(  # a device's next few events, in order
    lambda t: [(True, s) for s in range(t[0], min(15, t[0] + t[1]))])
_runs = st.lists(st.one_of(_picks, _stretch), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=_runs)
def test_planned_batches_end_as_the_event_by_event_path_ends(
        histories: tuple[list[Event], list[Event]], runs: list[list[tuple[bool, int]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = histories
    batches = [[(a if first else b)[seq - 1] for first, seq in run] for run in runs]
    with tempfile.TemporaryDirectory() as d:
        planned = GatewayStore(Path(d) / "planned.db")
        one_by_one = GatewayStore(Path(d) / "one_by_one.db")
        try:
            want_planned = _outcome(planned, [_batch(evs) for evs in batches])
            with monkeypatch.context() as m:
                m.setattr(events_module, "_plain_rows", lambda *args: None)
                want_one_by_one = _outcome(one_by_one, [_batch(evs) for evs in batches])
        finally:
            planned.close()
            one_by_one.close()
    assert want_planned == want_one_by_one


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each plain batch planned (0: left to the event-by-event path)."""
    planned: list[int] = []
    real: Callable[..., Any] = events_module._plain_rows

    def spy(*args: Any) -> Any:
        rows = real(*args)
        planned.append(len(rows) if rows else 0)
        return rows

    monkeypatch.setattr(events_module, "_plain_rows", spy)
    return planned


def test_the_usual_batches_are_planned_and_a_conflict_is_not(
        histories: tuple[list[Event], list[Event]], open_store: Callable[[], GatewayStore],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = histories
    planned = _counting(monkeypatch)
    store = open_store()
    assert store.ingest(_batch(a[:5])).new == 5  # new
    assert store.ingest(_batch(a[3:9])).new == 4  # two resent, four new
    r = store.ingest(_batch([a[9], b[10]]))  # b's seq 11 does not follow a's seq 10: a chain break
    assert (r.new, r.contiguous) == (2, 11)
    assert r.chain_breaks
    assert planned == [5, 4, 0]  # on SQLite and on PostgreSQL (where the executemany is one pipeline)
