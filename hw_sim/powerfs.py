"""A FUSE filesystem that loses every byte not fsynced when the power is cut (in the manner of LazyFS).

The mount shows a *cache* (a private directory of the filesystem process, on
``/dev/shm`` when it exists) that every operation works on, so processes see
their own writes. The *backing* directory is the disk: it changes only when
the model says data became durable.

What becomes durable, and when:

* file data and size (``write``, ``truncate``, ``open(O_TRUNC)``, writes from
  shared ``mmap``): only on ``fsync``/``fdatasync`` of that file, which copies
  the file's dirty byte ranges and its size to the backing file. ``close`` and
  ``flush`` persist nothing;
* a ``fsync`` of a file also makes its name (and missing parent directories)
  durable, as ext4 does in practice; ``fsync`` of a directory makes that
  directory's entries durable: new names appear in the backing store (a file
  whose data was never fsynced appears empty), removed names disappear, a
  renamed file keeps its durable content under the new name;
* anything else (create, unlink, rename, mkdir, chmod, times) stays in the
  cache until one of those syncs.

:meth:`PowerLossFs.power_cut` throws the cache away and remounts, so the mount
shows exactly the backing store, as a machine does after it boots again. The
filesystem runs in a child process controlled over its stdin/stdout (one JSON
object a line), so a crash of the filesystem cannot take the caller down.

Not modelled: torn or reordered writes inside one fsync (a fsync is atomic
here), lost or misdirected writes of the disk itself, hard links, xattrs,
and the backing directory's own durability on the host (it is not fsynced).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from spd_common.logsetup import setup_logging

log = logging.getLogger(__name__)


class PowerFsError(RuntimeError):
    """The power-loss filesystem could not be mounted, controlled or unmounted."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PowerFsTimeout(PowerFsError, TimeoutError):
    """The filesystem process did not answer in time."""


class Command(StrEnum):
    """What the controller asks the filesystem process."""

    STATS = "stats"
    SYNC = "sync"
    EXIT = "exit"  # unmount and end; the cache is dropped unless synced first
    DISK_FULL = "disk_full"  # writes, truncations, creations and fsyncs fail with ENOSPC until healed
    IO_ERROR = "io_error"  # the same operations fail with EIO until healed
    HEAL = "heal"


@dataclass
class PowerLossStats:
    """Counters, summed over every mount of one :class:`PowerLossFs`."""

    fsyncs: int = 0
    dir_fsyncs: int = 0
    bytes_written: int = 0
    bytes_persisted: int = 0
    bytes_dropped: int = 0  # dirty bytes thrown away by power cuts
    names_dropped: int = 0  # directories whose entry changes were thrown away
    cuts: int = 0
    faulted_ops: int = 0  # operations failed on purpose (disk full, I/O error)

    def add(self, other: PowerLossStats) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


# ---------------------------------------------------------------- the filesystem (child process side)


def _merge(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Add ``[start, end)`` to sorted, disjoint ranges."""
    if end <= start:
        return ranges
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if hi < start or lo > end:
            out.append((lo, hi))
        else:
            start, end = min(lo, start), max(hi, end)
    out.append((start, end))
    out.sort()
    return out


def _make_ops(cache: Path, backing: Path, ready: IO[str]) -> Any:
    """The mfusepy operations class (imported here so the controller never needs libfuse)."""
    import mfusepy

    class PowerLossOps(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self._mutex = threading.RLock()
            self.fault: int | None = None  # errno every write/truncate/fsync fails with, while set
            self.dirty: dict[int, list[tuple[int, int]]] = {}  # cache inode -> byte ranges not yet durable
            self.durable: dict[int, str] = {}  # cache inode -> its durable path (relative) in backing
            self.dirty_dirs: set[str] = set()
            self.stats = PowerLossStats()
            for root, _dirs, files in os.walk(cache):
                for name in files:
                    full = Path(root) / name
                    self.durable[full.lstat().st_ino] = str(full.relative_to(cache))

        # -- helpers
        def _c(self, path: str) -> str:
            return str(cache / path.lstrip("/"))

        def _b(self, rel: str) -> Path:
            return backing / rel

        def _touch_dir(self, path: str) -> None:
            self.dirty_dirs.add(os.path.dirname(path.lstrip("/")))

        def _mark(self, ino: int, start: int, end: int) -> None:
            self.dirty[ino] = _merge(self.dirty.get(ino, []), start, end)

        def _forget_if_last_link(self, cpath: str) -> None:
            try:
                st = os.lstat(cpath)
            except FileNotFoundError:
                return
            if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
                self.dirty.pop(st.st_ino, None)
                self.durable.pop(st.st_ino, None)

        def _ensure_dirs(self, rel_dir: str) -> None:
            self._b(rel_dir).mkdir(parents=True, exist_ok=True)

        def persist_file(self, rel: str, fh: int) -> None:
            fd = os.open(f"/proc/self/fd/{fh}", os.O_RDONLY)  # fh may be write-only
            try:
                self._persist_file(rel, fd)
            finally:
                os.close(fd)

        def _persist_file(self, rel: str, fd: int) -> None:
            st = os.fstat(fd)
            ino, size = st.st_ino, st.st_size
            self._ensure_dirs(os.path.dirname(rel))
            target = self._b(rel)
            ranges = self.dirty.pop(ino, [])
            if self.durable.get(ino) == rel and target.is_file():
                with open(target, "r+b") as out:
                    out.truncate(size)
                    for lo, hi in ranges:
                        hi = min(hi, size)
                        if lo < hi:
                            out.seek(lo)
                            out.write(os.pread(fd, hi - lo, lo))
                            self.stats.bytes_persisted += hi - lo
            else:  # a name the backing store does not have for this file yet: write it whole
                if target.is_dir():
                    shutil.rmtree(target)
                with open(target, "wb") as out:
                    offset = 0
                    while offset < size:
                        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
                        if not chunk:
                            break
                        out.write(chunk)
                        offset += len(chunk)
                    out.truncate(size)
                self.stats.bytes_persisted += size
            os.chmod(target, stat.S_IMODE(st.st_mode))
            self.durable[ino] = rel

        def persist_dir(self, rel: str) -> None:
            rel = rel.strip("/")
            self._ensure_dirs(rel)
            cdir, bdir = cache / rel, self._b(rel)
            wanted = {name: (cdir / name).lstat() for name in os.listdir(cdir)}
            for name, st in wanted.items():
                relname = os.path.join(rel, name) if rel else name
                target = bdir / name
                if stat.S_ISDIR(st.st_mode):
                    if not target.is_dir() or target.is_symlink():
                        self._remove_backing(target)
                        target.mkdir()
                elif stat.S_ISLNK(st.st_mode):
                    self._remove_backing(target)
                    os.symlink(os.readlink(cdir / name), target)
                elif stat.S_ISREG(st.st_mode):
                    known = self.durable.get(st.st_ino)
                    if known == relname and target.is_file():
                        continue
                    self._remove_backing(target)
                    if known is not None and self._b(known).is_file():
                        os.link(self._b(known), target)  # durable content moves with a rename
                    else:
                        target.touch()  # the name is durable, its unsynced data is not
                    self.durable[st.st_ino] = relname
            for name in os.listdir(bdir):  # after the links above, so a renamed file's content is not lost
                if name not in wanted:
                    self._remove_backing(bdir / name)
            self.dirty_dirs.discard(rel)

        @staticmethod
        def _remove_backing(target: Path) -> None:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

        def sync_all(self) -> None:
            with self._mutex:
                for root, dirs, _files in os.walk(cache):
                    for d in dirs:
                        self.persist_dir(str((Path(root) / d).relative_to(cache)))
                self.persist_dir("")
                for root, _dirs, files in os.walk(cache):
                    for name in files:
                        full = Path(root) / name
                        if full.lstat().st_ino in self.dirty and full.is_file():
                            fd = os.open(full, os.O_RDONLY)
                            try:
                                self.persist_file(str(full.relative_to(cache)), fd)
                            finally:
                                os.close(fd)

        def snapshot(self) -> PowerLossStats:
            with self._mutex:
                snap = PowerLossStats(**asdict(self.stats))
                snap.bytes_dropped = sum(hi - lo for ranges in self.dirty.values() for lo, hi in ranges)
                snap.names_dropped = len(self.dirty_dirs)
                return snap

        # -- FUSE operations
        def init(self, path: str) -> None:
            ready.write(json.dumps({"ready": True}) + "\n")
            ready.flush()

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.fstat(fh) if fh is not None else os.lstat(self._c(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino",
                    "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
            attrs = {k.replace("_ns", ""): getattr(st, k) for k in keys}
            return attrs

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._c(path), amode):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

        def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
            entries: list[tuple[str, dict[str, int], int]] = []
            with os.scandir(self._c(path)) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    entries.append((entry.name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
            here = os.lstat(self._c(path))
            dot = {"st_mode": here.st_mode, "st_ino": here.st_ino}
            return [(".", dot, 0), ("..", dot, 0), *entries]

        def readlink(self, path: str) -> str:
            return os.readlink(self._c(path))

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._c(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                    "f_frsize", "f_namemax")
            return {k: getattr(sv, k) for k in keys}

        def open(self, path: str, flags: int) -> int:
            with self._mutex:
                cpath = self._c(path)
                before = os.lstat(cpath).st_size if flags & os.O_TRUNC else 0
                fd = os.open(cpath, flags & ~os.O_APPEND)
                if before:
                    self._mark(os.fstat(fd).st_ino, 0, before)
                return fd

        def create(self, path: str, mode: int, flags: int) -> int:
            with self._mutex:
                cpath = self._c(path)
                before = os.lstat(cpath).st_size if os.path.exists(cpath) else 0
                fd = os.open(cpath, (flags | os.O_CREAT) & ~os.O_APPEND, mode)
                ino = os.fstat(fd).st_ino
                if ino not in self.durable:
                    self.dirty.setdefault(ino, [])
                if before and flags & os.O_TRUNC:
                    self._mark(ino, 0, before)
                self._touch_dir(path)
                return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def _check_fault(self) -> None:
            if self.fault is not None:
                self.stats.faulted_ops += 1
                raise mfusepy.FuseOSError(self.fault)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with self._mutex:
                self._check_fault()
                written = os.pwrite(fh, data, offset)
                self._mark(os.fstat(fh).st_ino, offset, offset + written)
                self.stats.bytes_written += written
                return written

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            with self._mutex:
                self._check_fault()
                if fh is not None:
                    st = os.fstat(fh)
                    os.ftruncate(fh, length)
                else:
                    st = os.lstat(self._c(path))
                    os.truncate(self._c(path), length)
                self._mark(st.st_ino, min(st.st_size, length), max(st.st_size, length))
                return 0

        def flush(self, path: str, fh: int) -> int:
            return 0  # close() persists nothing

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def fsync(self, path: str | None, datasync: int, fh: int) -> int:
            with self._mutex:
                self._check_fault()
                self.stats.fsyncs += 1
                if path is not None:  # None: the file was unlinked; nothing of it survives a cut anyway
                    self.persist_file(path.lstrip("/"), fh)
                return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            with self._mutex:
                self.stats.dir_fsyncs += 1
                self.persist_dir(path)
                return 0

        def mkdir(self, path: str, mode: int) -> int:
            with self._mutex:
                os.mkdir(self._c(path), mode)
                self._touch_dir(path)
                return 0

        def rmdir(self, path: str) -> int:
            with self._mutex:
                os.rmdir(self._c(path))
                self._touch_dir(path)
                return 0

        def unlink(self, path: str) -> int:
            with self._mutex:
                self._forget_if_last_link(self._c(path))
                os.unlink(self._c(path))
                self._touch_dir(path)
                return 0

        def rename(self, old: str, new: str) -> int:
            with self._mutex:
                if os.path.lexists(self._c(new)):
                    self._forget_if_last_link(self._c(new))
                os.rename(self._c(old), self._c(new))
                self._touch_dir(old)
                self._touch_dir(new)
                return 0

        def symlink(self, target: str, source: str) -> int:
            with self._mutex:
                os.symlink(source, self._c(target))
                self._touch_dir(target)
                return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._c(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.lchown(self._c(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(self._c(path), ns=times, follow_symlinks=False) if times else os.utime(self._c(path))
            return 0

    return PowerLossOps()


def _unmount_cmd(mount: Path) -> list[str]:
    if shutil.which("fusermount3"):
        return ["fusermount3", "-u", "-z", str(mount)]
    if shutil.which("fusermount"):
        return ["fusermount", "-u", "-z", str(mount)]
    return ["umount", "-l", str(mount)]


def serve(backing: Path, mount: Path) -> int:
    """Child process: mount, answer commands on stdin until told to exit."""
    import mfusepy

    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and os.access(shm, os.W_OK)
    cache = Path(tempfile.mkdtemp(prefix="powerfs-cache-", dir=shm if in_memory else None))
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the control channel
    try:
        shutil.copytree(backing, cache, symlinks=True, dirs_exist_ok=True)
        ops = _make_ops(cache, backing, out)

        def control() -> None:
            for line in sys.stdin:
                cmd = json.loads(line)["cmd"]
                if cmd == Command.SYNC:
                    ops.sync_all()
                elif cmd in (Command.DISK_FULL, Command.IO_ERROR, Command.HEAL):
                    with ops._mutex:
                        ops.fault = {Command.DISK_FULL: errno.ENOSPC, Command.IO_ERROR: errno.EIO}.get(cmd)
                reply = {"ok": True, "stats": asdict(ops.snapshot())}
                out.write(json.dumps(reply) + "\n")
                out.flush()
                if cmd == Command.EXIT:
                    break
            subprocess.run(_unmount_cmd(mount), check=False, capture_output=True)

        leaving = threading.Event()

        def control_then_leave() -> None:
            control()
            leaving.set()

        threading.Thread(target=control_then_leave, name="powerfs-control", daemon=True).start()
        try:
            mfusepy.FUSE(ops, str(mount), foreground=True, nothreads=True, fsname="powerfs",
                         hard_remove=True, use_ino=True)
        except RuntimeError as err:  # the loop may report the unmount we asked for as an error
            if not leaving.wait(2.0):
                raise
            log.debug("fuse loop ended with %s after the unmount", err)
        return 0
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# ---------------------------------------------------------------- the controller (caller side)


def fuse_unavailable() -> str | None:
    """Why a :class:`PowerLossFs` cannot be mounted on this machine, or None if it can (tests skip on a reason)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as err:
        return f"mfusepy/libfuse unavailable: {err}"
    return None


class PowerLossFs:
    """Mount ``backing_dir`` at ``mount_dir`` through the power-loss cache, in a child process."""

    def __init__(self, backing_dir: str | Path, mount_dir: str | Path, *, timeout_s: float = 10.0) -> None:
        self.backing_dir = Path(backing_dir).resolve()
        self.mount_dir = Path(mount_dir).resolve()
        self.timeout_s = timeout_s
        self.totals = PowerLossStats()
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def mounted(self) -> bool:
        return self._proc is not None

    def __enter__(self) -> PowerLossFs:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            self.unmount(sync=False)

    def mount(self) -> None:
        if self._proc is not None:
            raise PowerFsError("mounted", f"{self.mount_dir} is already mounted")
        self.backing_dir.mkdir(parents=True, exist_ok=True)
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "hw_sim.powerfs", "serve", str(self.backing_dir), str(self.mount_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self._proc = proc
        try:
            reply = self._read_reply(proc)
        except PowerFsError:
            self._kill()
            raise
        if not reply.get("ready"):
            self._kill()
            raise PowerFsError("mount_failed", f"unexpected first message {reply!r}")
        log.debug("powerfs mounted %s over %s (pid %d)", self.mount_dir, self.backing_dir, proc.pid)

    def stats(self) -> PowerLossStats:
        """The totals so far plus the live mount's counters (``bytes_dropped``: what a cut now would lose)."""
        live = self._call(Command.STATS)
        total = PowerLossStats(**asdict(self.totals))
        total.add(live)
        return total

    def sync(self) -> None:
        """Make everything durable, like sync(1)."""
        self._call(Command.SYNC)

    def disk_full(self) -> None:
        """From now on writes, truncations and fsyncs fail with ENOSPC (reads still work) until :meth:`heal`."""
        self._call(Command.DISK_FULL)

    def io_errors(self) -> None:
        """From now on writes, truncations and fsyncs fail with EIO until :meth:`heal`."""
        self._call(Command.IO_ERROR)

    def heal(self) -> None:
        self._call(Command.HEAL)

    def power_cut(self, *, kill: Iterable[int] = ()) -> PowerLossStats:
        """Cut the power: SIGKILL ``kill`` pids, drop every unsynced byte and name, remount.

        Every process with a file open on the mount must be dead by now (pass its pid in
        ``kill`` or kill it first). Returns what this cut dropped.
        """
        for pid in kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        final = self._stop()
        final.cuts = 1
        self.totals.add(final)
        self.mount()
        return PowerLossStats(bytes_dropped=final.bytes_dropped, names_dropped=final.names_dropped, cuts=1)

    def unmount(self, *, sync: bool = True) -> None:
        """Unmount; ``sync=True`` persists everything first, as a clean shutdown does (else the cache is lost)."""
        if sync:
            self._call(Command.SYNC)
        self.totals.add(self._stop())

    # -- plumbing
    def _stop(self) -> PowerLossStats:
        final = self._call(Command.EXIT)
        proc = self._proc
        assert proc is not None
        try:
            proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("powerfs process %d did not exit after unmount; killing it", proc.pid)
            self._kill()
        self._proc = None
        self._wait_unmounted()
        return final

    def _wait_unmounted(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while os.path.ismount(self.mount_dir):
            if time.monotonic() > deadline:
                subprocess.run(_unmount_cmd(self.mount_dir), check=False, capture_output=True)
                raise PowerFsTimeout("unmount_timeout", f"{self.mount_dir} is still mounted")
            time.sleep(0.01)

    def _call(self, cmd: Command) -> PowerLossStats:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise PowerFsError("not_mounted", f"{self.mount_dir} is not mounted")
            try:
                proc.stdin.write(json.dumps({"cmd": cmd.value}) + "\n")
                proc.stdin.flush()
            except BrokenPipeError as err:
                raise PowerFsError("fs_died", f"the filesystem process {proc.pid} has died") from err
            reply = self._read_reply(proc)
        return PowerLossStats(**reply["stats"])

    def _read_reply(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(proc.stdout.readline() if proc.stdout else ""),
                                  daemon=True)
        reader.start()
        reader.join(self.timeout_s)
        if reader.is_alive():
            raise PowerFsTimeout("timeout", f"no answer from the filesystem process {proc.pid}")
        if not result or not result[0]:
            raise PowerFsError("fs_died", f"the filesystem process {proc.pid} ended (exit {proc.poll()})")
        reply: dict[str, Any] = json.loads(result[0])
        return reply

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        subprocess.run(_unmount_cmd(self.mount_dir), check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw_sim.powerfs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="mount in the foreground, controlled over stdin/stdout")
    srv.add_argument("backing", type=Path)
    srv.add_argument("mount", type=Path)
    opts = parser.parse_args(argv)
    setup_logging(stream=sys.stderr)
    return serve(opts.backing.resolve(), opts.mount.resolve())


if __name__ == "__main__":
    sys.exit(main())
