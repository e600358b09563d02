"""The database engine under the gateway's data layer: one connection, its lock, transactions, schema facts.

The stores of :mod:`gateway.data` speak to an :class:`Engine`, never to a driver. SQLite is the only engine
today; a PostgreSQL engine (psycopg 3) is meant to follow, so the interface holds what the migration runner
and the stores need and nothing SQLite-only: a transaction that yields something with ``execute`` /
``executemany``, a one-shot query, the columns of a table, whether a table exists.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

Row = tuple[Any, ...]


class Cursor(Protocol):
    """What a statement run in a transaction gives back (a DB-API cursor: sqlite3's, psycopg's)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    """What a transaction yields: statements run in it (``sqlite3.Connection``, a psycopg connection)."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...


class Engine(Protocol):
    """What the migration runner needs of a database; the stores take a concrete engine (SQLite today)."""

    name: str
    """The dialect a migration picks its SQL by: ``sqlite`` (``postgresql`` to come)."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one read, outside a transaction."""
        ...

    def columns(self, db: Transaction, table: str) -> set[str]:
        """The column names of ``table`` as the database has them now (empty if there is no such table)."""
        ...

    def has_table(self, db: Transaction, table: str) -> bool:
        ...

    def tables(self, db: Transaction) -> set[str]:
        """The names of the tables in the store (the engine's own bookkeeping tables left out)."""
        ...

    def close(self) -> None:
        ...


class SqliteEngine:
    """One SQLite connection in WAL mode guarded by a lock; the gateway's threads share it.

    SQLite serialises writers anyway; the lock keeps one Python connection usable from several threads.
    ``BEGIN IMMEDIATE`` takes the write lock at the start of a transaction, so two gateways sharing a
    file never deadlock on a lock upgrade.
    """

    name = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0,
                 wal: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_s)
        if wal:  # the gateway store; the CA index and the token file keep SQLite's rollback journal
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def columns(self, db: Transaction, table: str) -> set[str]:
        return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})").fetchall()}

    def has_table(self, db: Transaction, table: str) -> bool:
        return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() \
            is not None

    def alive(self) -> bool:
        """The database answers a trivial read."""
        return self.query("SELECT 1") == [(1,)]

    def tables(self, db: Transaction) -> set[str]:
        return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                              "AND name NOT LIKE 'sqlite_%'").fetchall()}

    def integrity_check(self) -> str:
        return str(self.query("PRAGMA integrity_check")[0][0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def statements(script: str) -> tuple[str, ...]:
    """A SQL script cut into its statements (a trigger's ``BEGIN ... END`` kept whole), each stripped."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip().rstrip(";").strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"unterminated SQL statement: {buf.strip()[:80]}")
    return tuple(out)
