"""The audit log: append-only rows (a trigger refuses updates and deletes), hash-chained, with their head.

The hash of a row is computed by :mod:`gateway.audit` (what is hashed is the audit trail's business); this
store writes a row and its hash in one transaction with the head, and reads rows back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from gateway.data.engine import Engine, Transaction
from spd_common.wire import GENESIS_HASH

_NO_UPDATE_TRIGGER = "audit_log_no_update"


class AuditRow(NamedTuple):
    """One row of ``audit_log`` as stored (``detail`` the JSON text; ``prev``/``hash`` None before the chain)."""

    id: int
    at: float
    actor: str
    action: str
    device: str
    outcome: str
    detail: str
    prev: str | None
    hash: str | None


RowHash = Callable[[AuditRow, str], str]
"""(row, hash of the row before) -> the row's hash."""

_COLUMNS = "id, at, actor, action, device, outcome, detail, prev, hash"


class AuditStore:
    """The ``audit_log`` and ``audit_head`` tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @staticmethod
    def _head(db: Transaction) -> tuple[int, str]:
        row = db.execute("SELECT last_id, last_hash FROM audit_head WHERE id = 1").fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    @staticmethod
    def _set_head(db: Transaction, last_id: int, last_hash: str) -> None:
        db.execute("INSERT INTO audit_head (id, last_id, last_hash) VALUES (1, ?, ?) "
                   "ON CONFLICT (id) DO UPDATE SET last_id = excluded.last_id, last_hash = excluded.last_hash",
                   (last_id, last_hash))

    def append(self, at: float, actor: str, action: str, device: str, outcome: str, detail: str,
               row_hash: RowHash) -> AuditRow:
        """Append one row after the head, chained to it; the row as written."""
        with self._engine.transaction() as db:
            self._engine.serialize(db, "audit_head")  # several gateways on one database append one chain
            last_id, prev = self._head(db)
            top = db.execute("SELECT COALESCE(MAX(id), 0) FROM audit_log").fetchone()[0]
            row = AuditRow(max(int(top), last_id) + 1, at, actor, action, device, outcome, detail, prev, None)
            row = row._replace(hash=row_hash(row, prev))
            db.execute(f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(row))
            self._set_head(db, row.id, str(row.hash))
        return row

    def chain_unchained(self, row_hash: RowHash) -> int:
        """Chain the rows after the head that have no hash (written before the chain existed); how many.

        Oldest first, in one transaction; the update trigger is dropped and re-created inside it.
        """
        with self._engine.transaction() as db:
            self._engine.serialize(db, "audit_head")
            last_id, last_hash = self._head(db)
            rows = [AuditRow(*r) for r in db.execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE id > ? AND hash IS NULL ORDER BY id", (last_id,)).fetchall()]
            if not rows:
                return 0
            if self._engine.name == "postgresql":
                db.execute(f"ALTER TABLE audit_log DISABLE TRIGGER {_NO_UPDATE_TRIGGER}")
                trigger = f"ALTER TABLE audit_log ENABLE TRIGGER {_NO_UPDATE_TRIGGER}"
            else:
                trigger = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                                     (_NO_UPDATE_TRIGGER,)).fetchone()[0]
                db.execute(f"DROP TRIGGER {_NO_UPDATE_TRIGGER}")
            for row in rows:
                digest = row_hash(row, last_hash)
                db.execute("UPDATE audit_log SET prev = ?, hash = ? WHERE id = ?", (last_hash, digest, row.id))
                last_id, last_hash = row.id, digest
            db.execute(trigger)
            self._set_head(db, last_id, last_hash)
        return len(rows)

    def latest(self, *, device: str | None = None, limit: int = 100) -> list[AuditRow]:
        """The newest rows first (only ``device``'s when given)."""
        rows = self._engine.query(f"SELECT {_COLUMNS} FROM audit_log WHERE (CAST(? AS TEXT) IS NULL "
                                  "OR device = ?) ORDER BY id DESC LIMIT ?", (device, device, limit))
        return [AuditRow(*r) for r in rows]

    def all(self) -> list[AuditRow]:
        return [AuditRow(*r) for r in self._engine.query(f"SELECT {_COLUMNS} FROM audit_log ORDER BY id")]

    def head(self) -> tuple[int, str] | None:
        """(last id, last hash) as the head records them; None when there is no head."""
        rows = self._engine.query("SELECT last_id, last_hash FROM audit_head WHERE id = 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def count(self) -> int:
        return int(self._engine.query("SELECT COUNT(*) FROM audit_log")[0][0])
