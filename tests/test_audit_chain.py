"""The gateway's audit log is hash-chained like the device's event log; `spd-gateway audit verify` names the first
broken row; a store from before the chain is chained in place on first open."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.audit import AuditAction, AuditLog, verify_audit_chain
from gateway.cli import build_parser
from gateway.store import GatewayStore

# audit_log as stores made before the chain have it
PRE_CHAIN_SCHEMA = """
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'ok',
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"""


def filled(path: Path, n: int = 5) -> GatewayStore:
    store = GatewayStore(path)
    audit = AuditLog(store)
    for i in range(n):
        audit.record(f"nurse.{i}", AuditAction.COMMAND_SENT, device=f"CAB0{i}", seq=i, cmd="unlock")
    return store


def verify_cli(db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    a = build_parser().parse_args(["audit", "verify", "--db", str(db)])
    capsys.readouterr()
    code = a.func(a)
    return code, capsys.readouterr().out


def tamper(db: Path, *statements: str) -> None:
    """What someone with write access to the file can do: drop the triggers and change rows."""
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER audit_log_no_update")
    con.execute("DROP TRIGGER audit_log_no_delete")
    for st in statements:
        con.execute(st)
    con.commit()
    con.close()


def test_rows_are_chained_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    store = filled(db)
    rows = store._engine.query("SELECT id, prev, hash FROM audit_log ORDER BY id")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r[2] and len(r[2]) == 64 for r in rows)
    assert [r[1] for r in rows[1:]] == [r[2] for r in rows[:-1]], "each row links to the one before"
    assert verify_audit_chain(store) is None
    store.close()
    assert verify_cli(db, capsys) == (0, "audit log intact: 5 rows, every hash and link holds\n")


@pytest.mark.parametrize(("statement", "row", "why"), [
    ("UPDATE audit_log SET actor = 'someone.else' WHERE id = 3", 3, "hash does not match"),
    ("UPDATE audit_log SET detail = '{\"cmd\":\"lockdown\",\"seq\":1}' WHERE id = 2", 2, "hash does not match"),
    ("DELETE FROM audit_log WHERE id = 3", 4, "prev does not match the hash of row 2"),
    ("DELETE FROM audit_log WHERE id = 1", 2, "prev does not match the genesis hash"),
    ("DELETE FROM audit_log WHERE id >= 4", 5, "the log ends at row 3"),
])
def test_verify_names_the_first_broken_row(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           statement: str, row: int, why: str) -> None:
    db = tmp_path / "gw.db"
    filled(db).close()
    tamper(db, statement)
    code, out = verify_cli(db, capsys)
    assert code == 1
    assert out.startswith(f"BROKEN: audit log row {row}: ") and why in out


def test_a_recomputed_row_hash_still_breaks_the_link_after_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.audit import audit_row_hash

    db = tmp_path / "gw.db"
    filled(db).close()
    con = sqlite3.connect(db)
    at, action, device, outcome, detail, prev = con.execute(
        "SELECT at, action, device, outcome, detail, prev FROM audit_log WHERE id = 2").fetchone()
    con.close()
    forged = audit_row_hash(2, at, "someone.else", action, device, outcome, detail, prev)
    tamper(db, f"UPDATE audit_log SET actor = 'someone.else', hash = '{forged}' WHERE id = 2")
    code, out = verify_cli(db, capsys)
    assert (code, out.split(":")[1].strip()) == (1, "audit log row 3")


def test_a_store_from_before_the_chain_is_chained_in_place_on_first_open(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"  # a store without schema version, its audit log from before the chain
    con = sqlite3.connect(db)
    con.executescript(PRE_CHAIN_SCHEMA)
    old = [(1700000000.5 + i, f"ops.{i}", "cert_revoked", f"CAB{i}", "ok", json.dumps({"serial": f"a{i}"}))
           for i in range(3)]
    con.executemany("INSERT INTO audit_log (at, actor, action, device, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    old)
    con.commit()
    con.close()

    store = GatewayStore(db)
    audit = AuditLog(store)
    audit.record("nurse.li", AuditAction.COMMAND_SENT, device="CAB01", seq=7)
    rows = store._engine.query("SELECT at, actor, action, device, outcome, detail FROM audit_log ORDER BY id")
    assert [tuple(r) for r in rows[:3]] == old, "the old rows keep their content"
    assert [(r[2], json.loads(r[5])) for r in rows[3:]] == [("audit_chained", {"rows": 3}),
                                                              ("command_sent", {"seq": 7})]
    assert verify_audit_chain(store) is None
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), store._engine.transaction() as db_:
        db_.execute("UPDATE audit_log SET actor = 'x' WHERE id = 1")
    store.close()

    again = GatewayStore(db)
    AuditLog(again)  # a second open chains nothing and records nothing
    assert again._engine.query("SELECT COUNT(*) FROM audit_log") == [(5,)]
    again.close()
    assert verify_cli(db, capsys)[0] == 0
    tamper(db, "UPDATE audit_log SET device = 'CAB9' WHERE id = 2")  # an upgraded row is protected like any other
    code, out = verify_cli(db, capsys)
    assert code == 1 and "row 2" in out


def test_list_is_still_the_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    filled(db, 2).close()
    a = build_parser().parse_args(["audit", "--db", str(db)])
    capsys.readouterr()
    assert a.func(a) == 0
    assert [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()] == ["nurse.1", "nurse.0"]
