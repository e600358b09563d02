"""``spd-gateway stock``, ``alerts``, ``replenish`` and ``trace``: the ledger's commands, a thin layer over
:mod:`gateway.books` (each brings the ledger up to date with the stored events first)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from gateway.books.output import Column, Table, add_format_option, write
from gateway.books.settings import BooksSettings
from gateway.data.engine import DB_HELP, store_location
from gateway.store import GatewayStore


def _settings(a: argparse.Namespace) -> BooksSettings:
    if getattr(a, "config", None) is None:
        return BooksSettings()
    from gateway.config import read_gateway_file

    found = read_gateway_file(a.config).get("books")
    return found if isinstance(found, BooksSettings) else BooksSettings()


def _open(a: argparse.Namespace, settings: BooksSettings) -> GatewayStore:
    from gateway.books.projection import catch_up

    store = GatewayStore(a.db)
    catch_up(store, utc_offset_minutes=settings.utc_offset_minutes, show_progress=True)
    return store


def _when(ms: int, settings: BooksSettings) -> str:
    tz = dt.timezone(dt.timedelta(minutes=settings.utc_offset_minutes))
    return dt.datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def _actor(a: argparse.Namespace) -> str:
    return str(a.by or getpass.getuser())


def _write(a: argparse.Namespace, tables: list[Table], meta: dict[str, Any]) -> int:
    try:
        write(tables, a.format, a.output, meta=meta)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------- stock


def _stock(a: argparse.Namespace) -> int:
    from gateway.books.ledger import on_hand

    if a.db is None:
        print("error: --db is required", file=sys.stderr)
        return 2
    settings = _settings(a)
    store = _open(a, settings)
    try:
        lines = on_hand(store, location=a.location, dept=a.dept, gtin=a.gtin)
    finally:
        store.close()
    table = Table("Stock on hand", [Column("location", "Location"), Column("dept", "Dept"), Column("gtin", "GTIN"),
                                    Column("name", "Item"), Column("lot", "Lot"), Column("serial", "Serial"),
                                    Column("qty", "On hand", "int"), Column("expiry", "Expiry", "date"),
                                    Column("last", "Last movement", "time")],
                  [(s.location, s.dept, s.gtin, s.name, s.lot, s.serial, s.qty, s.expiry, _when(s.last_ms, settings))
                   for s in lines])
    table.totals = ("total", None, None, None, None, None, sum(s.qty for s in lines), None, None)
    return _write(a, [table], {"locations": len({s.location for s in lines})})


def _receipt_import(a: argparse.Namespace) -> int:
    from gateway.audit import AuditAction, AuditLog
    from gateway.books.imports import read_receipts
    from gateway.books.ledger import record_receipts
    from gateway.cli import _import_file

    def store_rows(store: GatewayStore, lines: Any, errors: list[Any]) -> str:
        n = record_receipts(store, lines, by=_actor(a))
        AuditLog(store).record(_actor(a), AuditAction.STOCK_RECEIPTS_IMPORTED, file=str(a.file), lines=n,
                               notes=len({ln.ref for ln in lines}), row_errors=len(errors))
        return (f"recorded {n} receipt and restock lines of {len({ln.ref for ln in lines})} notes (a note recorded "
                f"before is left as it was), {len(errors)} row errors")

    return _import_file(a, read_receipts, store_rows, not_imported="receipts not imported")


def _count_import(a: argparse.Namespace) -> int:
    from gateway.audit import AuditAction, AuditLog
    from gateway.books.imports import parse_time_ms, read_count
    from gateway.books.ledger import import_count
    from gateway.books.projection import catch_up
    from gateway.cli import _import_file

    at_ms = int(time.time() * 1000) if a.at is None else parse_time_ms(a.at)
    if at_ms is None:
        print(f"error: --at {a.at!r} is not a date or time (YYYY-MM-DD[THH:MM])", file=sys.stderr)
        return 2

    def store_rows(store: GatewayStore, lines: Any, errors: list[Any]) -> str:
        catch_up(store)
        outcomes = import_count(store, lines, at_ms=at_ms, by=_actor(a), origin=f"import:{a.file.name}")
        off = sum(len(o.discrepancies) for o in outcomes if o.recorded)
        AuditLog(store).record(_actor(a), AuditAction.STOCK_COUNT_IMPORTED, file=str(a.file),
                               counts=[o.count_id for o in outcomes], discrepancies=off, row_errors=len(errors))
        again = sum(not o.recorded for o in outcomes)
        return (f"recorded {len(outcomes) - again} counts ({again} recorded before), {off} discrepancies "
                f"(spd-gateway stock discrepancies), {len(errors)} row errors")

    return _import_file(a, read_count, store_rows, not_imported="count not imported")


def _discrepancies(a: argparse.Namespace) -> int:
    from gateway.books.ledger import discrepancies

    settings = _settings(a)
    store = _open(a, settings)
    try:
        found = discrepancies(store, location=a.location, count_id=a.count)
    finally:
        store.close()
    table = Table("Count discrepancies", [
        Column("count", "Count"), Column("location", "Location"), Column("at", "Counted at", "time"),
        Column("by", "By"), Column("gtin", "GTIN"), Column("name", "Item"), Column("lot", "Lot"),
        Column("serial", "Serial"), Column("expected", "Expected", "int"), Column("counted", "Counted", "int"),
        Column("difference", "Difference", "int")],
        [(d.count_id, d.location, _when(d.at_ms, settings), d.counted_by, d.gtin, d.name, d.lot, d.serial,
          d.expected, d.counted, d.difference) for d in found])
    return _write(a, [table], {"discrepancies": len(found)})


# ---------------------------------------------------------------- alerts


def _alerts(a: argparse.Namespace) -> int:
    from gateway.books.alerts import alerts
    from gateway.books.imports import parse_time_ms

    settings = _settings(a)
    now_ms = None if a.at is None else parse_time_ms(a.at)
    if a.at is not None and now_ms is None:
        print(f"error: --at {a.at!r} is not a date or time", file=sys.stderr)
        return 2
    store = _open(a, settings)
    try:
        found = alerts(store, settings, now_ms=now_ms, kinds=set(a.kind) if a.kind else None)
    finally:
        store.close()
    table = Table("Alerts", [Column("severity", "Severity"), Column("kind", "Kind"), Column("subject", "Subject"),
                             Column("detail", "Detail"), Column("evidence", "Evidence")],
                  [(x.severity, x.kind, x.subject, x.detail, "; ".join(x.evidence)) for x in found])
    code = _write(a, [table], {"alert_count": len(found)})
    return code or (1 if a.fail_on_critical and any(x.severity == "critical" for x in found) else 0)


# ---------------------------------------------------------------- replenish


def _replenish(a: argparse.Namespace) -> int:
    from gateway.books.replenish import suggestions

    if a.db is None:
        print("error: --db is required", file=sys.stderr)
        return 2
    settings = _settings(a)
    store = _open(a, settings)
    try:
        lines = suggestions(store, settings, route=a.route, location=a.location)
    finally:
        store.close()
    tables = []
    for route in sorted({s.route for s in lines}):
        mine = [s for s in lines if s.route == route]
        t = Table(f"Pick list, route {route}", [
            Column("stop", "Stop", "int"), Column("location", "Location"), Column("gtin", "GTIN"),
            Column("name", "Item"), Column("qty", "Bring", "int"), Column("reason", "Why"),
            Column("on_hand", "On hand", "int"), Column("target", "Target", "int"), Column("avg_use", "Avg use"),
            Column("request", "Request"), Column("pick_from", "Pick from")],
            [(s.stop, s.location, s.gtin, s.name, s.qty, s.reason, s.on_hand, s.target, f"{s.avg_use:g}",
              s.request, s.pick_from) for s in mine])
        t.totals = (None, "total", None, None, sum(s.qty for s in mine), None, None, None, None, None, None)
        tables.append(t)
    if not tables:
        tables.append(Table("Pick list", [Column("location", "Location"), Column("qty", "Bring", "int")]))
    return _write(a, tables, {"lines": len(lines), "urgent": sum(s.urgent for s in lines)})


def _par_import(a: argparse.Namespace) -> int:
    from gateway.audit import AuditAction, AuditLog
    from gateway.books.imports import read_par_levels
    from gateway.cli import _import_file
    from gateway.data.replenishment import ParRow

    def store_rows(store: GatewayStore, lines: Any, errors: list[Any]) -> str:
        store.replenishment.upsert_par([ParRow(p.location, p.gtin, p.par) for p in lines])
        AuditLog(store).record(_actor(a), AuditAction.PAR_LEVELS_IMPORTED, file=str(a.file), levels=len(lines),
                               row_errors=len(errors))
        return f"imported {len(lines)} par levels, {len(errors)} row errors"

    return _import_file(a, read_par_levels, store_rows, not_imported="par levels not imported")


def _route_import(a: argparse.Namespace) -> int:
    from gateway.audit import AuditAction, AuditLog
    from gateway.books.imports import read_routes
    from gateway.cli import _import_file
    from gateway.data.replenishment import RouteStop

    def store_rows(store: GatewayStore, lines: Any, errors: list[Any]) -> str:
        store.replenishment.replace_routes([RouteStop(r.route, r.location, r.stop) for r in lines])
        AuditLog(store).record(_actor(a), AuditAction.ROUTES_IMPORTED, file=str(a.file), stops=len(lines),
                               row_errors=len(errors))
        return f"imported {len({r.route for r in lines})} routes ({len(lines)} stops), {len(errors)} row errors"

    return _import_file(a, read_routes, store_rows, not_imported="routes not imported")


def _request(a: argparse.Namespace) -> int:
    from gateway.books.replenish import request
    from gateway.catalog import _gtin

    gtin = _gtin(a.gtin)
    if gtin is None or a.qty <= 0:
        print("error: --gtin must be a valid GTIN and --qty at least 1", file=sys.stderr)
        return 2
    store = GatewayStore(a.db)
    try:
        rid = request(store, location=a.location, gtin=gtin, qty=a.qty, by=a.by, note=a.note)
    finally:
        store.close()
    print(f"urgent request #{rid}: {a.qty} x {gtin} to {a.location}, by {a.by}")
    return 0


def _request_done(a: argparse.Namespace) -> int:
    from gateway.books.replenish import close_request

    store = GatewayStore(a.db)
    try:
        done = close_request(store, a.request_id, by=_actor(a))
    finally:
        store.close()
    print(f"request #{a.request_id} delivered" if done else f"no open request #{a.request_id}")
    return 0 if done else 1


# ---------------------------------------------------------------- trace


def _trace(a: argparse.Namespace) -> int:
    from gateway.books.trace import TraceRecord, trace_item, trace_lot, trace_patient

    settings = _settings(a)
    uses: list[TraceRecord]
    tables: list[Table] = []
    meta: dict[str, Any] = {}
    store = _open(a, settings)
    try:
        if a.patient:
            uses = trace_patient(store, a.patient)
            meta["patient"] = a.patient
        elif a.lot:
            gtin, _, lot = a.lot.partition("/")
            if not lot:
                print("error: --lot is GTIN/LOT", file=sys.stderr)
                return 2
            lt = trace_lot(store, gtin, lot)
            uses = lt.uses
            meta.update(gtin=gtin, lot=lot, item=lt.name, patients=len({u.admission for u in uses}))
            tables.append(_stock_table("Rest of the lot on hand", lt.on_hand))
        else:
            if not (a.item and a.serial):
                print("error: give --item GTIN --serial S, --lot GTIN/LOT or --patient ADMISSION", file=sys.stderr)
                return 2
            it = trace_item(store, a.item, a.serial)
            uses = it.uses
            meta.update(gtin=a.item, serial=a.serial, item=it.name, times_used=len(uses))
            tables.append(Table("Movements", [
                Column("at", "At", "time"), Column("kind", "Kind"), Column("location", "Location"),
                Column("counterpart", "From/to"), Column("qty", "Qty", "int"), Column("operator", "By"),
                Column("admission", "Patient"), Column("source", "Source")],
                [(_when(m.at_ms, settings), m.kind, m.location, m.counterpart, m.qty, m.operator, m.admission,
                  m.source) for m in it.movements]))
            tables.append(_stock_table("On hand now", it.on_hand))
    finally:
        store.close()
    uses_table = Table("Uses", [
        Column("at", "Used at", "time"), Column("admission", "Patient"), Column("gtin", "GTIN"),
        Column("name", "Item"), Column("lot", "Lot"), Column("serial", "Serial"), Column("qty", "Qty", "int"),
        Column("dept", "Dept"), Column("operator", "Scanned by"), Column("device", "Device"),
        Column("cabinet", "Cabinet"), Column("taken_by", "Taken by"), Column("charge_id", "Charge"),
        Column("charge_status", "HIS status"), Column("his_ref", "HIS ref"), Column("refusal", "Refused"),
        Column("credit_id", "Credit")],
        [(_when(u.at_ms, settings), u.admission, u.gtin, u.name, u.lot, u.serial, u.qty, u.dept, u.operator,
          f"{u.device} #{u.seq}", u.cabinet, u.taken_by, u.charge_id, u.charge_status, u.his_ref, u.refusal,
          u.credit_id) for u in uses])
    return _write(a, [uses_table, *tables], meta)


def _stock_table(title: str, lines: list[Any]) -> Table:
    return Table(title, [Column("location", "Location"), Column("lot", "Lot"), Column("serial", "Serial"),
                         Column("qty", "On hand", "int"), Column("expiry", "Expiry", "date")],
                 [(s.location, s.lot, s.serial, s.qty, s.expiry) for s in lines])


# ---------------------------------------------------------------- the parsers


def _db(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--db", type=store_location, required=required, default=None, help=DB_HELP)


def _sub_db(p: argparse.ArgumentParser) -> None:
    """``--db`` of a subcommand: given before the subcommand (on ``stock``/``replenish``) or after it."""
    p.add_argument("--db", type=store_location, default=argparse.SUPPRESS, help=DB_HELP)


def _needs_db(handler: Any) -> Any:
    def run(a: argparse.Namespace) -> int:
        if getattr(a, "db", None) is None:
            print("error: --db is required", file=sys.stderr)
            return 2
        return int(handler(a))

    return run


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="the gateway configuration, for its [books] settings (default: the built-in ones)")


def _import_args(p: argparse.ArgumentParser, what: str) -> None:
    _sub_db(p)
    p.add_argument("file", type=Path, help=f"{what}, .csv or .xlsx (docs/books.md)")
    p.add_argument("--partial", action="store_true", help="import the good rows even when some rows are bad")
    p.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("stock", help="stock on hand per location and item (docs/books.md); subcommands import "
                        "receipts and counts and list count discrepancies")
    _db(st, required=False)
    _config(st)
    st.add_argument("--location", default=None, help="only this location (a cabinet id, dept:<code>, operator)")
    st.add_argument("--dept", default=None, help="only this department's cabinets and store")
    st.add_argument("--gtin", default=None, help="only this item")
    add_format_option(st)
    st.set_defaults(func=_stock)
    st_sub = st.add_subparsers(dest="stock_action", required=False)
    ri = st_sub.add_parser("receipt-import", help="record delivery notes (receipts into the operator's store) and "
                           "restock notes (from it to cabinets and department stores)")
    _import_args(ri, "receipt and restock lines")
    ri.set_defaults(func=_needs_db(_receipt_import))
    ci = st_sub.add_parser("count-import", help="record a stock-take: expected vs counted per location, the ledger "
                           "adjusted to the count")
    _import_args(ci, "counted items per location")
    ci.add_argument("--at", default=None, help="when the count was taken (YYYY-MM-DD[THH:MM], hospital time; "
                    "default now)")
    ci.set_defaults(func=_needs_db(_count_import))
    di = st_sub.add_parser("discrepancies", help="list every counted item that differed from the ledger")
    _sub_db(di)
    di.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                    help="the gateway configuration, for its [books] settings (default: the built-in ones)")
    di.add_argument("--location", default=argparse.SUPPRESS, help="only counts of this location")
    di.add_argument("--count", default=None, help="only this count (its id)")
    add_format_option(di)
    di.set_defaults(func=_needs_db(_discrepancies))

    al = sub.add_parser("alerts", help="expiring and recalled stock, licences and certificates, items not charged, "
                        "abnormal use (docs/books.md)")
    _db(al)
    _config(al)
    al.add_argument("--kind", action="append", default=None, help="only alerts of this kind (repeatable)")
    al.add_argument("--at", default=None, help="as of this date or time instead of now (YYYY-MM-DD[THH:MM])")
    al.add_argument("--fail-on-critical", action="store_true", help="exit 1 when any alert is critical (cron)")
    add_format_option(al)
    al.set_defaults(func=_alerts)

    rp = sub.add_parser("replenish", help="pick lists per route: par levels, average use, urgent requests first "
                        "(docs/books.md); subcommands import par levels and routes, and take urgent requests")
    _db(rp, required=False)
    _config(rp)
    rp.add_argument("--route", default=None, help="only this route's pick list")
    rp.add_argument("--location", default=None, help="only this location")
    add_format_option(rp)
    rp.set_defaults(func=_replenish)
    rp_sub = rp.add_subparsers(dest="replenish_action", required=False)
    pi = rp_sub.add_parser("par-import", help="set par levels per location and item")
    _import_args(pi, "par levels")
    pi.set_defaults(func=_needs_db(_par_import))
    ro = rp_sub.add_parser("route-import", help="replace the routes (locations in walking order)")
    _import_args(ro, "routes")
    ro.set_defaults(func=_needs_db(_route_import))
    rq = rp_sub.add_parser("request", help="an urgent request from a ward: stored, audited, first on the pick list")
    _sub_db(rq)
    rq.add_argument("--location", required=True, help="where it is needed (a cabinet id or dept:<code>)")
    rq.add_argument("--gtin", required=True, help="the item")
    rq.add_argument("--qty", type=int, required=True, help="how many units")
    rq.add_argument("--by", required=True, help="the staff id of who asks")
    rq.add_argument("--note", default="", help="why, for the picker")
    rq.set_defaults(func=_needs_db(_request))
    dn = rp_sub.add_parser("done", help="an urgent request was delivered: off the pick list")
    _sub_db(dn)
    dn.add_argument("request_id", type=int, help="the request's number")
    dn.add_argument("--by", default=None, help="who delivered (default: the login name), for the audit log")
    dn.set_defaults(func=_needs_db(_request_done))

    tr = sub.add_parser("trace", help="an item to its patient, a patient to every item, a lot to every patient "
                        "(docs/books.md)")
    _db(tr)
    _config(tr)
    tr.add_argument("--item", default=None, help="the item's GTIN (with --serial)")
    tr.add_argument("--serial", default=None, help="the item's serial (with --item)")
    tr.add_argument("--lot", default=None, help="GTIN/LOT: every patient of the lot and where the rest is")
    tr.add_argument("--patient", default=None, help="an admission number: every item used on the patient")
    add_format_option(tr)
    tr.set_defaults(func=_trace)
