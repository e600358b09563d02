"""The power-loss filesystem keeps exactly what was fsynced, and SQLite in WAL mode runs on it."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw_sim.powerfs import PowerLossFs, fuse_unavailable
from spd_common.durable import fsync_dir

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerLossFs]:
    with PowerLossFs(tmp_path / "disk", tmp_path / "mnt") as mounted:
        yield mounted


def _write(path: Path, data: bytes, *, fsync: bool, flags: int = os.O_CREAT | os.O_WRONLY) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_unsynced_write_is_visible_until_the_power_is_cut(fs: PowerLossFs) -> None:
    f = fs.mount_dir / "scan.txt"
    _write(f, b"scan 1", fsync=False)
    assert f.read_bytes() == b"scan 1"
    assert not (fs.backing_dir / "scan.txt").exists()
    dropped = fs.power_cut()
    assert dropped.bytes_dropped == 6
    assert not f.exists()


def test_fsynced_file_survives_the_cut_with_its_name(fs: PowerLossFs) -> None:
    f = fs.mount_dir / "scan.txt"
    _write(f, b"scan 1", fsync=True)
    fs.power_cut()
    assert f.read_bytes() == b"scan 1"
    assert fs.stats().fsyncs == 1


def test_close_does_not_persist_an_append(fs: PowerLossFs) -> None:
    f = fs.mount_dir / "log.txt"
    _write(f, b"first\n", fsync=True)
    _write(f, b"second\n", fsync=False, flags=os.O_WRONLY | os.O_APPEND)
    assert f.read_bytes() == b"first\nsecond\n"
    fs.power_cut()
    assert f.read_bytes() == b"first\n"


def test_only_dirty_ranges_of_the_synced_file_are_persisted(fs: PowerLossFs) -> None:
    a, b = fs.mount_dir / "a", fs.mount_dir / "b"
    _write(a, b"AAAA", fsync=True)
    _write(b, b"BBBB", fsync=True)
    fd = os.open(a, os.O_WRONLY)
    os.pwrite(fd, b"x", 2)
    os.fsync(fd)
    os.close(fd)
    _write(b, b"y", fsync=False)
    fs.power_cut()
    assert a.read_bytes() == b"AAxA"
    assert b.read_bytes() == b"BBBB"


def test_unsynced_truncation_is_undone_and_synced_one_kept(fs: PowerLossFs) -> None:
    a, b = fs.mount_dir / "a", fs.mount_dir / "b"
    _write(a, b"0123456789", fsync=True)
    _write(b, b"0123456789", fsync=True)
    os.truncate(a, 3)
    fd = os.open(b, os.O_WRONLY)
    os.ftruncate(fd, 2)
    os.ftruncate(fd, 5)  # shrink then grow: the tail must come back as zeros, not old bytes
    os.fsync(fd)
    os.close(fd)
    fs.power_cut()
    assert a.read_bytes() == b"0123456789"
    assert b.read_bytes() == b"01\0\0\0"


def test_open_with_truncate_is_not_durable_without_fsync(fs: PowerLossFs) -> None:
    f = fs.mount_dir / "conf"
    _write(f, b"old contents", fsync=True)
    _write(f, b"new", fsync=False, flags=os.O_WRONLY | os.O_TRUNC)
    assert f.read_bytes() == b"new"
    fs.power_cut()
    assert f.read_bytes() == b"old contents"


def test_directory_fsync_persists_a_new_name_but_not_its_data(fs: PowerLossFs) -> None:
    f = fs.mount_dir / "new.txt"
    _write(f, b"not synced", fsync=False)
    fsync_dir(fs.mount_dir)
    fs.power_cut()
    assert f.exists()
    assert f.read_bytes() == b""


def test_unlink_is_undone_unless_the_directory_is_synced(fs: PowerLossFs) -> None:
    a, b = fs.mount_dir / "a", fs.mount_dir / "b"
    _write(a, b"A", fsync=True)
    _write(b, b"B", fsync=True)
    a.unlink()
    fs.power_cut()
    assert a.read_bytes() == b"A"
    b.unlink()
    fsync_dir(fs.mount_dir)
    fs.power_cut()
    assert not b.exists()


def test_synced_rename_keeps_the_durable_content_under_the_new_name(fs: PowerLossFs) -> None:
    tmp, final = fs.mount_dir / "cfg.tmp", fs.mount_dir / "cfg"
    _write(final, b"v1", fsync=True)
    _write(tmp, b"v2", fsync=True)
    os.rename(tmp, final)
    assert final.read_bytes() == b"v2"
    fs.power_cut()
    assert final.read_bytes() == b"v1" and tmp.read_bytes() == b"v2"
    os.rename(tmp, final)
    fsync_dir(fs.mount_dir)
    fs.power_cut()
    assert final.read_bytes() == b"v2" and not tmp.exists()


def test_new_directory_needs_a_sync_to_survive(fs: PowerLossFs) -> None:
    (fs.mount_dir / "kept").mkdir()
    fsync_dir(fs.mount_dir)
    (fs.mount_dir / "lost").mkdir()
    fs.power_cut()
    assert sorted(p.name for p in fs.mount_dir.iterdir()) == ["kept"]


def test_clean_unmount_persists_everything(tmp_path: Path) -> None:
    fs = PowerLossFs(tmp_path / "disk", tmp_path / "mnt")
    fs.mount()
    (fs.mount_dir / "d").mkdir()
    _write(fs.mount_dir / "d" / "x", b"data", fsync=False)
    fs.unmount(sync=True)
    assert (tmp_path / "disk" / "d" / "x").read_bytes() == b"data"
    assert not os.path.ismount(fs.mount_dir)


def test_sqlite_wal_runs_on_the_mount_and_keeps_synced_commits(fs: PowerLossFs) -> None:
    db_path = fs.mount_dir / "events.db"
    db = sqlite3.connect(db_path, isolation_level=None)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x INTEGER)")
    for i in range(20):
        db.execute("INSERT INTO t VALUES (?)", (i,))
    assert (fs.mount_dir / "events.db-shm").exists()
    db.close()
    fs.power_cut()
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT count(*), sum(x) FROM t").fetchone() == (20, 190)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


@pytest.mark.parametrize("fault", ["disk_full", "io_errors"])
def test_event_log_refuses_while_the_disk_fails_and_recovers_after(fs: PowerLossFs, fault: str) -> None:
    from device.eventlog import EventLog, LogWriteFailed
    from device.handheld import Handheld, ScanVerdict

    log = EventLog(fs.mount_dir / "HH01.db", device="HH01")
    hh = Handheld(log, operator="N1", dept="OR")
    udi = "]d20106954321000017172712311022A\x1d21S{}"
    assert hh.scan_pair("ZY2026000001", udi.format(1)).accepted
    getattr(fs, fault)()
    outcomes = [hh.scan_pair("ZY2026000001", udi.format(i)) for i in range(2, 12)]
    assert all(o.verdict is ScanVerdict.REFUSED and o.reason == "log_unavailable" and o.event is None
               for o in outcomes)
    with pytest.raises(LogWriteFailed):
        log.append("consume", {"x": 1})
    fs.heal()
    ok = hh.scan_pair("ZY2026000001", udi.format(99))
    assert ok.accepted and ok.event is not None and ok.event.seq == 2  # nothing half-written in between
    assert log.integrity_check() == "ok"
    assert log.verify_chain() == []
    log.close()
    fs.power_cut()  # and what was acknowledged survives a cut right after
    log = EventLog(fs.mount_dir / "HH01.db", device="HH01")
    assert [e.seq for e in log.events()] == [1, 2]
    log.close()
