"""The writers' turn taken before the group (:meth:`gateway.data.engine.SqliteEngine.writers_turn`).

The ingest writer waits for the SQLite file's writers' turn once a first message is queued, then takes
everything queued by then as its group: under a busy file the groups grow instead of the transactions
multiplying. The turn ends with the transaction, so the acks sent after the commit hold nobody up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.data.engine import SqliteEngine
from gateway.group_commit import GroupWriter


def _engines(tmp_path: Path) -> tuple[SqliteEngine, SqliteEngine]:
    a = SqliteEngine(tmp_path / "gw.db", synchronous="NORMAL")
    with a.transaction() as db:
        db.execute("CREATE TABLE t (who TEXT NOT NULL)")
    return a, SqliteEngine(tmp_path / "gw.db", synchronous="NORMAL")  # b: another part's connection


def _other_writer(b: SqliteEngine, done: threading.Event) -> threading.Thread:
    def write() -> None:
        with b.transaction() as db:
            db.execute("INSERT INTO t VALUES ('b')")
        done.set()
    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_the_turn_keeps_other_writers_out_until_its_transaction_ends(tmp_path: Path) -> None:
    a, b = _engines(tmp_path)
    done = threading.Event()
    with a.writers_turn():
        thread = _other_writer(b, done)
        assert not done.wait(0.3)  # waits for the turn a holds, before a knows what it will write
        with a.transaction() as db:
            db.execute("INSERT INTO t VALUES ('a')")
        assert done.wait(5.0)  # given back with the commit, while a is still in the block (its acks)
    thread.join(5.0)
    assert a.query("SELECT who FROM t ORDER BY rowid") == [("a",), ("b",)]
    with a.transaction() as db:  # the next transaction takes the turn as usual
        db.execute("INSERT INTO t VALUES ('a')")
    a.close()
    b.close()


def test_a_turn_without_a_transaction_is_given_back_at_the_end_of_the_block(tmp_path: Path) -> None:
    a, b = _engines(tmp_path)
    done = threading.Event()
    with a.writers_turn():
        thread = _other_writer(b, done)
        assert not done.wait(0.3)
    assert done.wait(5.0)
    thread.join(5.0)
    a.close()
    b.close()


def test_a_failed_transaction_gives_the_turn_back(tmp_path: Path) -> None:
    a, b = _engines(tmp_path)
    done = threading.Event()
    with a.writers_turn():
        thread = _other_writer(b, done)
        with pytest.raises(ValueError), a.transaction() as db:
            db.execute("INSERT INTO t VALUES ('a')")
            raise ValueError("a bug")
        assert done.wait(5.0)
    thread.join(5.0)
    assert a.query("SELECT who FROM t") == [("b",)]  # a's row rolled back
    a.close()
    b.close()


def test_what_is_queued_while_the_writer_waits_for_its_turn_joins_its_group() -> None:
    turn_free = threading.Event()

    @contextmanager
    def turn() -> Iterator[None]:
        assert turn_free.wait(5.0)
        yield

    groups: list[list[int]] = []
    writer: GroupWriter[int] = GroupWriter(groups.append, turn=turn)
    writer.put(1)
    thread = threading.Thread(target=writer.run_once, args=(1.0,))
    thread.start()
    time.sleep(0.1)  # the writer has the first message and waits for the turn
    writer.put(2)
    writer.put(3)
    turn_free.set()
    thread.join(5.0)
    assert groups == [[1, 2, 3]]
    assert writer.run_once(0.0) == 0


@pytest.mark.parametrize(("part", "in_turn"), [("ingest", True), ("all", False)])
def test_the_ingest_part_takes_its_groups_in_the_turn(tmp_path: Path, part: str, in_turn: bool) -> None:
    from gateway.app import Gateway, GatewayConfig

    gateway = Gateway(GatewayConfig(db_path=tmp_path / "gw.db", part=part))  # type: ignore[arg-type]
    try:
        assert gateway.ingest is not None
        assert (gateway.ingest.writer._turn is not None) is in_turn  # one process: its loops share a connection
    finally:
        gateway.stop()
