"""The gateway store on PostgreSQL: the schema, migrations and the SQL the stores share with SQLite.

Each test makes its own database on the server (``pg_url``: 127.0.0.1:5432 or ``SPD_TEST_PG``) and drops it;
they are skipped, with the reason, only where no server answers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.audit import AuditAction, AuditLog
from gateway.cli import main as gateway_cli
from gateway.config import parse_gateway_config
from gateway.data.engine import SqliteEngine
from gateway.data.migrations import VERSION_TABLE
from gateway.data.postgres import PostgresEngine, to_psycopg
from gateway.data.schema import MIGRATIONS
from gateway.store import GatewayStore
from spd_common.toml_config import ConfigError


def test_placeholders_become_psycopg_s_and_quoted_text_is_left_alone() -> None:
    assert to_psycopg("SELECT a FROM t WHERE b = ? AND c LIKE 'x:%' AND d = '?'") == \
        "SELECT a FROM t WHERE b = %s AND c LIKE 'x:%%' AND d = '?'"
    assert to_psycopg('SELECT "user" FROM t WHERE n % 2 = ?') == 'SELECT "user" FROM t WHERE n %% 2 = %s'


def test_a_fresh_database_gets_every_migration_and_the_tables_and_columns_of_sqlite(
        pg_url: str, tmp_path: Path) -> None:
    store = GatewayStore(pg_url)
    try:
        assert store.engine_name == "postgresql"
        assert (store.schema.before, store.schema.after, store.schema.legacy) == (0, len(MIGRATIONS), False)
        assert [r[0] for r in store._engine.query(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")] == \
            list(range(1, len(MIGRATIONS) + 1))
        lite = GatewayStore(tmp_path / "gw.db")
        with lite._engine.transaction() as ldb, store._engine.transaction() as pdb:
            lite_tables = lite._engine.tables(ldb)
            assert store._engine.tables(pdb) == lite_tables
            for table in lite_tables:
                assert store._engine.columns(pdb, table) == lite._engine.columns(ldb, table), table
        lite.close()
        again = GatewayStore(pg_url)
        assert again.schema.applied == [] and again.schema.after == len(MIGRATIONS)
        again.close()
    finally:
        store.close()


def test_gateways_starting_at_once_on_an_empty_database_apply_each_migration_once(pg_url: str) -> None:
    stores: list[GatewayStore] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start() -> None:
        try:
            s = GatewayStore(pg_url)
            with lock:
                stores.append(s)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        applied = sorted(label for s in stores for label in s.schema.applied)
        assert applied == sorted(m.label for m in MIGRATIONS)  # each once, by whichever gateway came first
        assert stores[0]._engine.query(f"SELECT COUNT(*) FROM {VERSION_TABLE}") == [(len(MIGRATIONS),)]
    finally:
        for s in stores:
            s.close()


def test_spd_gateway_migrate_takes_a_postgresql_url(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_cli(["migrate", "--db", pg_url, "--check"]) == 1
    assert "pending: 0001_initial" in capsys.readouterr().out
    assert gateway_cli(["migrate", "--db", pg_url]) == 0
    out = capsys.readouterr().out
    assert f"schema version 0 -> {len(MIGRATIONS)}" in out and "postgresql://postgres@" in out
    assert gateway_cli(["migrate", "--db", pg_url, "--check"]) == 0


def test_the_audit_log_stays_append_only_and_chained_on_postgresql(pg_url: str) -> None:
    import psycopg

    store = GatewayStore(pg_url)
    try:
        audit = AuditLog(store)
        audit.record("alice", AuditAction.COMMAND_SENT, device="CAB01", why="test")
        audit.record("bob", AuditAction.COMMAND_SENT, device="CAB02")
        rows = store.audit.all()
        assert [r.actor for r in rows] == ["alice", "bob"] and rows[1].prev == rows[0].hash
        assert audit.verify() is None
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"), \
                store._engine.transaction() as db:
            db.execute("UPDATE audit_log SET actor = 'mallory'")
    finally:
        store.close()


def test_a_value_postgresql_cannot_store_is_quarantined_not_a_failed_batch(pg_url: str) -> None:
    from spd_common.wire import Batch, Event, event_hash

    store = GatewayStore(pg_url)
    try:
        body = {"admission": "ZY1", "udi": "u1", "operator": "N", "dept": "D"}
        good = Event("HH01", 1, 1, "consume", body, "0" * 64, event_hash("HH01", 1, 1, "consume", body, "0" * 64))
        huge = Event("HH01", 2, 2**70, "consume", body, good.hash, "")  # past BIGINT: refused by the database
        res = store.ingest(Batch("HH01", "H1", [good, huge], [], checked=True))
        assert (res.new, res.quarantined, res.contiguous) == (1, 1, 2)
    finally:
        store.close()


def test_store_url_in_the_configuration_file(tmp_path: Path) -> None:
    fields = parse_gateway_config({"store": {"url": "postgresql://spd@db-host:5432/spd"}}, source="gw.toml",
                                  base_dir=tmp_path)
    assert fields["db_path"] == "postgresql://spd@db-host:5432/spd"
    with pytest.raises(ConfigError, match="password"):
        parse_gateway_config({"store": {"url": "postgresql://spd:secret@db-host/spd"}}, source="gw.toml")
    with pytest.raises(ConfigError, match="not both"):
        parse_gateway_config({"store": {"url": "postgresql://spd@h/spd", "path": "gw.db"}}, source="gw.toml")
    with pytest.raises(ConfigError, match="postgresql://"):
        parse_gateway_config({"store": {"url": "mysql://spd@h/spd"}}, source="gw.toml")


def test_sqlite_stays_the_default_engine(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gw.db")
    assert store.engine_name == "sqlite" and isinstance(store._engine, SqliteEngine)
    store.close()
    assert PostgresEngine.name == "postgresql"


def test_a_reader_by_id_never_steps_over_an_event_committed_late(pg_url: str) -> None:
    """Two gateways number events in one order and may commit them in the other: the charging worker's read
    waits for the batch still open, so its cursor never passes an event that then appears behind it."""
    from spd_common.wire import Batch, Event, event_hash

    def consume(device: str) -> Event:
        body = {"admission": "ZY1", "udi": f"u-{device}", "operator": "N", "dept": "D"}
        return Event(device, 1, 1, "consume", body, "0" * 64, event_hash(device, 1, 1, "consume", body, "0" * 64))

    a, b = GatewayStore(pg_url), GatewayStore(pg_url)
    try:
        slow = a._engine.transaction()  # gateway A: its batch is numbered first and committed last
        db = slow.__enter__()
        a.events._engine.share(db, "events")
        db.execute("INSERT INTO events (device, seq, site, ts_ms, kind, body, prev, hash, stored_at) "
                   "VALUES ('HH-A', 1, 'H1', 1, 'consume', '{}', ?, 'h', 1.0)", ("0" * 64,))
        assert b.ingest(Batch("HH-B", "H1", [consume("HH-B")], [], checked=True)).new == 1  # gateway B commits
        read: list[list[str]] = []
        reader = threading.Thread(target=lambda: read.append(
            [s.event.device for s in b.charging_events(after_id=0, limit=10)]))
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and read == []  # it waits for A's batch rather than read past it
        slow.__exit__(None, None, None)
        reader.join(10)
        assert read == [["HH-A", "HH-B"]]
    finally:
        a.close()
        b.close()


def test_a_database_that_is_not_there_is_named_in_the_error(pg_server: str) -> None:
    import psycopg

    from hw_sim.pgdb import _with_dbname

    url = _with_dbname(pg_server, "spd_no_such_database")
    with pytest.raises(psycopg.OperationalError, match="spd_no_such_database: no connection within 1 s"):
        PostgresEngine(url, timeout_s=1.0)


def test_a_failing_migration_leaves_a_postgresql_store_at_the_version_before(pg_url: str) -> None:
    import psycopg

    from gateway.data.migrations import AddColumns, Migration, Sql, current_version, migrate, pending

    engine = PostgresEngine(pg_url)
    try:
        current = len(MIGRATIONS)
        broken = (*MIGRATIONS, Migration(current + 1, "broken", (
            Sql(("CREATE TABLE stock_ledger (id INTEGER PRIMARY KEY)",),
                ("CREATE TABLE stock_ledger (id BIGINT PRIMARY KEY)",)),
            AddColumns("stock_ledger", (("qty", "INTEGER NOT NULL DEFAULT 0"),)),
            Sql(("INSERT INTO stock_ledger (id, qty) VALUES (1, 1), (1, 2)",),
                ("INSERT INTO stock_ledger (id, qty) VALUES (1, 1), (1, 2)",)),  # the same id twice: refused
        )))
        with pytest.raises(psycopg.errors.UniqueViolation):
            migrate(engine, broken)
        assert current_version(engine) == current  # PostgreSQL's DDL is transactional: the table is gone too
        assert [m.label for m in pending(engine, broken)] == [f"{current + 1:04d}_broken"]
        with engine.transaction() as db:
            assert not engine.has_table(db, "stock_ledger")
    finally:
        engine.close()
