"""The badge allow-list cached on the cabinet and handheld: loaded from a JSON file, works offline.

The file format, the badge entries and the PIN hashes are :mod:`spd_common.allowlist` (the gateway's
staff import writes the same document). :meth:`AllowList.reload_if_changed` picks up a new file by its
modification time; a bad new file is refused and the list in memory stays in force.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from spd_common.allowlist import AllowListError, Badge, normalise_badge, parse_allowlist

log = logging.getLogger(__name__)


class AllowList:
    """Thread-safe lookup of badges; an empty list (no file yet) refuses everyone."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.version = 0
        self._badges: dict[str, Badge] = {}
        self._mtime_ns: int | None = None
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self.reload_if_changed()

    @classmethod
    def from_entries(cls, entries: list[Badge], *, version: int = 0) -> AllowList:
        al = cls()
        al.version = version
        al._badges = {normalise_badge(b.badge): b for b in entries}
        return al

    def __len__(self) -> int:
        return len(self._badges)

    def lookup(self, badge_text: str) -> Badge | None:
        with self._lock:
            return self._badges.get(normalise_badge(badge_text))

    def by_user(self, user: str) -> Badge | None:
        """The entry of staff id ``user`` (a handheld logs in by staff id + PIN); the first badge listed wins."""
        key = user.strip().upper()
        with self._lock:
            return next((b for b in self._badges.values() if b.user.upper() == key), None)

    def reload_if_changed(self) -> bool:
        """Load the file if its modification time changed; True when a new list took effect."""
        if self.path is None:
            return False
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._mtime_ns:
            return False
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            self._mtime_ns = mtime
            log.error("allow-list %s unreadable, keeping version %d: %s", self.path, self.version, err)
            return False
        try:
            version, badges = parse_allowlist(doc, source=str(self.path))
        except AllowListError as err:
            self._mtime_ns = mtime
            log.error("allow-list refused, keeping version %d: %s", self.version, err)
            return False
        with self._lock:
            self._badges, self.version, self._mtime_ns = badges, version, mtime
        log.info("allow-list version %d loaded: %d badges", version, len(badges))
        return True
