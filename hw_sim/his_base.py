"""What the two simulated HIS endpoints (MLLP and HTTP JSON) share: the life cycle and the common fault switches.

A simulated HIS keeps its books in SQLite (it outlives its own listener: a
HIS outage is :meth:`SimulatedHisBase.go_down` then
:meth:`~SimulatedHisBase.come_up` on the same port, with every booking kept).
The protocol classes supply the schema, how to listen and how to stop
listening; fault switches that need the protocol (an AE answer, a 500) stay
with them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)


class SimulatedHisBase(ABC):
    """Life cycle (start, stop, go_down, come_up) and the shared fault switches of a simulated HIS.

    Fault controls may be called from any thread while it runs; the SQLite
    connection and the counters are shared under ``_lock``.
    """

    #: ``name`` in log lines and thread names
    kind = "HIS"

    def __init__(self, db_path: str | Path, *, host: str, port: int) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._db_path = Path(db_path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._down = threading.Event()
        self._rejected_codes: set[str] = set()
        self._drop_after_store = 0
        self._wrong_id_next = 0
        self._delay_s = 0.0
        self._rejected = 0
        self._wrong_ids_sent = 0
        self._connections_accepted = 0

    # -- what a protocol supplies ---------------------------------------------------

    @abstractmethod
    def _not_started(self, message: str) -> Exception:
        """The error to raise when it is used before :meth:`start`."""

    @abstractmethod
    def _open(self, db: sqlite3.Connection) -> None:
        """Create the schema (and read any state back) on a just-opened database."""

    @abstractmethod
    def _listen(self) -> int:
        """Start listening on ``_port`` (or ``_requested_port`` the first time); return the bound port."""

    @abstractmethod
    def _unlisten(self) -> bool:
        """Stop listening and cut every open connection; False if it was not listening."""

    @property
    @abstractmethod
    def is_up(self) -> bool:
        """True while it accepts connections."""

    # -- life cycle -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port it listens on (chosen at the first `start` when created with port 0)."""
        if self._port is None:
            raise self._not_started("the simulated HIS has not been started")
        return self._port

    def start(self) -> Self:
        """Open the database and start listening."""
        if self._db is None:
            self._db = sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None)
            # the simulator's records survive its process crashing (WAL); it is never power-cut
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._open(self._db)
        self.come_up()
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection, join the threads and close the database."""
        self.go_down()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def come_up(self) -> None:
        """Listen again, on the same port as before."""
        if self._db is None:
            raise self._not_started("call start() first")
        if self.is_up:
            return
        self._down.clear()
        self._port = self._listen()
        logger.info("simulated %s listening on %s:%d", self.kind, self.host, self._port)

    def go_down(self) -> None:
        """Stop listening and drop every open connection (a HIS outage)."""
        self._down.set()
        if self._unlisten():
            logger.info("simulated %s down", self.kind)

    # -- fault controls shared by both protocols ------------------------------------

    def reject_charge_codes(self, codes: set[str] | frozenset[str]) -> None:
        """Refuse every charge with one of these charge codes (as unknown to the HIS), booking nothing."""
        with self._lock:
            self._rejected_codes = set(codes)

    def set_delay(self, seconds: float) -> None:
        """Wait this long after booking before answering (a slow HIS)."""
        with self._lock:
            self._delay_s = max(0.0, seconds)

    def _drop_after_store_more(self, n: int) -> None:
        with self._lock:
            self._drop_after_store += n

    def _wrong_id_more(self, n: int) -> None:
        with self._lock:
            self._wrong_id_next += n

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise self._not_started("the simulated HIS database is not open")
        return self._db
