"""The enrolment tokens' own file: one-time tokens, stored hashed, with the certificate each one got.

Not in the gateway store: the file lives with the enrolment service (see docs/data.md). Its schema is
versioned like the store's, with its own migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from gateway.data.engine import SqliteEngine
from gateway.data.migrations import AddColumns, Migration, MigrationReport, Sql, migrate

TOKEN_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", (Sql((
        "CREATE TABLE IF NOT EXISTS tokens (token_sha256 TEXT PRIMARY KEY, site TEXT NOT NULL, "
        "device TEXT NOT NULL, expires_at REAL NOT NULL, used_at REAL, issued_by TEXT NOT NULL)",
    )),)),
    Migration(2, "certificate_of_token", (AddColumns("tokens", (("serial", "TEXT"), ("key_sha256", "TEXT"))),)),
)
"""The token file's schema; 0002 is where the release before versioning added columns to older files."""


class TokenRow(NamedTuple):
    site: str
    device: str
    expires_at: float
    used_at: float | None
    serial: str | None
    key_sha256: str | None


class TokenStore:
    """The ``tokens`` table of the enrolment token file."""

    def __init__(self, path: str | Path) -> None:
        self._engine = SqliteEngine(path, wal=False)
        self.schema: MigrationReport = migrate(self._engine, TOKEN_MIGRATIONS)

    def add(self, token_sha256: str, site: str, device: str, *, expires_at: float, issued_by: str,
            now: float) -> int:
        """Store a new token; the device's unused live tokens expire now. How many were replaced."""
        with self._engine.transaction() as db:
            replaced = db.execute("UPDATE tokens SET expires_at = ? WHERE site = ? AND device = ? AND "
                                  "used_at IS NULL AND expires_at > ?", (now, site, device, now)).rowcount
            db.execute("INSERT INTO tokens (token_sha256, site, device, expires_at, issued_by) "
                       "VALUES (?, ?, ?, ?, ?)", (token_sha256, site, device, expires_at, issued_by))
        return int(replaced)

    def get(self, token_sha256: str) -> TokenRow | None:
        rows = self._engine.query("SELECT site, device, expires_at, used_at, serial, key_sha256 FROM tokens "
                                  "WHERE token_sha256 = ?", (token_sha256,))
        if not rows:
            return None
        r = rows[0]
        return TokenRow(str(r[0]), str(r[1]), float(r[2]), r[3], r[4], r[5])

    def mark_used(self, token_sha256: str, *, serial: str, key_sha256: str, now: float) -> bool:
        """Record the certificate a token got; False if the token was already used (nothing written)."""
        with self._engine.transaction() as db:
            cur = db.execute("UPDATE tokens SET used_at = ?, serial = ?, key_sha256 = ? WHERE token_sha256 = ? "
                             "AND used_at IS NULL", (now, serial, key_sha256, token_sha256))
        return cur.rowcount == 1

    def close(self) -> None:
        self._engine.close()
