"""The gateway store's versioned schema: a store of the release before versioning is upgraded in place.

``tests/data/gateway_store_v0.db`` was made by that release (``tests/data/make_gateway_store_v0.py``
says how); these tests open copies of it with today's code.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as gateway_cli
from gateway.data.engine import SqliteEngine
from gateway.data.migrations import AddColumns, Migration, MigrationError, Sql, current_version, migrate, pending
from gateway.data.schema import MIGRATIONS
from gateway.store import GatewayStore

V0 = Path(__file__).parent / "data" / "gateway_store_v0.db"
CURRENT = len(MIGRATIONS)
LAST_BEFORE_VERSIONING = 4  # 0001 to 0004 are the schema the release before versioning made


def added_since_versioning(tmp_path: Path) -> set[tuple[str, str, str, str]]:
    """The schema objects that migrations after 0004 add (tables the old release never had)."""
    engine = SqliteEngine(tmp_path / "upto4.db")
    migrate(engine, MIGRATIONS[:LAST_BEFORE_VERSIONING])
    engine.close()
    GatewayStore(tmp_path / "all.db").close()
    return schema_of(tmp_path / "all.db") - schema_of(tmp_path / "upto4.db")


def schema_of(path: Path) -> set[tuple[str, str, str, str]]:
    with sqlite3.connect(path) as db:
        return {(str(t), str(n), str(tb), str(sql)) for t, n, tb, sql in
                db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL")}


def rows_of(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (columns by name, so added columns do not hide a change)."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        out = {}
        for table in tables:
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            out[table] = sorted((tuple(zip(cols, row, strict=True)) for row in db.execute(f"SELECT * FROM {table}")),
                                key=repr)
        return out


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    copy = tmp_path / "gateway.db"
    shutil.copyfile(V0, copy)
    return copy


def test_store_of_the_previous_release_is_upgraded_in_place_with_every_row_intact(
        tmp_path: Path, old_store: Path) -> None:
    new_tables = {name for kind, name, _, _ in added_since_versioning(tmp_path) if kind == "table"}
    before = rows_of(old_store)
    assert "schema_migrations" not in before
    assert {t for t, rows in before.items() if not rows} <= {"chain_breaks", "charge_rejects", "sqlite_sequence"}
    store = GatewayStore(old_store)
    assert store.schema.legacy and store.schema.before == 0 and store.schema.after == CURRENT
    store.close()
    after = rows_of(old_store)
    versions = after.pop("schema_migrations")
    assert sorted(dict(r)["version"] for r in versions) == list(range(1, CURRENT + 1))
    assert {t: after.pop(t) for t in new_tables} == {t: [] for t in new_tables}
    assert after == before


def test_upgraded_store_works_as_before(old_store: Path) -> None:
    store = GatewayStore(old_store)
    try:
        assert [c.charge_id for c in store.pending_charges()] == ["5FA7FE28670000000004"]
        assert store.requeue_parked("5FA7FE28670000000002")
        counts = store.counts()
        assert counts["credits_accepted"] == 1 and counts["quarantined"] == 1 and counts["events"] == 7
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def test_a_fresh_store_has_the_schema_of_a_migrated_old_store_and_of_the_previous_release(
        tmp_path: Path, old_store: Path) -> None:
    made_by_previous_release = schema_of(old_store)
    GatewayStore(old_store).close()
    GatewayStore(tmp_path / "fresh.db").close()
    fresh = schema_of(tmp_path / "fresh.db")
    assert fresh == schema_of(old_store)
    later = added_since_versioning(tmp_path)
    assert {s for s in fresh if s[1] != "schema_migrations"} - later == made_by_previous_release


def test_reopening_a_current_store_applies_nothing(tmp_path: Path) -> None:
    GatewayStore(tmp_path / "g.db").close()
    store = GatewayStore(tmp_path / "g.db")
    assert store.schema.applied == [] and store.schema.before == store.schema.after == CURRENT
    assert not store.schema.legacy
    store.close()


def test_a_store_older_still_gains_the_columns_its_release_lacked(tmp_path: Path) -> None:
    """A store from before credits and the audit chain: the columns are added, its audit rows then chained."""
    path = tmp_path / "older.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, seq INTEGER "
                   "NOT NULL, site TEXT NOT NULL, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL, "
                   "prev TEXT NOT NULL, hash TEXT NOT NULL, stored_at REAL NOT NULL, UNIQUE (device, seq))")
        db.execute("CREATE TABLE consumption (device TEXT NOT NULL, seq INTEGER NOT NULL, charge_id TEXT, "
                   "admission TEXT NOT NULL, gtin TEXT NOT NULL, item_code TEXT NOT NULL, name TEXT NOT NULL, "
                   "lot TEXT NOT NULL, serial TEXT NOT NULL, expiry TEXT NOT NULL, price_fen INTEGER NOT NULL, "
                   "operator TEXT NOT NULL, dept TEXT NOT NULL, used_at_ms INTEGER NOT NULL, his_ref TEXT, "
                   "recorded_at REAL NOT NULL, PRIMARY KEY (device, seq))")
        db.execute("INSERT INTO consumption VALUES ('HH-1', 1, 'C1', 'ZY1', '0401', 'IT', 'n', 'L', 'S', '2027-12-31',"
                   " 100, 'N1', 'D', 1, 'R1', 1.0)")
        db.execute("CREATE TABLE audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT "
                   "NULL, action TEXT NOT NULL, device TEXT NOT NULL DEFAULT '', outcome TEXT NOT NULL DEFAULT 'ok', "
                   "detail TEXT NOT NULL DEFAULT '{}')")
        db.execute("INSERT INTO audit_log (at, actor, action) VALUES (1.0, 'admin', 'staff_imported')")
    store = GatewayStore(path)
    assert store.schema.legacy and store.schema.after == CURRENT
    from gateway.audit import AuditLog
    log = AuditLog(store)
    assert log.verify() is None
    assert [e.actor for e in log.entries()] == ["spd-gateway", "admin"]  # the chaining is itself audited
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT charge_id, credit_id FROM consumption").fetchall() == [("C1", None)]


def test_a_failing_migration_leaves_the_store_at_the_version_before(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "g.db")
    broken = (*MIGRATIONS, Migration(CURRENT + 1, "broken", (
        Sql(("CREATE TABLE stock_ledger (id INTEGER PRIMARY KEY)",)),
        AddColumns("stock_ledger", (("qty", "INTEGER NOT NULL DEFAULT 0"),)),
        Sql(("INSERT INTO stock_ledger (id, qty) VALUES (1, 1), (1, 2)",)),  # the same id twice: refused
    )))
    with pytest.raises(sqlite3.IntegrityError):
        migrate(engine, broken)
    assert current_version(engine) == CURRENT
    assert [m.label for m in pending(engine, broken)] == [f"{CURRENT + 1:04d}_broken"]
    assert engine.query("SELECT name FROM sqlite_master WHERE name = 'stock_ledger'") == []
    engine.close()


def test_a_store_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "g.db")
    migrate(engine, MIGRATIONS)
    with pytest.raises(MigrationError, match="newer"):
        migrate(engine, MIGRATIONS[:-1])
    engine.close()


def test_migrations_are_numbered_without_gaps_and_have_sqlite_sql() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, CURRENT + 1))
    for m in MIGRATIONS:
        for step in m.steps:
            if isinstance(step, Sql):
                assert step.for_engine("sqlite")


def test_cli_migrate_check_then_apply(old_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_cli(["migrate", "--db", str(old_store), "--check"]) == 1
    assert "pending: 0001_initial" in capsys.readouterr().out
    assert gateway_cli(["migrate", "--db", str(old_store)]) == 0
    assert f"schema version 0 -> {CURRENT}" in capsys.readouterr().out
    assert gateway_cli(["migrate", "--db", str(old_store), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_the_enrolment_token_file_is_versioned_and_made_as_the_previous_release_made_it(tmp_path: Path) -> None:
    from gateway.data.tokens import TOKEN_MIGRATIONS, TokenStore

    previous = tmp_path / "previous.db"  # what the release before versioning did on a new token file
    with closing(sqlite3.connect(previous)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS tokens (token_sha256 TEXT PRIMARY KEY, site TEXT NOT NULL, "
                   "device TEXT NOT NULL, expires_at REAL NOT NULL, used_at REAL, issued_by TEXT NOT NULL)")
        db.execute("ALTER TABLE tokens ADD COLUMN serial TEXT")
        db.execute("ALTER TABLE tokens ADD COLUMN key_sha256 TEXT")
        db.execute("INSERT INTO tokens VALUES ('ab', 'H1', 'CAB1', 1.0, NULL, 'ops', NULL, NULL)")
        db.commit()
    made_then = schema_of(previous)
    upgraded = TokenStore(previous)
    assert upgraded.schema.legacy and upgraded.schema.after == len(TOKEN_MIGRATIONS)
    assert upgraded.get("ab") == ("H1", "CAB1", 1.0, None, None, None)
    upgraded.close()
    TokenStore(tmp_path / "fresh.db").close()
    assert schema_of(tmp_path / "fresh.db") == schema_of(previous)
    assert {s for s in schema_of(previous) if s[1] != "schema_migrations"} == made_then
