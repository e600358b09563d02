"""Shared fixtures and helpers: a private Mosquitto per test on a free loopback port, the spine harness,
and waiting on readiness signals instead of fixed sleeps.

Test modules import the helpers with ``from conftest import wait_for, LogWatch`` (pytest puts this
directory on ``sys.path``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.store import GatewayStore
from hw_sim.broker import MosquittoBroker
from hw_sim.harness import SpineHarness
from hw_sim.pgdb import empty_tables, scratch_database, scratch_schema, server_url, unreachable

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test after ``timeout`` s.

    For state another thread or process changes. When that code offers an event, a condition or a
    log line (see :class:`LogWatch`), wait on that instead of polling.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


class LogWatch(logging.Handler):
    """Records of one logger (and its children), to wait for what a thread announces, e.g. a scanner going online.

    Start it before the code that logs; it lowers the logger's level to ``level`` while attached.
    """

    def __init__(self, logger: str, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._logger = logging.getLogger(logger)
        self._saved_level = self._logger.level
        self._cond = threading.Condition()
        self.records: list[logging.LogRecord] = []
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > level:
            self._logger.setLevel(level)

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait(self, text: str, timeout: float = 10.0) -> logging.LogRecord:
        """The first record whose message contains ``text``, waiting up to ``timeout`` s for it."""

        def found() -> logging.LogRecord | None:
            return next((r for r in self.records if text in r.getMessage()), None)

        with self._cond:
            if not self._cond.wait_for(found, timeout):
                raise AssertionError(f"timed out after {timeout:g} s waiting for the log line {text!r}")
            record = found()
            assert record is not None
            return record

    def close(self) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved_level)
        super().close()

    def __enter__(self) -> LogWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(workdir=tmp_path / "broker").start()
    yield b
    b.close()


@pytest.fixture
def spine(tmp_path: Path) -> Iterator[SpineHarness]:
    h = SpineHarness(tmp_path / "spine").start()
    yield h
    h.close()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server the tests make their databases on (``SPD_TEST_PG``, else 127.0.0.1:5432)."""
    why = unreachable()
    if why is not None:
        pytest.skip(why)
    return server_url()


@pytest.fixture(scope="session")
def pg_database(pg_server: str) -> Iterator[str]:
    """A scratch PostgreSQL database for the test session, dropped at its end."""
    with scratch_database(url=pg_server) as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL store of this test's own: a schema of its own in the session's database (the URL
    sets the search path), dropped after it; a schema costs a fraction of a database to make."""
    with scratch_schema(pg_database) as url:
        yield url


@pytest.fixture(scope="session")
def pg_migrated(pg_database: str) -> Iterator[str]:
    """A schema of the session's database with the gateway store's tables (migrated once)."""
    with scratch_schema(pg_database, prefix="store") as url:
        GatewayStore(url).close()
        yield url


@pytest.fixture
def pg_store_url(pg_migrated: str) -> str:
    """A gateway store on PostgreSQL with no rows (the session's migrated schema, emptied for this test)."""
    empty_tables(pg_migrated)
    return pg_migrated


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a gateway store is made: a SQLite file in tmp_path, then an empty PostgreSQL store."""
    if request.param == "sqlite":
        return tmp_path / "gw.db"
    return str(request.getfixturevalue("pg_store_url"))


@pytest.fixture
def open_store(store_location: Path | str) -> Iterator[Callable[[], GatewayStore]]:
    """Opens gateway stores on ``store_location`` (SQLite, then PostgreSQL); every one is closed after the test."""
    opened: list[GatewayStore] = []

    def make() -> GatewayStore:
        opened.append(GatewayStore(store_location))
        return opened[-1]

    yield make
    for store in opened:
        store.close()
