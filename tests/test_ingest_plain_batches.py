"""A plain batch — new events and resends whose links are all known — is written in one multi-row insert, and
a group of them (of one batch or several per device) after one read of all their links; whatever the
batches, the store ends as it ends when every event is written one by one.

:func:`gateway.data.events._plain_rows` plans such a batch from the links read before it and hands anything
else (a conflict, a chain break, scattered seqs) to the event-by-event path; ``EventStore._plain_group``
does it for a whole group, or leaves every batch of it to that path. Here random sequences of batches and
groups — from devices' histories and from second histories under the same device ids, in any order, with
gaps, resends, repeats and mixtures — go into two stores, one with the plans and one without; every
batch's result and both stores' events, chain breaks, quarantine and acks must be the same.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import gateway.data.events as events_module
from device.eventlog import EventLog
from gateway.store import GatewayStore
from spd_common.wire import Batch, Event, decode_batch, encode_batch

DEVICE = "HH01"
DEVICES = ("HH01", "HH02", "HH03")
Histories = dict[str, tuple[list[Event], list[Event]]]


def _history(folder: Path, device: str, n: int, tag: str) -> list[Event]:
    log = EventLog(folder / f"{device}-{tag}.db", device=device)
    return [log.append("consume", {"admission": "ZY1", "udi": f"{device}{tag}{i}", "operator": "N", "dept": "D"})
            for i in range(n)]


@pytest.fixture(scope="module")
def all_histories() -> Iterator[Histories]:
    """Per device, its history and a second one under its id (the same seqs, other contents)."""
    with tempfile.TemporaryDirectory() as d:
        yield {dev: (_history(Path(d), dev, 14, "a"), _history(Path(d), dev, 14, "b")) for dev in DEVICES}


@pytest.fixture(scope="module")
def histories(all_histories: Histories) -> tuple[list[Event], list[Event]]:
    return all_histories[DEVICE]


def _batch(events: list[Event]) -> Batch:
    device = events[0].device
    return decode_batch(f"spd/v1/H1/{device}/events", encode_batch("H1", device, events))


def _outcome(store: GatewayStore, groups: list[list[Batch]]) -> tuple[Any, ...]:
    results = []
    for group in groups:
        for r in store.ingest_group(group):
            assert not isinstance(r, Exception), r
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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
            want_planned = _outcome(planned, [[_batch(evs)] for evs in batches])
            with monkeypatch.context() as m:
                m.setattr(events_module, "_plain_rows", lambda *args: None)
                want_one_by_one = _outcome(one_by_one, [[_batch(evs)] for evs in batches])
        finally:
            planned.close()
            one_by_one.close()
    assert want_planned == want_one_by_one


# a group: one batch per device, or a few batches of a device or several (planned on one set of links each)
_group = st.one_of(
    st.permutations(DEVICES).flatmap(lambda devs: st.tuples(*(
        st.tuples(st.just(dev), st.one_of(_stretch, _stretch, _picks)) for dev in devs))).map(list),
    st.lists(st.tuples(st.sampled_from(DEVICES), st.one_of(_picks, _stretch)), min_size=1, max_size=4),
)
_groups = st.lists(_group, min_size=1, max_size=6)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=_groups)
@example(groups=[[("HH01", [(False, 6)])], [("HH01", [(True, 4), (True, 5)]), ("HH02", [(True, 1)])]])  # successor
@example(groups=[[("HH01", [(False, 3)])], [("HH01", [(True, 4)]), ("HH02", [(True, 1)])]])  # predecessor
@example(groups=[[("HH01", [(True, 1)]), ("HH02", [(True, 1)])], [("HH01", [(False, 1)]), ("HH02", [(True, 1)])]])
def test_planned_groups_end_as_the_event_by_event_path_ends(
        all_histories: Histories, groups: list[list[tuple[str, list[tuple[bool, int]]]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    batches = [[_batch([all_histories[dev][0 if first else 1][seq - 1] for first, seq in run]) for dev, run in group]
               for group in groups]
    with tempfile.TemporaryDirectory() as d:
        planned = GatewayStore(Path(d) / "planned.db")
        one_by_one = GatewayStore(Path(d) / "one_by_one.db")
        try:
            want_planned = _outcome(planned, batches)
            with monkeypatch.context() as m:
                m.setattr(events_module, "_plain_rows", lambda *args: None)
                want_one_by_one = _outcome(one_by_one, batches)
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


def test_a_group_of_plain_batches_is_written_at_once_and_one_conflict_sends_it_batch_by_batch(
        all_histories: Histories, open_store: Callable[[], GatewayStore], monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store()
    groups: list[int] = []
    real = store.events._plain_group

    def spy(*args: Any) -> Any:
        out = real(*args)
        groups.append(-1 if out is None else sum(r.new for r in out))
        return out

    monkeypatch.setattr(store.events, "_plain_group", spy)
    a = {dev: h[0] for dev, h in all_histories.items()}
    b = {dev: h[1] for dev, h in all_histories.items()}
    first = store.ingest_group([_batch(a[dev][:3]) for dev in DEVICES])
    assert [(r.new, r.contiguous) for r in first] == [(3, 3)] * 3  # type: ignore[union-attr]
    second = store.ingest_group([_batch(a["HH01"][2:6]), _batch(b["HH02"][3:4]), _batch(a["HH03"][3:5])])
    assert [(r.new, r.duplicates, r.contiguous) for r in second] == [  # type: ignore[union-attr]
        (3, 1, 6), (1, 0, 4), (2, 0, 5)]
    assert second[1].chain_breaks  # type: ignore[union-attr]
    assert groups == [9, -1]  # the first group at once; the second has a chain break, so batch by batch
    doc = json.loads(encode_batch("H1", "HH02", a["HH02"][6:8]))
    doc["events"][0]["body"]["udi"] = "altered"  # its hash no longer matches: refused, kept in quarantine
    refused = decode_batch("spd/v1/H1/HH02/events", json.dumps(doc).encode())
    third = store.ingest_group([_batch(a["HH01"][6:8]), refused])
    assert [(r.new, r.quarantined) for r in third] == [(2, 0), (1, 1)]  # type: ignore[union-attr]
    assert groups == [9, -1, -1]  # a refused event: batch by batch
    # two batches of one device (as a backlog is sent, a window of them) are planned together, in order
    fourth = store.ingest_group([_batch(a["HH01"][8:10]), _batch(a["HH03"][5:7]), _batch(a["HH01"][10:12])])
    assert [(r.new, r.contiguous) for r in fourth] == [(2, 12), (2, 7), (2, 12)]  # type: ignore[union-attr]
    fifth = store.ingest_group([_batch(a["HH01"][13:14]), _batch(a["HH01"][11:13])])  # the later batch first
    assert [(r.new, r.duplicates, r.contiguous) for r in fifth] == [  # type: ignore[union-attr]
        (1, 0, 14), (1, 1, 14)]
    assert groups == [9, -1, -1, 6, 2]
    assert not store._engine.query("SELECT * FROM chain_breaks WHERE device = 'HH01'")


def test_a_group_acks_past_the_seqs_stored_ahead_of_it_window_after_window(
        all_histories: Histories, open_store: Callable[[], GatewayStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """The ack's advance reads the next seqs of every device of a group in one statement, a window of
    ADVANCE_READ seqs each; a device whose window is all there (stored or quarantined) reads on alone."""
    monkeypatch.setattr(events_module, "ADVANCE_READ", 3)
    store = open_store()
    a = {dev: h[0] for dev, h in all_histories.items()}
    assert store.ingest(_batch(a["HH01"][1:4])).contiguous == 0  # seqs 2-4 ahead of the missing 1
    doc = json.loads(encode_batch("H1", "HH01", a["HH01"][4:5]))
    doc["events"][0]["body"]["udi"] = "altered"  # seq 5 refused: quarantined, and the ack passes it
    assert store.ingest(decode_batch("spd/v1/H1/HH01/events", json.dumps(doc).encode())).quarantined == 1
    assert store.ingest(_batch(a["HH01"][5:9])).contiguous == 0  # 6-9
    assert store.ingest(_batch(a["HH02"][2:5])).contiguous == 0  # HH02: 3-5, its 2 still missing
    group = store.ingest_group([_batch(a["HH01"][0:1]), _batch(a["HH02"][0:1]), _batch(a["HH03"][0:2])])
    assert [r.contiguous for r in group] == [9, 1, 2]  # type: ignore[union-attr]
    q = store._engine.query
    assert q("SELECT device, contiguous_seq FROM devices ORDER BY device") == [("HH01", 9), ("HH02", 1), ("HH03", 2)]
