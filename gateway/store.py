"""The gateway store: one database, its schema brought up to date at open, and the data layer's stores on it.

The tables and every statement on them live in :mod:`gateway.data` (one module per concern, see
docs/data.md); :class:`GatewayStore` opens the engine, applies the pending migrations and hands out the
stores. It also keeps, as one-line delegates, the calls the gateway's loops make most (ingest, the
outbox, leases), so those read as before.

Every write that someone else is told about is committed first: an event batch is committed before the
device is acked; a charge is in the outbox before it is sent; an accepted charge and its consumption
record are written in one transaction. Identities are unique keys, so every write is idempotent.

The store is a SQLite file (the default: one connection guarded by a lock, shared by the gateway's threads;
SQLite serialises writers anyway) or a PostgreSQL database named by a ``postgresql://`` URL (a pool of
connections; several gateways may share the database, see docs/scale.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from gateway.data.accounts import AccountStore
from gateway.data.audit import AuditStore
from gateway.data.books_reads import BooksReads
from gateway.data.catalog import CatalogStore
from gateway.data.census import CensusStore, StaffStore
from gateway.data.charges import ChargeStore, OutboxCharge, ReturnOutcome, StoreError
from gateway.data.claims import ClaimStore
from gateway.data.dashboard import DashboardStore
from gateway.data.devices import DeviceStore
from gateway.data.engine import Engine, is_postgres_url, open_engine
from gateway.data.events import (
    EVENT_FAULTS,
    MAX_DETAIL_CHARS,
    MAX_RAW_CHARS,
    MAX_REASON_CHARS,
    EventStore,
    IngestResult,
    StoredEvent,
    raw_text,
)
from gateway.data.evidence import EvidenceReads
from gateway.data.his_lines import HisLineStore
from gateway.data.incidents import IncidentStore
from gateway.data.links import LinkStore
from gateway.data.migrations import MigrationReport, migrate
from gateway.data.monitoring import MonitoringQueries
from gateway.data.replenishment import ReplenishmentStore
from gateway.data.reports import store_counts
from gateway.data.schema import MIGRATIONS
from gateway.data.stock import StockStore
from gateway.data.stocktake import StocktakeStore
from gateway.data.terms import TermsStore
from gateway.data.trace import TraceStore
from gateway.data.usage import UsageStore
from spd_common.wire import Batch, DeviceState

__all__ = [
    "EVENT_FAULTS",
    "MAX_DETAIL_CHARS",
    "MAX_RAW_CHARS",
    "MAX_REASON_CHARS",
    "GatewayStore",
    "IngestResult",
    "OutboxCharge",
    "ReturnOutcome",
    "StoreError",
    "StoredEvent",
    "raw_text",
]


class GatewayStore:
    """The gateway's store, shared by its threads: the data layer's stores over one SQLite file or PostgreSQL
    database (``location``: a file path, or a ``postgresql://`` URL)."""

    def __init__(self, location: str | Path, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> None:
        self.url: str | None = str(location) if is_postgres_url(location) else None
        self.path = Path(location) if self.url is None else None
        self._engine: Engine = open_engine(location, synchronous=synchronous, busy_timeout_s=busy_timeout_s)
        try:
            self.schema: MigrationReport = migrate(self._engine, MIGRATIONS)
        except BaseException:
            self._engine.close()
            raise
        self.events = EventStore(self._engine)
        self.charges = ChargeStore(self._engine)
        self.devices = DeviceStore(self._engine)
        self.catalog = CatalogStore(self._engine)
        self.census = CensusStore(self._engine)
        self.staff = StaffStore(self._engine)
        self.audit = AuditStore(self._engine)
        self.links = LinkStore(self._engine)
        self.terms = TermsStore(self._engine)
        self.stock = StockStore(self._engine)
        self.incidents = IncidentStore(self._engine)
        self.monitoring = MonitoringQueries(self._engine)
        self.his_lines = HisLineStore(self._engine)
        self.books = BooksReads(self._engine)
        self.accounts = AccountStore(self._engine)
        self.dashboard = DashboardStore(self._engine)
        self.stocktake = StocktakeStore(self._engine)
        self.replenishment = ReplenishmentStore(self._engine)
        self.trace = TraceStore(self._engine)
        self.claims = ClaimStore(self._engine)
        self.usage = UsageStore(self._engine)
        self.evidence = EvidenceReads(self._engine)  # the screen's drill-down into a finding

    @property
    def store_faults(self) -> tuple[type[BaseException], ...]:
        """What a failure of the store itself raises (the engine's driver errors, a full disk, no memory): a
        writer that meets one commits nothing and acknowledges nothing, and the devices resend."""
        return (*self._engine.store_faults, *self._engine.data_faults, OSError, MemoryError)

    @property
    def engine_name(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.name

    @property
    def location(self) -> str:
        """Where the store is, for messages (a path, or the URL without its password)."""
        return self._engine.location

    def close(self) -> None:
        self._engine.close()

    def alive(self) -> bool:
        """The store answers a trivial read (the watchdog's check)."""
        return self._engine.alive()

    def integrity_check(self) -> str:
        return self._engine.integrity_check()

    def counts(self) -> dict[str, int]:
        return store_counts(self._engine)

    # ------------------------------------------------------------ delegates the gateway's loops call

    def ingest(self, batch: Batch, *, now: float | None = None) -> IngestResult:
        return self.events.ingest(batch, now=now)

    def writers_turn(self) -> AbstractContextManager[None]:
        """Wait for the store's writers' turn; the next transaction of this thread runs in it
        (:meth:`gateway.data.engine.Engine.writers_turn`)."""
        return self._engine.writers_turn()

    def ingest_group(self, batches: Sequence[Batch], *, now: float | None = None) -> list[IngestResult | Exception]:
        """Many batches in one transaction (group commit); see :meth:`EventStore.ingest_group`."""
        return self.events.ingest_group(batches, now=now)

    def record_bad_payload(self, topic_text: str, reason: str, detail: str, payload: bytes) -> None:
        self.events.record_bad_payload(topic_text, reason, detail, payload)

    def consumption_events(self, *, after_id: int, limit: int) -> list[StoredEvent]:
        return self.events.consumption_events(after_id=after_id, limit=limit)

    def charging_events(self, *, after_id: int, limit: int) -> list[StoredEvent]:
        return self.events.charging_events(after_id=after_id, limit=limit)

    def last_event_id(self) -> int:
        return self.events.last_event_id()

    def update_device_state(self, site: str, state: DeviceState, *, live: bool = True) -> None:
        self.devices.update_device_state(site, state, live=live)

    def update_device_states(self, states: Sequence[tuple[str, DeviceState, bool]]) -> None:
        self.devices.update_device_states(states)

    def contiguous_seq(self, device: str) -> int:
        return self.devices.contiguous_seq(device)

    def hold_lease(self, name: str, holder: str, ttl_s: float, *, now: float | None = None) -> bool:
        return self.devices.hold_lease(name, holder, ttl_s, now=now)

    def release_lease(self, name: str, holder: str) -> None:
        self.devices.release_lease(name, holder)

    def cursor(self, name: str) -> int:
        return self.devices.cursor(name)

    def load_catalog_rows(self) -> list[tuple[Any, ...]]:
        return self.catalog.load_catalog_rows()

    def upsert_catalog(self, rows: Sequence[tuple[Any, ...]]) -> int:
        return self.catalog.upsert_catalog(rows)

    def charged_item_keys(self) -> set[str]:
        return self.charges.charged_item_keys()

    def last_release_id(self) -> int:
        return self.charges.last_release_id()

    def released_item_keys(self, *, after_id: int) -> list[tuple[int, str]]:
        return self.charges.released_item_keys(after_id=after_id)

    def pending_charges(self, *, limit: int = 500) -> list[OutboxCharge]:
        return self.charges.pending_charges(limit=limit)

    def mark_retry(self, charge_id: str, detail: str, next_attempt_at: float) -> None:
        self.charges.mark_retry(charge_id, detail, next_attempt_at)

    def mark_parked(self, charge_id: str, code: str | None, detail: str) -> list[str]:
        return self.charges.mark_parked(charge_id, code, detail)

    def mark_accepted(self, charge_id: str, code: str | None, his_ref: str | None) -> bool:
        return self.charges.mark_accepted(charge_id, code, his_ref)

    def requeue_parked(self, charge_id: str) -> bool:
        return self.charges.requeue_parked(charge_id)
