"""``spd-gateway terms-import``, ``settlement`` and ``vbp``: the supply terms in, the month's settlement and the
VBP view out (docs/books.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from pathlib import Path
from typing import Any

from gateway.audit import AuditAction, AuditLog
from gateway.books.output import Column, Table, add_format_option, write
from gateway.books.period import DEFAULT_TZ, Period, PeriodError, parse_month, zone
from gateway.catalog import CatalogImportError
from gateway.data.engine import DB_HELP, store_location
from gateway.store import GatewayStore

_TERMS_FILES = (
    ("suppliers", "suppliers: supplier, name, [licence_no], [licence_expiry]"),
    ("contracts", "purchase contracts: supplier, gtin, purchase_price_fen, valid_from, [valid_to], [contract_no]"),
    ("registrations", "registration certificates: gtin, cert_no, expiry"),
    ("vbp_categories", "VBP categories: category, year, agreed_volume, [name]"),
    ("vbp_items", "VBP items: gtin, category, winner"),
)


def _terms_import(a: argparse.Namespace) -> int:
    from gateway.terms_import import read_terms, store_terms

    files: dict[str, Path] = {kind: getattr(a, kind) for kind, _ in _TERMS_FILES if getattr(a, kind) is not None}
    if not files:
        print("terms-import: give at least one file (--suppliers, --contracts, --registrations, --vbp-categories, "
              "--vbp-items)", file=sys.stderr)
        return 2
    try:
        terms, errors = read_terms(files)
    except CatalogImportError as err:
        print(f"{err.message} [{err.reason}]", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{err.filename}: cannot be read: {err.strerror or err} [unreadable]", file=sys.stderr)
        return 2
    for kind, errs in errors.items():
        for e in errs:
            print(f"{files[kind]}:{e.line}: {e.column}: {e.reason}", file=sys.stderr)
    if errors:
        print(f"supply terms not imported: {sum(len(e) for e in errors.values())} row errors; fix them and import "
              "again (nothing was stored)", file=sys.stderr)
        return 1
    store = GatewayStore(a.db)
    try:
        store_terms(store, terms)
        AuditLog(store).record(str(a.by or getpass.getuser()), AuditAction.TERMS_IMPORTED,
                               files={k: str(v) for k, v in files.items()}, rows=terms.counts())
    finally:
        store.close()
    print("imported " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in terms.counts().items()
                                  if kind in files))
    return 0


def _settlement(a: argparse.Namespace) -> int:
    from gateway.books.settlement import detail, settle
    from gateway.books.settlement_report import meta, tables

    try:
        period = Period.month(a.month, zone(a.tz))
    except PeriodError as err:
        print(f"settlement: {err}", file=sys.stderr)
        return 2
    if a.format == "xlsx" and a.output is None:
        print("settlement: xlsx is a file: give -o FILE.xlsx", file=sys.stderr)
        return 2
    store = GatewayStore(a.db)
    try:
        result = settle(store, period, supplier=a.supplier)
        lines = None if a.no_detail else detail(store, period, supplier=a.supplier)
        write(tables(result, lines, supplier=a.supplier), a.format, a.output, meta=meta(result, a.supplier))
        if result.not_accepted.pending:
            print(f"warning: {result.not_accepted.pending} charges of {period.label} are still waiting for the HIS "
                  "and are not settled", file=sys.stderr)
    finally:
        store.close()
    return 0


VBP_COLUMNS = (
    Column("category", "Category"), Column("name", "Name"), Column("winner_units", "Winning products", "int"),
    Column("other_units", "Other products", "int"), Column("winner_share_pct", "Winners' share %"),
    Column("agreed_volume", "Agreed for the year", "int"), Column("year_to_date", "Winners, year to date", "int"),
    Column("progress_pct", "Progress %"), Column("projected_year_end", "At this pace by year end", "int"),
    Column("behind_pace", "Behind pace"),
)


def _vbp(a: argparse.Namespace) -> int:
    from gateway.books.vbp import vbp_view

    try:
        tz = zone(a.tz)
        if a.month is not None:
            year, _ = parse_month(a.month)
            if year != a.year:
                raise PeriodError(f"month {a.month} is not in {a.year}")
            period = Period.month(a.month, tz)
        else:
            period = Period.year(a.year, tz)
        as_of = dt.date.fromisoformat(a.as_of) if a.as_of else dt.datetime.now(tz).date()
    except (PeriodError, ValueError) as err:
        print(f"vbp: {err}", file=sys.stderr)
        return 2
    store = GatewayStore(a.db)
    try:
        view = vbp_view(store, a.year, period, as_of=as_of)
    finally:
        store.close()
    rows: list[Any] = [(c.category, c.name, c.winner_units, c.other_units, _pct(c.winner_share_pct), c.agreed_volume,
                        c.year_to_date, _pct(c.progress_pct), c.projected_year_end, "yes" if c.behind_pace else "no")
                       for c in view.categories]
    title = f"VBP {view.period.label} (use {view.period.first} to {view.period.last})"
    write([Table(title, VBP_COLUMNS, rows)], a.format, a.output,
          meta={"year": view.year, "from": str(view.period.first), "to": str(view.period.last),
                "year_elapsed_pct": round(float(view.year_elapsed) * 100, 1), "time_zone": a.tz})
    return 0


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def register(sub: Any) -> None:
    p = sub.add_parser("terms-import", help="import supply terms (suppliers, contracts, registration certificates, "
                       "VBP categories and items) from CSV or XLSX; one bad row and nothing is stored")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    for kind, text in _TERMS_FILES:
        p.add_argument(f"--{kind.replace('_', '-')}", dest=kind, type=Path, default=None,
                       help=f"{text} (.csv or .xlsx)")
    p.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")
    p.set_defaults(func=_terms_import)

    p = sub.add_parser("settlement", help="the month's settlement per supplier at the purchase price, with the "
                       "high-value trace summary and detail (docs/books.md)")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("--month", required=True, help="the month to settle, YYYY-MM (local calendar days)")
    p.add_argument("--supplier", default=None, help="only this supplier's settlement (its code)")
    p.add_argument("--tz", default=DEFAULT_TZ, help=f"the hospital's time zone (default {DEFAULT_TZ})")
    p.add_argument("--no-detail", action="store_true", help="leave out the high-value trace detail (every line)")
    add_format_option(p)
    p.set_defaults(func=_settlement)

    p = sub.add_parser("vbp", help="VBP categories: use of winning products and progress against the agreed "
                       "yearly volume")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("--year", type=int, required=True, help="the VBP year (the agreed volumes' year)")
    p.add_argument("--month", default=None, help="show the use of this month (YYYY-MM, in --year); progress is "
                   "counted to its end")
    p.add_argument("--as-of", default=None, help="count progress up to this day (YYYY-MM-DD; default today)")
    p.add_argument("--tz", default=DEFAULT_TZ, help=f"the hospital's time zone (default {DEFAULT_TZ})")
    add_format_option(p)
    p.set_defaults(func=_vbp)
