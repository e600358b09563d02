"""A scratch PostgreSQL database for a test or a chaos run: created empty on a server, dropped afterwards.

The server is the one the machine runs (``127.0.0.1:5432``, user ``postgres``) unless ``SPD_TEST_PG`` names
another (a URL to its maintenance database, e.g. ``postgresql://postgres@db-host:5432/postgres``). Only the
database made here is ever dropped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_ENV = "SPD_TEST_PG"


def server_url() -> str:
    return os.environ.get(SERVER_ENV) or DEFAULT_SERVER


def unreachable(url: str | None = None) -> str | None:
    """Why no scratch database can be made on the server (None: it answers and lets us create one)."""
    try:
        import psycopg
    except ImportError as err:
        return f"psycopg is not installed ({err})"
    try:
        with psycopg.connect(url or server_url(), connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as err:
        return f"no PostgreSQL server at {url or server_url()} ({type(err).__name__}: {str(err).strip()[:200]})"
    return None


def _with_dbname(url: str, dbname: str) -> str:
    """The URL of another database on the server of ``url``."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    host, port, user = params.get("host", "127.0.0.1"), params.get("port", 5432), params.get("user", "postgres")
    password = f":{quote(str(params['password']), safe='')}" if params.get("password") else ""
    return f"postgresql://{quote(str(user), safe='')}{password}@{host}:{port}/{dbname}"


@contextmanager
def scratch_schema(database_url: str, prefix: str = "t") -> Iterator[str]:
    """Create an empty schema in a database, yield a URL whose connections work in it, drop it with all it holds.

    Much cheaper than a database (no files copied): what a test that needs "a fresh database" uses inside
    one scratch database per test session.
    """
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        # commits need not wait for the disk: a scratch schema outlives no crash
        yield f"{database_url}?options=-csearch_path%3D{name}%20-csynchronous_commit%3Doff"
    finally:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def empty_tables(url: str, *, keep: tuple[str, ...] = ("schema_migrations",)) -> None:
    """Delete every row of every table in the URL's schema but those of ``keep`` (triggers off for it: the audit
    log refuses deletes) and start its sequences again. A store made once and emptied like this is as good as new
    for a test, in a fraction of the time its migrations take."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=False, connect_timeout=5) as conn:
        conn.execute("SET LOCAL session_replication_role = replica")
        tables = [str(r[0]) for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()]
        for table in tables:
            if table not in keep:
                conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
        # identity columns start again at 1, as in a new store (SQLite's AUTOINCREMENT of a new file does)
        for (seq,) in conn.execute("SELECT sequence_name FROM information_schema.sequences "
                                   "WHERE sequence_schema = current_schema()").fetchall():
            conn.execute(sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.Identifier(str(seq))))


@contextmanager
def scratch_database(prefix: str = "spd_test", url: str | None = None) -> Iterator[str]:
    """Create an empty database, yield its URL, drop it (its connections ended first)."""
    import psycopg
    from psycopg import sql

    server = url or server_url()
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(server, name)
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
