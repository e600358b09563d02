"""The database engine under the gateway's data layer: transactions, one-shot reads, schema facts.

The stores of :mod:`gateway.data` speak to an :class:`Engine`, never to a driver: :class:`SqliteEngine` (one
file, the default) or :class:`gateway.data.postgres.PostgresEngine` (psycopg 3 and a pool, chosen by a
``postgresql://`` URL: :func:`open_engine`). The interface holds what the migration runner and the stores
need and nothing engine-only: a transaction that yields something with ``execute`` / ``executemany``, a
one-shot query, the columns of a table, whether a table exists, a lock held to the end of a transaction.

The stores write one SQL for both engines: ``?`` placeholders (the PostgreSQL engine turns them into
psycopg's ``%s``), ``INSERT ... ON CONFLICT DO NOTHING`` / ``DO UPDATE`` (never ``INSERT OR IGNORE`` /
``REPLACE``), ``CAST(? AS TEXT) IS NULL`` where a parameter is only compared with NULL (PostgreSQL must know
its type), columns qualified by their table in an upsert's ``SET`` (``t.n + 1``). Types and DDL differ and
live in the migrations (``Sql(sqlite=..., postgresql=...)``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from gateway.data.fair_lock import FairRLock

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

    def executemany(self, sql: str, rows: Any, /) -> Any: ...


class Engine(Protocol):
    """What the migration runner and the stores need of a database."""

    name: str
    """The dialect a migration picks its SQL by: ``sqlite`` or ``postgresql``."""

    location: str
    """Where the store is, for messages (a file path; a URL without its password)."""

    data_faults: tuple[type[BaseException], ...]
    """What the driver raises when a statement's values cannot be stored (as opposed to a failure of the store)."""

    store_faults: tuple[type[BaseException], ...]
    """What the driver raises when the store itself fails (disk, lock timeout, lost connection); these are
    caught after ``data_faults``, so a base class of those may be among them."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        ...

    def writers_turn(self) -> AbstractContextManager[None]:
        """Wait for the writers' turn now, before knowing what to write: this thread's next transaction in
        the block runs in it and gives it back when it ends. Where writers do not take turns (PostgreSQL)
        nothing is waited for."""
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

    def serialize(self, db: Transaction, key: str) -> None:
        """Hold ``key`` until the transaction ends: no other transaction (of any gateway) holds it meanwhile."""
        ...

    def share(self, db: Transaction, key: str) -> None:
        """Hold ``key`` shared until the transaction ends (others may share it; :meth:`read_settled` waits)."""
        ...

    def read_settled(self, key: str, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read after every transaction that shares ``key`` has ended, so rows they numbered from a sequence
        are all there: a reader that walks a table by id never steps over a row committed late (several
        gateways writing at once number rows in one order and commit them in another)."""
        ...

    def column_type(self, sqlite_type: str) -> str:
        """A column type as a migration's :class:`~gateway.data.migrations.AddColumns` writes it (SQLite's), in
        this engine's terms."""
        ...

    def alive(self) -> bool:
        """The database answers a trivial read."""
        ...

    def integrity_check(self) -> str:
        """``ok``, or what is wrong with the store."""
        ...

    def close(self) -> None:
        ...


URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: object) -> bool:
    """``location`` names a PostgreSQL database (``postgresql://...``) rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


DB_HELP = "the gateway store: a SQLite file, or a PostgreSQL database as a postgresql://user@host/db URL"


def store_location(text: str) -> str | Path:
    """A ``--db`` value: a ``postgresql://`` URL as it is, anything else a SQLite file path."""
    return text if is_postgres_url(text) else Path(text)


def open_engine(location: str | Path, **sqlite_options: Any) -> Engine:
    """The engine for a store location: a ``postgresql://`` URL, else a SQLite file path."""
    if is_postgres_url(location):
        from gateway.data.postgres import PostgresEngine

        return PostgresEngine(str(location))
    return SqliteEngine(location, **sqlite_options)


BACKSTOP_PAGES = 40_000
"""``wal_autocheckpoint`` of the gateway store's connections: a writer checkpoints inside its own turn only
once the log holds this many pages (160 MB at 4 KiB). The checkpointer of :mod:`gateway.wal_checkpoint` keeps
the log far below that; without one (a command line tool) the writers still bound it."""

CACHE_KIB = 16_384
"""Page cache of a gateway store connection. Charging writes a batch of charges into eight b-trees (the
table and its indexes); with SQLite's default 2 MiB the batch's dirty pages overflowed the cache and were
written to the log in the middle of the transaction, and again at its commit when touched again."""


class SqliteEngine:
    """One SQLite connection in WAL mode guarded by a lock; the gateway's threads share it.

    SQLite serialises writers anyway; the lock keeps one Python connection usable from several threads.
    ``BEGIN IMMEDIATE`` takes the write lock at the start of a transaction, so two gateways sharing a
    file never deadlock on a lock upgrade.

    Between processes (the gateway's parts, :mod:`gateway.parts`; several gateways on one file) a writer
    first takes an ``flock`` on ``<file>-writers``. A writer that finds SQLite's lock taken sleeps in
    SQLite's busy handler for 1, 2, 5, 10 ... up to 100 ms before it looks again, however soon the
    lock was let go; one blocked on the ``flock`` is woken by the kernel the moment it is released, so
    three processes writing short transactions take turns without sleeping past them.
    """

    name = "sqlite"
    data_faults: tuple[type[BaseException], ...] = (sqlite3.IntegrityError, sqlite3.DataError,
                                                   sqlite3.InterfaceError, sqlite3.ProgrammingError)
    store_faults: tuple[type[BaseException], ...] = (sqlite3.OperationalError, sqlite3.DatabaseError)

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0,
                 wal: bool = True) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FairRLock()  # first come first served: a looping writer cannot keep the store to itself
        self._turn_of: int | None = None  # the thread whose writers_turn waits for its transaction
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_s)
        if wal:  # the gateway store; the CA index and the token file keep SQLite's rollback journal
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        if wal:
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        self._writers = writers_lock(self.path) if wal else None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            in_turn = self._turn_of == threading.get_ident()  # taken by writers_turn for this transaction
            if self._writers is not None and not in_turn:
                fcntl.flock(self._writers, fcntl.LOCK_EX)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if in_turn:
                    self._end_turn()
                elif self._writers is not None:
                    fcntl.flock(self._writers, fcntl.LOCK_UN)

    @contextmanager
    def writers_turn(self) -> Iterator[None]:
        """Hold the connection and the writers' ``flock`` from now until this thread's next transaction ends
        (or the block, if none runs in it).

        The ingest writer waits here before it takes its group from the queue: what arrived while the other
        parts held the file joins the group, so the busier the file, the fewer and larger the transactions
        (and their fsyncs); the devices' acks, sent after the commit, are outside the turn."""
        self._lock.acquire()
        if self._writers is not None:
            try:
                fcntl.flock(self._writers, fcntl.LOCK_EX)
            except BaseException:
                self._lock.release()
                raise
        self._turn_of = threading.get_ident()
        try:
            yield
        finally:
            if self._turn_of == threading.get_ident():  # no transaction ran in it
                self._end_turn()

    def _end_turn(self) -> None:
        self._turn_of = None
        if self._writers is not None:
            fcntl.flock(self._writers, fcntl.LOCK_UN)
        self._lock.release()  # the level writers_turn took

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def serialize(self, db: Transaction, key: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already made this the only writer of the file."""

    def share(self, db: Transaction, key: str) -> None:
        """Nothing to do: writers to the file commit one at a time, in the order they number rows."""

    def read_settled(self, key: str, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.query(sql, params)

    def column_type(self, sqlite_type: str) -> str:
        return sqlite_type

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
            if self._writers is not None:
                os.close(self._writers)
                self._writers = None


def writers_lock(path: Path) -> int | None:
    """The descriptor of the file writers to ``path`` take turns on; None where it cannot be opened (read-only)."""
    try:
        return os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None


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
