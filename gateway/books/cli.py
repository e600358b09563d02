"""The reconciliation's ``spd-gateway`` commands: ``his-import``, ``reconcile``, ``inspect``."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from gateway.books.output import add_format_option, write
from gateway.data.engine import DB_HELP, store_location


def register(sub: Any) -> None:
    """Add the commands to ``spd-gateway``'s sub-parsers."""
    imp = sub.add_parser("his-import", help="load the HIS's export of its charge and credit lines (CSV) for "
                         "reconciliation; docs/books.md")
    imp.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    imp.add_argument("file", type=Path, help="the HIS's charge lines, .csv")
    imp.add_argument("--utc-offset-minutes", type=int, default=480,
                     help="hospital local time's offset, for times written without one (default 480)")
    imp.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")
    imp.set_defaults(func=_his_import)
    for name, what in (("reconcile", "three-way reconciliation of a month: HIS charge lines, consumption "
                                     "records, stock movements; every mismatch with its evidence"),
                       ("inspect", "the inspector's report of a month: red flags per department and operator, "
                                   "counts, amounts and the evidence chain of each")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
        p.add_argument("--month", required=True, help="the period, YYYY-MM (hospital local time)")
        p.add_argument("--grace-days", type=int, default=7,
                       help="days read before and after the month to find the other half of a pair (default 7)")
        p.add_argument("--utc-offset-minutes", type=int, default=480,
                       help="hospital local time's offset from UTC (default 480)")
        add_format_option(p)
        p.set_defaults(func=_reconcile if name == "reconcile" else _inspect)


def _his_import(a: argparse.Namespace) -> int:
    from gateway.audit import AuditAction, AuditLog
    from gateway.books.his_import import read_his_csv
    from gateway.store import GatewayStore

    try:
        rows, errors = read_his_csv(a.file, utc_offset_minutes=a.utc_offset_minutes)
    except (OSError, UnicodeDecodeError) as err:
        print(f"his-import: cannot read {a.file}: {err}", file=sys.stderr)
        return 2
    for e in errors[:50]:
        print(f"{a.file}:{e.line}: {e.column}: {e.problem}", file=sys.stderr)
    if errors:
        print(f"his-import: {len(errors)} bad rows: nothing imported", file=sys.stderr)
        return 1
    store = GatewayStore(a.db)
    try:
        n = store.his_lines.upsert(rows, imported_from=a.file.name, now=time.time())
        AuditLog(store).record(a.by or getpass.getuser(), AuditAction.HIS_LINES_IMPORTED, file=str(a.file), lines=n)
    finally:
        store.close()
    print(f"imported {n} HIS lines from {a.file.name}")
    return 0


def _run_reconciliation(a: argparse.Namespace) -> Any:
    from gateway.books.legs import month_period
    from gateway.books.reconcile import reconcile
    from gateway.store import GatewayStore

    period = month_period(a.month, grace_days=a.grace_days, utc_offset_minutes=a.utc_offset_minutes)
    store = GatewayStore(a.db)
    try:
        rec = reconcile(store, period)
    finally:
        store.close()
    if rec.his_lines == 0:
        print(f"warning: no HIS lines loaded for {a.month}: without them every charged item looks not charged "
              "(spd-gateway his-import first)", file=sys.stderr)
    return rec


def _reconcile(a: argparse.Namespace) -> int:
    from gateway.books.inspect import by_kind_table, evidence_table, meta

    try:
        rec = _run_reconciliation(a)
        write([by_kind_table(rec), evidence_table(rec)], a.format, a.output, meta=meta(rec))
    except ValueError as err:
        print(f"reconcile: {err}", file=sys.stderr)
        return 2
    return 0


def _inspect(a: argparse.Namespace) -> int:
    from gateway.books.inspect import by_dept_table, by_kind_table, evidence_table, meta, summary_table

    try:
        rec = _run_reconciliation(a)
        write([summary_table(rec), by_dept_table(rec), by_kind_table(rec), evidence_table(rec, "Evidence")],
              a.format, a.output, meta=meta(rec))
    except ValueError as err:
        print(f"inspect: {err}", file=sys.stderr)
        return 2
    return 0
