"""A pseudo-terminal standing in for a USB serial adapter, reachable at a stable path that survives unplug/replug."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import tempfile
import threading
import time
import tty
from pathlib import Path


class PtyUnplugged(ConnectionError):
    """The simulated adapter is unplugged."""

    reason = "pty_unplugged"


class PtyPort:
    """The device side of a serial line: the pty master, with the slave reachable at :attr:`url`.

    The slave's path changes on every :meth:`replug`; :attr:`url` is a symlink in a
    private directory that is moved to the new slave, the way udev keeps
    ``/dev/serial/by-id/...`` stable, so a driver reconnects to the same URL.
    """

    def __init__(self, *, name: str = "ttyRFID0", link_dir: Path | None = None) -> None:
        self._own_dir = link_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="spd-pty-")) if link_dir is None else link_dir
        self.url = str(self._dir / name)
        self._master: int | None = None
        self._slave: int | None = None
        self._lock = threading.Lock()
        self.plug_count = 0
        self.replug()

    @property
    def is_plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_path(self) -> str:
        return os.readlink(self.url)

    def replug(self) -> None:
        """Attach a fresh pty and point :attr:`url` at it."""
        with self._lock:
            if self._master is not None:
                return
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo or line editing before the driver configures the port
            os.set_blocking(master, False)
            tmp = f"{self.url}.new"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(os.ttyname(slave), tmp)
            os.replace(tmp, self.url)
            self._master, self._slave = master, slave
            self.plug_count += 1

    def unplug(self) -> None:
        """Remove the device: the path disappears and an open driver sees I/O errors."""
        with self._lock:
            master, slave = self._master, self._slave
            self._master = self._slave = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.url)
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def read(self, timeout_s: float) -> bytes:
        """Bytes the driver wrote, waiting up to ``timeout_s``; b"" on timeout."""
        master = self._master
        if master is None:
            raise PtyUnplugged("unplugged")
        try:
            ready, _, _ = select.select([master], [], [], timeout_s)
            if not ready:
                return b""
            return os.read(master, 4096)
        except BlockingIOError:
            return b""
        except (OSError, ValueError) as err:
            if self._master is None:
                raise PtyUnplugged("unplugged") from err
            if isinstance(err, OSError) and err.errno == errno.EIO:
                return b""  # no one has the slave open
            raise

    def write(self, data: bytes, *, timeout_s: float = 1.0) -> None:
        """Send ``data`` to the driver; gives up (dropping the rest) if nobody reads for ``timeout_s``."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout_s
        while view:
            master = self._master
            if master is None:
                raise PtyUnplugged("unplugged")
            try:
                n = os.write(master, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                with contextlib.suppress(OSError, ValueError):
                    select.select([], [master], [], 0.01)
            except (OSError, ValueError) as err:
                if self._master is None:
                    raise PtyUnplugged("unplugged") from err
                raise

    def close(self) -> None:
        self.unplug()
        if self._own_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
