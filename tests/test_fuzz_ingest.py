"""A short run of the end-to-end ingest fuzzer (hw_sim/fuzz_ingest.py), and proof that its checks bite.

The long run (1,000,000 batches) is ``python -m hw_sim.fuzz ingest --engine random
--inputs 1000000 --seed 1``; its figures are in docs/reliability.md.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.data.events import EventStore, IngestResult
from hw_sim import fuzz
from hw_sim.fuzz_ingest import ByteDraw, FuzzCheckFailed, IngestFuzzer


@pytest.fixture
def fuzzer(tmp_path: Path) -> Iterator[IngestFuzzer]:
    f = IngestFuzzer(tmp_path)
    yield f
    f.close()


def _run(f: IngestFuzzer, batches: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(batches):
        f.one_batch(ByteDraw(rng.randbytes(rng.randint(0, 300))))


def test_a_short_run_keeps_every_promise_and_mixes_valid_and_hostile_input(fuzzer: IngestFuzzer) -> None:
    _run(fuzzer, 3000, seed=1)
    assert fuzzer.batches == 3000
    assert fuzzer.events_valid > 5000 and fuzzer.events_hostile > 1000 and fuzzer.envelopes_hostile > 20
    assert fuzzer.store.integrity_check() == "ok"


@settings(max_examples=60, deadline=dt.timedelta(seconds=10),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(inputs=st.lists(st.binary(max_size=400), min_size=1, max_size=25))
def test_hypothesis_chosen_batch_sequences_keep_every_promise(
    tmp_path_factory: pytest.TempPathFactory, inputs: list[bytes],
) -> None:
    f = IngestFuzzer(tmp_path_factory.mktemp("fz"))
    try:
        for data in inputs:
            f.one_batch(ByteDraw(data))
    finally:
        f.close()


def test_the_fuzz_command_runs_the_ingest_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["ingest", "--engine", "random", "--inputs", "400", "--crashers", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ingest: 400 inputs" in out and "0 new crashers" in out and "valid and" in out
    assert not list(tmp_path.rglob("crash-*"))


# ---------------------------------------------------------------- the checks find broken stores


def test_an_ack_beyond_what_is_stored_is_caught(fuzzer: IngestFuzzer, monkeypatch: pytest.MonkeyPatch) -> None:
    real = EventStore._advance_all

    def over(self: EventStore, db: sqlite3.Connection, devices: list[str]) -> dict[str, int]:
        return {device: seq + 1 for device, seq in real(self, db, devices).items()}

    monkeypatch.setattr(EventStore, "_advance_all", over)
    with pytest.raises(FuzzCheckFailed, match=r"ack|committed"):
        _run(fuzzer, 200, seed=2)


def test_a_hostile_event_dropped_without_quarantine_is_caught(fuzzer: IngestFuzzer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = EventStore._quarantine

    def drop_bad_hash(self: EventStore, db: sqlite3.Connection, device: str, bad: object, at: float,
                      res: IngestResult) -> None:
        if getattr(bad, "reason", "") != "bad_hash":
            real(self, db, device, bad, at, res)  # type: ignore[arg-type]

    monkeypatch.setattr(EventStore, "_quarantine", drop_bad_hash)
    with pytest.raises(FuzzCheckFailed):
        _run(fuzzer, 500, seed=3)


def test_a_batch_failing_whole_on_one_event_is_caught(fuzzer: IngestFuzzer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported bug put back: an unstorable event raises out of the store and the batch is not acked."""
    real = EventStore._quarantine

    def overflow(self: EventStore, db: sqlite3.Connection, device: str, bad: object, at: float,
                 res: IngestResult) -> None:
        if getattr(bad, "seq", 0) is None:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        real(self, db, device, bad, at, res)  # type: ignore[arg-type]

    monkeypatch.setattr(EventStore, "_quarantine", overflow)
    with pytest.raises(OverflowError):
        _run(fuzzer, 500, seed=4)
