"""The SQLite store's checkpoints outside the writers' turns (:mod:`gateway.wal_checkpoint`).

A passive pass copies the log while writers go on and never waits for their turn; once the log is large and
little is left, one pass takes the writers' turn (their ``flock``) to copy the rest, and the next writer starts
the log again from its beginning. Under steady writes the file stays bounded and nothing written is lost.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.app import Gateway, GatewayConfig
from gateway.data.engine import BACKSTOP_PAGES, CACHE_KIB, SqliteEngine
from gateway.wal_checkpoint import MIN_LOG_PAGES, WalCheckpointer

PAD = b"x" * 3000  # about one page a row


def _engine(path: Path) -> SqliteEngine:
    engine = SqliteEngine(path, synchronous="NORMAL")
    with engine.transaction() as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)")
    return engine


def _write(engine: SqliteEngine, rows: int) -> None:
    with engine.transaction() as db:
        db.executemany("INSERT INTO t (pad) VALUES (?)", [(PAD,)] * rows)


def test_the_gateways_connections_checkpoint_only_as_a_backstop_and_cache_a_batch(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "gw.db")
    assert engine.query("PRAGMA wal_autocheckpoint") == [(BACKSTOP_PAGES,)]
    assert engine.query("PRAGMA cache_size") == [(-CACHE_KIB,)]
    assert BACKSTOP_PAGES > MIN_LOG_PAGES  # the checkpointer finishes the log before a writer would
    engine.close()


def test_a_large_copied_log_is_finished_in_a_turn_and_the_next_writer_starts_it_again(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "gw.db")
    ckpt = WalCheckpointer(tmp_path / "gw.db", min_log=50, finish_below=10)
    try:
        for _ in range(10):
            _write(engine, 10)
        step = ckpt.run_once()
        assert step.log_pages >= 100 and step.finished and step.copied_pages == step.log_pages
        assert ckpt.finishes == 1
        _write(engine, 1)  # begins on a log copied whole: writes it again from the start
        again = ckpt.run_once()
        assert again.log_pages < 10 and not again.finished  # small: copied, not finished
        assert engine.query("SELECT COUNT(*) FROM t") == [(101,)]
    finally:
        ckpt.stop()
        engine.close()


def test_a_small_log_is_copied_without_waiting_for_the_writers_turn(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "gw.db")
    _write(engine, 20)
    ckpt = WalCheckpointer(tmp_path / "gw.db", min_log=10_000)
    held = os.open(f"{tmp_path / 'gw.db'}-writers", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # a writer in the middle of its turn
    try:
        started = time.monotonic()
        step = ckpt.run_once()
        assert time.monotonic() - started < 2.0
        assert not step.finished and step.copied_pages == step.log_pages > 0
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
        ckpt.stop()
        engine.close()


def test_the_finish_waits_for_the_writer_in_its_turn(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "gw.db")
    _write(engine, 100)
    ckpt = WalCheckpointer(tmp_path / "gw.db", min_log=50, finish_below=1_000)
    held = os.open(f"{tmp_path / 'gw.db'}-writers", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    steps: list[object] = []
    thread = threading.Thread(target=lambda: steps.append(ckpt.run_once()))
    try:
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not steps  # waits for the turn
        fcntl.flock(held, fcntl.LOCK_UN)
        thread.join(5.0)
        assert not thread.is_alive() and ckpt.finishes == 1
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
        thread.join(5.0)
        ckpt.stop()
        engine.close()


def test_under_steady_writers_the_log_stays_bounded_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    _engine(path).close()
    stop = threading.Event()
    written = [0, 0]

    def writer(k: int) -> None:
        engine = _engine(path)  # a connection and a writers' lock descriptor of its own, as a part has
        while not stop.is_set():
            _write(engine, 8)
            written[k] += 8
            # as the parts' writers do between their transactions (the next group, the next pass): a thread
            # that takes the flock again the instant it lets go can hold the checkpointer off indefinitely
            time.sleep(0.001)
        engine.close()

    ckpt = WalCheckpointer(path, interval_s=0.01, min_log=400, finish_below=200).start()
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    largest_log = 0
    while sum(written) < 12_000 and time.monotonic() < deadline:  # 30 times the log the checkpointer finishes
        time.sleep(0.05)
        largest_log = max(largest_log, os.path.getsize(f"{path}-wal"))
    stop.set()
    for t in threads:
        t.join(10)
    ckpt.stop()
    assert ckpt.finishes >= 3 and sum(written) >= 12_000
    pages_written = sum(written)  # at least one page a row
    # kept whole, the log would hold every page written; started again, it holds a few finishes' worth
    assert largest_log < pages_written * 4096 / 2
    check = SqliteEngine(path)
    assert check.integrity_check() == "ok"
    assert check.query("SELECT COUNT(*) FROM t") == [(pages_written,)]
    check.close()


@pytest.mark.parametrize(("part", "runs"), [("all", True), ("ingest", True), ("books", False), ("his", False)])
def test_the_part_that_writes_the_events_runs_the_checkpointer(tmp_path: Path, part: str, runs: bool) -> None:
    gateway = Gateway(GatewayConfig(db_path=tmp_path / "gw.db", part=part))  # type: ignore[arg-type]
    try:
        assert (gateway.checkpointer is not None) is runs
    finally:
        gateway.stop()


def test_no_checkpointer_on_postgresql(pg_store_url: str) -> None:
    gateway = Gateway(GatewayConfig(db_path=pg_store_url, part="ingest"))
    try:
        assert gateway.checkpointer is None
    finally:
        gateway.stop()
