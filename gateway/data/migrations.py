"""The migration runner: brings a store's schema to the current version, one migration per transaction.

The version of a store is the highest number in its ``schema_migrations`` table (one row per migration
applied, with its name and when). At start the gateway applies what is missing, in order, each in its own
transaction together with its row, so a crash leaves a store at a whole version and the next start goes
on from there. Two gateways starting on one store do not both apply a migration: the runner looks at the
version again inside the transaction, which holds the store's migration lock (SQLite: the
``BEGIN IMMEDIATE`` write lock; PostgreSQL: a transaction-scoped advisory lock, taken before the version
table is created, so two gateways starting at once on an empty database do not both create it).

A store made before the schema had a version has tables but no ``schema_migrations``: it is recognised
as such and upgraded in place from migration 1. The migrations up to
``0004_audit_chain`` are written so that this is safe on any such store, whatever release made it:
``CREATE ... IF NOT EXISTS`` and :class:`AddColumns` (adds only the columns a table lacks). Later
migrations run only on stores whose version says what they hold, and need neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.data.engine import Engine, Transaction, statements

log = logging.getLogger(__name__)

VERSION_TABLE = "schema_migrations"

_VERSION_DDL = {
    "sqlite": (f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
               "applied_at REAL NOT NULL)"),
    "postgresql": (f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                   "applied_at DOUBLE PRECISION NOT NULL)"),
}


class MigrationError(RuntimeError):
    """A migration cannot be applied (no SQL for this engine, or the store is newer than this code)."""


@dataclass(frozen=True, slots=True)
class Sql:
    """Statements of one step, per engine (``postgresql`` None: the step has no PostgreSQL form, refused there)."""

    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...] | None = None

    @classmethod
    def script(cls, sqlite: str, postgresql: str | None = None) -> Sql:
        return cls(statements(sqlite), None if postgresql is None else statements(postgresql))

    def for_engine(self, engine: str) -> tuple[str, ...]:
        found: tuple[str, ...] | None = getattr(self, engine, None)
        if found is None:
            raise MigrationError(f"no {engine} SQL for this migration step")
        return found


@dataclass(frozen=True, slots=True)
class AddColumns:
    """Add to ``table`` those of ``columns`` (name, SQL type and constraints) it does not have yet.

    The form of the checks the releases before versioning made at every start; kept only in the
    migrations that bring such stores up, where what a table holds is not known from a version.
    """

    table: str
    columns: tuple[tuple[str, str], ...]


Step = Sql | AddColumns


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    steps: tuple[Step, ...]

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


class MigrationReport(NamedTuple):
    before: int  # version found (0: empty store, or one made before versioning)
    after: int
    applied: list[str]  # labels of the migrations applied, in order
    legacy: bool  # the store had tables but no version


def check_order(migrations: Sequence[Migration]) -> None:
    """Migrations are numbered 1, 2, 3... with no gap; raise otherwise."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {migration.label} out of order: expected number {expected}")


def current_version(engine: Engine) -> int:
    """The store's schema version; 0 for an empty store or one made before versioning."""
    with engine.transaction() as db:
        return _version(engine, db)


def _version(engine: Engine, db: Transaction) -> int:
    if not engine.has_table(db, VERSION_TABLE):
        return 0
    row = db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()
    return int(row[0])


def pending(engine: Engine, migrations: Sequence[Migration]) -> list[Migration]:
    """The migrations not applied yet, in order; raises if the store is newer than ``migrations``."""
    version = current_version(engine)
    if version > len(migrations):
        raise MigrationError(f"store schema version {version} is newer than this gateway's "
                             f"({len(migrations)}): run the newer release, or restore a backup")
    return list(migrations[version:])


def migrate(engine: Engine, migrations: Sequence[Migration], *, now: float | None = None) -> MigrationReport:
    """Apply every pending migration, each in its own transaction; what was found and what was done."""
    check_order(migrations)
    with engine.transaction() as db:
        before = _version(engine, db)
        legacy = before == 0 and bool(engine.tables(db))
    if legacy:
        log.warning("store has no schema version (made by a release before versioning): upgrading it in place")
    applied: list[str] = []
    for migration in pending(engine, migrations):
        with engine.transaction() as db:
            engine.serialize(db, VERSION_TABLE)
            db.execute(_VERSION_DDL[engine.name])
            if _version(engine, db) >= migration.version:  # another gateway applied it meanwhile
                continue
            for step in migration.steps:
                _apply(engine, db, step)
            db.execute(f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
                       (migration.version, migration.name, time.time() if now is None else now))
        log.info("store schema: applied migration %s", migration.label)
        applied.append(migration.label)
    return MigrationReport(before, current_version(engine), applied, legacy)


def _apply(engine: Engine, db: Transaction, step: Step) -> None:
    if isinstance(step, AddColumns):
        have = engine.columns(db, step.table)
        for name, sql_type in step.columns:
            if name not in have:
                db.execute(f"ALTER TABLE {step.table} ADD COLUMN {name} {engine.column_type(sql_type)}")
        return
    for statement in step.for_engine(engine.name):
        db.execute(statement)
