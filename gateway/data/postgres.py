"""The gateway store on PostgreSQL: psycopg 3 with a connection pool, behind the :class:`~gateway.data.engine.Engine`
interface the stores speak to.

The stores write portable SQL with ``?`` placeholders (SQLite's); :func:`to_psycopg` turns a statement into
psycopg's form once (``?`` → ``%s``, a literal ``%`` → ``%%``) and caches it, so a store never knows which
engine it runs on. Several gateways may share one database: each transaction is one pooled connection in
READ COMMITTED; :meth:`PostgresEngine.serialize` takes a transaction-scoped advisory lock where a store must
be the only writer of something for a moment (the migration runner, the audit chain's head).
"""

from __future__ import annotations

import functools
import logging
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.data.engine import Row

log = logging.getLogger(__name__)

_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}


@functools.lru_cache(maxsize=4096)
def to_psycopg(sql: str) -> str:
    """A statement with ``?`` placeholders in psycopg's form: ``%s`` for each ``?`` outside quotes, ``%%`` for ``%``.

    A ``?`` inside a quoted literal or identifier is kept as it is.
    """
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    host, port = info.get("host", ""), info.get("port", 5432)
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{info.get('dbname', '')}"


def _without_jit(url: str) -> str:
    """The URL with ``jit=off`` added to the options its connections start with.

    The gateway's statements each take milliseconds; PostgreSQL compiles a statement whose estimated cost is
    high (a join over a few hundred rows of ``VALUES`` is enough), and the compiling alone took 165 ms
    for a read that runs in 8 ms without it.
    """
    options = psycopg.conninfo.conninfo_to_dict(url).get("options") or ""
    return psycopg.conninfo.make_conninfo(url, options=f"{options} -c jit=off".strip())


class PgTransaction:
    """One transaction on one pooled connection; statements in the stores' ``?`` form."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        return self._conn.execute(to_psycopg(sql), tuple(params))

    def executemany(self, sql: str, rows: Any, /) -> psycopg.Cursor[Any]:
        cur = self._conn.cursor()
        cur.executemany(to_psycopg(sql), [tuple(r) for r in rows])
        return cur


class PostgresEngine:
    """A pool of psycopg connections to one database; the gateway's threads (and other gateways) share it."""

    name = "postgresql"
    data_faults: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError)
    """What a statement raises because of the values it was given (a NUL in text, a number out of range, a
    duplicate key), as opposed to a failure of the database itself."""
    store_faults: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.DatabaseError)

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 12, timeout_s: float = 30.0) -> None:
        # a gateway has about ten threads that write (ingest, charging, the HIS lanes, leases, link watch ...)
        self.url = url
        self.location = redacted(url)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            _without_jit(url), min_size=min_size, max_size=max_size, timeout=timeout_s, open=False,
            kwargs={"autocommit": False}, name="spd-gateway-store",
        )
        self._closed = threading.Event()
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout as err:  # says only that the pool is incomplete: say where and what it could not do
            self._pool.close()
            raise psycopg.OperationalError(f"{self.location}: no connection within {timeout_s:.0f} s "
                                           "(is the server up, the database there, the role allowed?)") from err

    @contextmanager
    def transaction(self) -> Iterator[PgTransaction]:
        # the pool's connection() commits at the end of the block and rolls back if it raises
        with self._pool.connection() as conn:
            yield PgTransaction(conn)

    def writers_turn(self) -> AbstractContextManager[None]:
        """Nothing to wait for: PostgreSQL's writers do not take turns on the whole database."""
        return nullcontext()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._pool.connection() as conn:
            return [tuple(r) for r in conn.execute(to_psycopg(sql), tuple(params)).fetchall()]

    def serialize(self, db: Any, key: str) -> None:
        """Be the only transaction holding ``key`` until this one ends (other gateways' included)."""
        db.execute("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(key.encode()),))

    def share(self, db: Any, key: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock_shared(?)", (zlib.crc32(key.encode()),))

    def read_settled(self, key: str, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.transaction() as db:
            self.serialize(db, key)  # waits until no transaction shares the key: every row they wrote is in
            return [tuple(r) for r in db.execute(sql, params).fetchall()]

    def column_type(self, sqlite_type: str) -> str:
        """A column type written for SQLite (``REAL``, ``INTEGER NOT NULL DEFAULT 0``) in PostgreSQL's terms."""
        head, _, rest = sqlite_type.partition(" ")
        return f"{_TYPES.get(head.upper(), head)} {rest}".strip()

    def columns(self, db: Any, table: str) -> set[str]:
        rows = db.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                          "AND table_name = ?", (table,)).fetchall()
        return {str(r[0]) for r in rows}

    def has_table(self, db: Any, table: str) -> bool:
        return db.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?",
                          (table,)).fetchone() is not None

    def tables(self, db: Any) -> set[str]:
        rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
        return {str(r[0]) for r in rows}

    def alive(self) -> bool:
        return self.query("SELECT 1") == [(1,)]

    def integrity_check(self) -> str:
        """``ok`` when the database answers: PostgreSQL checks its own pages (data checksums), not the gateway."""
        return "ok" if self.alive() else "no answer"

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._pool.close()
