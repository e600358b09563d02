"""The device event log: durable append, hash chain, acks, pruning."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from device.eventlog import EventLog, EventLogError
from device.wire import GENESIS_HASH


def test_append_assigns_monotonic_seq_and_chains_hashes(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d.db", device="HH01")
    a = log.append("consume", {"x": 1})
    b = log.append("consume", {"x": 2})
    assert (a.seq, b.seq) == (1, 2)
    assert a.prev == GENESIS_HASH and b.prev == a.hash
    assert a.hash_ok() and b.hash_ok()
    assert log.verify_chain() == []


def test_log_uses_wal_and_full_sync(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d.db", device="HH01")
    db = log._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_event_is_durable_when_append_returns(tmp_path: Path) -> None:
    # a child process appends and is killed with SIGKILL right after append returns
    code = (
        "import os, signal, sys\n"
        "from device.eventlog import EventLog\n"
        f"log = EventLog({str(tmp_path / 'd.db')!r}, device='HH01')\n"
        "for i in range(5): log.append('consume', {'i': i})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    log = EventLog(tmp_path / "d.db", device="HH01")
    assert log.last_seq == 5
    assert [e.body["i"] for e in log.unacked()] == [0, 1, 2, 3, 4]


def test_ack_is_cumulative_and_refuses_beyond_the_end(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d.db", device="HH01")
    for i in range(5):
        log.append("consume", {"i": i})
    assert log.mark_acked(3) == 3
    assert log.mark_acked(2) == 0  # stale ack moves nothing back
    assert [e.seq for e in log.unacked()] == [4, 5]
    assert log.backlog() == 2
    with pytest.raises(EventLogError):
        log.mark_acked(9)


def test_prune_keeps_unacknowledged_rows_and_the_sequence(tmp_path: Path) -> None:
    now = [1000.0]
    log = EventLog(tmp_path / "d.db", device="HH01", retention_s=10, clock=lambda: now[0])
    for i in range(4):
        log.append("consume", {"i": i})
    log.mark_acked(2)
    now[0] += 5
    assert log.prune() == 0  # within retention
    now[0] += 10
    assert log.prune() == 2
    assert [e.seq for e in log.events()] == [3, 4]
    assert log.append("consume", {"i": 9}).seq == 5  # never reuses a seq
    assert log.verify_chain() == []


def test_log_refuses_to_change_owner(tmp_path: Path) -> None:
    EventLog(tmp_path / "d.db", device="HH01").close()
    with pytest.raises(EventLogError):
        EventLog(tmp_path / "d.db", device="HH02")


def test_tampering_breaks_the_chain(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d.db", device="HH01")
    for i in range(3):
        log.append("consume", {"i": i})
    log.close()
    db = sqlite3.connect(tmp_path / "d.db")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE events SET body = '{\"i\":7}' WHERE seq = 2")
    db.execute("DROP TRIGGER events_no_update")
    db.execute("UPDATE events SET body = '{\"i\":7}' WHERE seq = 2")
    db.commit()
    db.execute("DELETE FROM events WHERE seq = 1")
    db.commit()
    log = EventLog(tmp_path / "d.db", device="HH01")
    breaks = log.verify_chain()
    assert [b.seq for b in breaks] == [2]
    assert log.integrity_check() == "ok"
