"""The gateway store: one database, its schema brought up to date at open, and the data layer's stores on it.

The tables and every statement on them live in :mod:`gateway.data` (one module per concern, see
docs/data.md); :class:`GatewayStore` opens the engine, applies the pending migrations and hands out the
stores. It also keeps, as one-line delegates, the calls the gateway's loops make most (ingest, the
outbox, leases), so those read as before.

Every write that someone else is told about is committed first: an event batch is committed before the
device is acked; a charge is in the outbox before it is sent; an accepted charge and its consumption
record are written in one transaction. Identities are unique keys, so every write is idempotent.

One :class:`GatewayStore` owns one connection guarded by a lock; the gateway's threads share it
(SQLite serialises writers anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.data.audit import AuditStore
from gateway.data.catalog import CatalogStore
from gateway.data.census import CensusStore, StaffStore
from gateway.data.charges import ChargeStore, OutboxCharge, ReturnOutcome, StoreError
from gateway.data.devices import DeviceStore
from gateway.data.engine import SqliteEngine
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
from gateway.data.links import LinkStore
from gateway.data.migrations import MigrationReport, migrate
from gateway.data.reports import store_counts
from gateway.data.schema import MIGRATIONS
from gateway.data.stock import StockStore
from gateway.data.terms import TermsStore
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
    """The gateway's store, shared by its threads: the data layer's stores over one SQLite file."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._engine = SqliteEngine(self.path, synchronous=synchronous, busy_timeout_s=busy_timeout_s)
        self.schema: MigrationReport = migrate(self._engine, MIGRATIONS)
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
        self.usage = UsageStore(self._engine)

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
