"""The site CA's index of issued certificates (``index.db`` in the CA directory), and their revocations.

Not in the gateway store: it lives with the CA's key in the CA directory (see docs/data.md). Its schema is
versioned like the store's, with its own migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from gateway.data.engine import SqliteEngine
from gateway.data.migrations import Migration, MigrationReport, Sql, migrate

CA_INDEX_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", (Sql.script("""
CREATE TABLE IF NOT EXISTS certs (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    not_before REAL NOT NULL,
    not_after REAL NOT NULL,
    pem TEXT NOT NULL,
    revoked_at REAL,
    revocation_reason TEXT
);
CREATE INDEX IF NOT EXISTS certs_name ON certs (name, not_after);
"""),)),
)


class CertRow(NamedTuple):
    serial: str  # hex
    name: str
    role: str
    not_after: float
    revoked_at: float | None
    pem: str


class Revocation(NamedTuple):
    serial: str
    revoked_at: float
    reason: str


class CertIndex:
    """The ``certs`` table."""

    def __init__(self, path: str | Path) -> None:
        self._engine = SqliteEngine(path, wal=False)
        self.schema: MigrationReport = migrate(self._engine, CA_INDEX_MIGRATIONS)

    def add(self, serial: str, name: str, role: str, *, not_before: float, not_after: float, pem: str) -> None:
        with self._engine.transaction() as db:
            db.execute("INSERT INTO certs (serial, name, role, not_before, not_after, pem) VALUES (?, ?, ?, ?, ?, ?)",
                       (serial, name, role, not_before, not_after, pem))

    def issued(self, *, name: str | None = None) -> list[CertRow]:
        """Every certificate issued (only ``name``'s when given), oldest first."""
        rows = self._engine.query(
            "SELECT serial, name, role, not_after, revoked_at, pem FROM certs "
            "WHERE (CAST(? AS TEXT) IS NULL OR name = ?) ORDER BY not_before", (name, name))
        return [CertRow(*r) for r in rows]

    def revoke(self, serial: str, reason: str, *, at: float) -> bool | None:
        """Mark a certificate revoked: True; False if it already was; None if no such certificate was issued."""
        with self._engine.transaction() as db:
            cur = db.execute(
                "UPDATE certs SET revoked_at = ?, revocation_reason = ? WHERE serial = ? AND revoked_at IS NULL",
                (at, reason, serial))
            if cur.rowcount:
                return True
            return False if db.execute("SELECT 1 FROM certs WHERE serial = ?", (serial,)).fetchone() else None

    def revocation(self, serial: str) -> Revocation | None:
        """Why and when ``serial`` was revoked; None if it is not (or was not issued here)."""
        rows = self._engine.query("SELECT serial, revoked_at, revocation_reason FROM certs WHERE serial = ? "
                                  "AND revoked_at IS NOT NULL", (serial,))
        return Revocation(*rows[0]) if rows else None

    def revoked(self) -> list[Revocation]:
        rows = self._engine.query(
            "SELECT serial, revoked_at, revocation_reason FROM certs WHERE revoked_at IS NOT NULL")
        return [Revocation(*r) for r in rows]

    def close(self) -> None:
        self._engine.close()
