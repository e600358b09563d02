"""The device event log: durable append, hash chain, acks, pruning."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from device.eventlog import EventLog, EventLogError
from spd_common.wire import GENESIS_HASH


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


def test_disk_full_refuses_the_scan_records_nothing_and_recovers(tmp_path: Path) -> None:
    from device.eventlog import LogWriteFailed
    from device.handheld import Handheld, ScanVerdict

    log = EventLog(tmp_path / "d.db", device="HH01")
    hh = Handheld(log, operator="N1", dept="OR")
    udi = "]d20106954321000017172712311022A\x1d21S1"
    assert hh.scan_pair("ZY2026000001", udi).accepted
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]
    log._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
    refused = 0
    for i in range(200):
        out = hh.scan_pair("ZY2026000001", udi.replace("S1", f"S{i + 2}"))
        if out.verdict is ScanVerdict.REFUSED:
            assert out.event is None and out.reason == "log_unavailable"
            refused += 1
    assert refused > 0  # the nurse was told to scan again; nothing half-written
    with pytest.raises(LogWriteFailed):
        log.append("consume", {"x": "y" * 100_000})
    assert log.integrity_check() == "ok"
    assert log.verify_chain() == []
    log._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
    out = hh.scan_pair("ZY2026000001", udi.replace("S1", "S999"))
    assert out.accepted and out.event is not None and out.event.seq == log.last_seq
    assert [e.seq for e in log.events()] == list(range(1, log.last_seq + 1))


def test_a_failing_log_writes_one_error_not_one_per_retry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cabinet retries every second while the disk is full: the journal gets one ERROR, then the recovery."""
    from device.eventlog import LogWriteFailed

    log = EventLog(tmp_path / "d.db", device="HH01")
    log.append("consume", {"i": 0})
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]
    log._db.execute(f"PRAGMA max_page_count = {pages}")
    caplog.set_level(logging.INFO, logger="device.eventlog")
    for _ in range(50):
        with pytest.raises(LogWriteFailed):
            log.append("consume", {"x": "y" * 100_000})
    assert log.failing == 50
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "append failed" in errors[0].getMessage()
    log._db.execute("PRAGMA max_page_count = 1073741823")
    log.append("consume", {"i": 1})
    assert log.failing == 0
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(recovered) == 1 and "writable again after 50 failed appends" in recovered[0]


def test_a_long_failure_is_reminded_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import device.eventlog as eventlog

    log = EventLog(tmp_path / "d.db", device="HH01")
    log.append("consume", {"i": 0})
    log._db.execute(f"PRAGMA max_page_count = {log._db.execute('PRAGMA page_count').fetchone()[0]}")
    now = [1000.0]
    monkeypatch.setattr(eventlog.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.ERROR, logger="device.eventlog")
    for _ in range(300):  # five minutes of one retry a second
        with pytest.raises(eventlog.LogWriteFailed):
            log.append("consume", {"x": "y" * 100_000})
        now[0] += 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 + 4  # the first failure, then a reminder at 60, 120, 180, 240 s
    assert "still failing (61 appends over 60 s)" in messages[1]
