"""Files that survive a power cut: write beside, fsync, rename over, fsync the directory.

``os.replace`` is atomic but not durable: until the directory is fsynced, a
power cut can bring back the old name (or no file at all, for a new one).
The chaos run's power cuts found this with the cabinet's inventory snapshot
(the cabinet took a new baseline and never recorded what was taken while it
was down); every small state file on a device goes through here.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (new, renamed or removed names) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: all of it or none of it, after a crash or a power cut alike."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
