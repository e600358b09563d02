"""``spd-gateway``: run the gateway, import the catalog, inspect and re-send charges."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import fieldops_cli, notify_cli
from gateway.audit import AuditAction, AuditLog
from gateway.books import cli as books_cli
from gateway.books import settlement_cli
from gateway.catalog import (
    CatalogImportError,
    import_catalog,
    import_recalled_lots,
    read_catalog_file,
    read_recall_file,
)
from gateway.data.engine import DB_HELP, open_engine, store_location
from gateway.data.migrations import MigrationError, current_version, migrate, pending
from gateway.data.schema import MIGRATIONS
from gateway.store import GatewayStore
from spd_common.logsetup import add_verbose_flag, run_command, service_logging


def _run(a: argparse.Namespace) -> int:
    """``run`` and ``service``: one code path, whether a person or systemd starts the gateway."""
    from gateway.app import Gateway
    from gateway.config import check_files, config_from_args, describe
    from gateway.his.adapter import HisConfigError
    from gateway.metrics import MetricsServeError
    from gateway.wake import PartTaken
    from spd_common.toml_config import ConfigError

    try:
        cfg = config_from_args(a)
        check_files(cfg, source=str(a.config) if a.config is not None else "<command line>")
        if a.check:
            print(describe(cfg))
            return 0
        gateway = Gateway(cfg)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    except HisConfigError as err:
        print(f"configuration error: his: {err}", file=sys.stderr)
        return 2
    except PartTaken as err:
        print(f"not started: {err}", file=sys.stderr)
        return 1
    try:
        gateway.run_forever()
    except MetricsServeError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    return 0


def _import_file(a: argparse.Namespace, read: Callable[[Path], tuple[Any, list[Any]]],
                 store_rows: Callable[[GatewayStore, Any, list[Any]], str], *, not_imported: str | None = None) -> int:
    """The shape of every ``import`` command: read ``a.file``, report its row errors, store, say what was stored.

    A file that cannot be read at all exits 2. With ``not_imported`` a file with bad rows is refused
    whole (exit 1) unless ``--partial``; otherwise the good rows are stored and the exit is 1.
    """
    try:
        rows, errors = read(a.file)
    except CatalogImportError as err:
        print(f"{a.file}: {err.message} [{err.reason}]", file=sys.stderr)
        return 2
    except OSError as err:  # missing, unreadable, a directory: one line, not a traceback
        print(f"{a.file}: cannot be read: {err.strerror or err} [unreadable]", file=sys.stderr)
        return 2
    _print_row_errors(a.file, errors)
    if errors and not_imported is not None and not a.partial:
        print(f"{not_imported}: fix the rows above, or pass --partial", file=sys.stderr)
        return 1
    store = GatewayStore(a.db)
    try:
        summary = store_rows(store, rows, errors)
    finally:
        store.close()
    print(summary)
    return 1 if errors else 0


def _catalog_import(a: argparse.Namespace) -> int:
    def store_rows(store: GatewayStore, entries: Any, errors: list[Any]) -> str:
        n = import_catalog(store, entries)
        AuditLog(store).record(_actor(a), AuditAction.CATALOG_IMPORTED, file=str(a.file), items=n,
                               row_errors=len(errors))
        return f"imported {n} items, {len(errors)} row errors"

    return _import_file(a, read_catalog_file, store_rows)


def _recall_import(a: argparse.Namespace) -> int:
    def store_rows(store: GatewayStore, lots: Any, errors: list[Any]) -> str:
        n = import_recalled_lots(store, lots, replace=not a.add)
        AuditLog(store).record(_actor(a), AuditAction.RECALLS_IMPORTED, file=str(a.file), lots=n,
                               replaced=not a.add, row_errors=len(errors))
        return f"imported {n} recalled lots, {len(errors)} row errors"

    return _import_file(a, read_recall_file, store_rows, not_imported="recall list not imported")


def _actor(a: argparse.Namespace) -> str:
    return str(a.by or getpass.getuser())


def _print_row_errors(path: Path, errors: list[Any]) -> None:
    for e in errors:
        print(f"{path}:{e.line}: {e.column}: {e.reason}", file=sys.stderr)


def _staff_import(a: argparse.Namespace) -> int:
    from gateway.staff import import_staff, read_staff_file

    def store_rows(store: GatewayStore, members: Any, errors: list[Any]) -> str:
        n = import_staff(store, members)
        AuditLog(store).record(_actor(a), AuditAction.STAFF_IMPORTED, file=str(a.file), staff=n,
                               row_errors=len(errors))
        roles = ", ".join(f"{r}: {sum(m.role.value == r for m in members)}"
                          for r in sorted({m.role.value for m in members}))
        return (f"imported {n} staff ({roles or 'none'}), {len(errors)} row errors; "
                "publish with: spd-gateway push --component allowlist --build --dept DEPT")

    return _import_file(a, read_staff_file, store_rows,
                        not_imported="staff list not imported (the people on bad rows would lose cabinet access)")


def _census_import(a: argparse.Namespace) -> int:
    from gateway.census import PatientState, import_census, read_census_file

    def store_rows(store: GatewayStore, records: Any, errors: list[Any]) -> str:
        n = import_census(store, records, replace_all=not a.add)
        AuditLog(store).record(_actor(a), AuditAction.CENSUS_IMPORTED, file=str(a.file), admissions=n,
                               replaced=not a.add, row_errors=len(errors))
        in_house = sum(r.status is PatientState.IN_HOUSE for r in records)
        return (f"imported {n} admissions ({in_house} in house, {n - in_house} discharged), {len(errors)} row "
                "errors; publish with: spd-gateway push --component catalog --build")

    return _import_file(a, read_census_file, store_rows,
                        not_imported="census not imported (patients on bad rows would be refused at the bedside)")


def _expiry_import(a: argparse.Namespace) -> int:
    from gateway.lot_expiry import import_lot_expiry, read_expiry_file

    def store_rows(store: GatewayStore, lots: Any, errors: list[Any]) -> str:
        n = import_lot_expiry(store, lots)
        AuditLog(store).record(_actor(a), AuditAction.LOT_EXPIRY_IMPORTED, file=str(a.file), lots=n,
                               row_errors=len(errors))
        return f"imported {n} lot expiry dates, {len(errors)} row errors"

    return _import_file(a, read_expiry_file, store_rows, not_imported="expiry list not imported")


def _census_ready(a: argparse.Namespace) -> int:
    from gateway.census import PatientState, census_complete, load_census, mark_census_complete

    store = GatewayStore(a.db)
    try:
        if not a.check:
            mark_census_complete(store, complete=not a.off, by=_actor(a))
            records = load_census(store) or []
            AuditLog(store).record(_actor(a), AuditAction.CENSUS_MARKED, ready=not a.off, admissions=len(records))
        records = load_census(store) or []
        state = census_complete(store)
    finally:
        store.close()
    in_house = sum(1 for r in records if r.status is PatientState.IN_HOUSE)
    counts = f"{in_house} in house, {len(records) - in_house} discharged"
    if a.check:
        print(f"census {'complete' if state else 'not marked complete'}: {counts}")
    elif state:
        print(f"census marked complete ({counts}); devices check wristbands against it from the next catalog "
              "push (by itself with the fleet link and ADT, or now: spd-gateway push --component catalog --build)")
    else:
        print(f"census marked not complete ({counts}); after the next catalog push devices refuse no wristband "
              "for it")
    return 0


def _counts(a: argparse.Namespace) -> int:
    store = GatewayStore(a.db)
    print(json.dumps(store.counts(), indent=2))
    store.close()
    return 0


def _charges(a: argparse.Namespace) -> int:
    store = GatewayStore(a.db)
    try:
        if a.action == "list":
            for r in store.charges.listing(status=None if a.status == "all" else a.status, limit=a.limit):
                print("\t".join("" if v is None else str(v) for v in r))
            return 0
        ok = all(store.requeue_parked(cid) for cid in a.charge_ids)
        print("re-queued" if ok else "some charges were not parked")
        return 0 if ok else 1
    finally:
        store.close()


def _migrate(a: argparse.Namespace) -> int:
    """Bring the store's schema to this release's version (``--check``: only say whether that is needed)."""
    if a.check and isinstance(a.db, Path) and not a.db.exists():
        print(f"{a.db}: no store (a new one is created at version {len(MIGRATIONS)} when the gateway starts)")
        return 1
    engine = open_engine(a.db)
    where = engine.location
    try:
        if a.check:
            todo = pending(engine, MIGRATIONS)
            version = current_version(engine)
            if not todo:
                print(f"{where}: schema version {version}, up to date")
                return 0
            print(f"{where}: schema version {version} of {len(MIGRATIONS)}; pending: "
                  + ", ".join(m.label for m in todo))
            return 1
        report = migrate(engine, MIGRATIONS)
    except MigrationError as err:
        print(f"{where}: {err}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    if not report.applied:
        print(f"{where}: schema version {report.after}, up to date")
        return 0
    how = " (a store without schema version, from an earlier release: upgraded in place)" if report.legacy else ""
    print(f"{where}: schema version {report.before} -> {report.after}{how}; applied: {', '.join(report.applied)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spd-gateway", description="spd-edge gateway")
    add_verbose_flag(p)
    sub = p.add_subparsers(dest="cmd", required=True)

    from gateway.config import add_arguments

    run = sub.add_parser("run", help="run ingest, charging, the HIS sender and the fleet link "
                         "(from --config, as the systemd unit does; flags override the file)")
    add_arguments(run)
    run.set_defaults(func=_run)
    svc = sub.add_parser("service", help="the same as run (kept for systemd units that name it)")
    add_arguments(svc)
    svc.set_defaults(func=_run)
    service_logging(run)
    service_logging(svc)

    cat = sub.add_parser("catalog-import", help="import the item dictionary from CSV or XLSX (by extension)")
    cat.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    cat.add_argument("file", type=Path, help="the item dictionary, .csv or .xlsx")
    cat.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")
    cat.set_defaults(func=_catalog_import)

    rec = sub.add_parser("recall-import", help="replace the recalled-lots list from CSV or XLSX (by extension)")
    rec.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    rec.add_argument("--add", action="store_true", help="add to the list instead of replacing it")
    rec.add_argument("--partial", action="store_true", help="import the good rows even when some rows are bad")
    rec.add_argument("file", type=Path, help="the recalled lots, .csv or .xlsx")
    rec.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")
    rec.set_defaults(func=_recall_import)

    st = sub.add_parser("staff-import", help="replace the staff list (badges, PINs, roles, departments) "
                        "from CSV or XLSX")
    st.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    st.add_argument("--partial", action="store_true", help="import the good rows even when some rows are bad")
    st.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")
    st.add_argument("file", type=Path, help="the staff list, .csv or .xlsx (docs/deploy.md)")
    st.set_defaults(func=_staff_import)

    cen = sub.add_parser("census-import", help="replace the patient census from CSV or XLSX (sites without ADT)")
    cen.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    cen.add_argument("--add", action="store_true", help="add to the census instead of replacing it")
    cen.add_argument("--partial", action="store_true", help="import the good rows even when some rows are bad")
    cen.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")
    cen.add_argument("file", type=Path, help="the census, .csv or .xlsx (docs/census.md)")
    cen.set_defaults(func=_census_import)

    rdy = sub.add_parser("census-ready", help="the ADT-fed census now holds every inpatient: send it to the devices")
    rdy.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    mode = rdy.add_mutually_exclusive_group()
    mode.add_argument("--off", action="store_true", help="not complete (again): the devices stop checking patients")
    mode.add_argument("--check", action="store_true",
                      help="only print the census counts and whether it is marked complete; change nothing")
    rdy.add_argument("--by", default=None, help="who said so (default: the login name), for the audit log")
    rdy.set_defaults(func=_census_ready)

    exp = sub.add_parser("expiry-import", help="replace the lots' expiry dates (for codes without one) from CSV "
                         "or XLSX")
    exp.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    exp.add_argument("--partial", action="store_true", help="import the good rows even when some rows are bad")
    exp.add_argument("file", type=Path, help="lot expiry dates, .csv or .xlsx")
    exp.add_argument("--by", default=None, help="who imported (default: the login name), for the audit log")
    exp.set_defaults(func=_expiry_import)

    cnt = sub.add_parser("counts", help="print the store's counters as JSON")
    cnt.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    cnt.set_defaults(func=_counts)

    ch = sub.add_parser("charges", help="list charges, or re-send parked ones")
    ch.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    ch.add_argument("action", choices=["list", "resend"], help="list charges, or re-send parked ones")
    ch.add_argument("charge_ids", nargs="*", help="the parked charges to re-send (resend)")
    ch.add_argument("--status", default="parked", choices=["all", "pending", "accepted", "parked", "voided"],
                    help="which charges to list (default parked; voided: credits of charges the HIS refused)")
    ch.add_argument("--limit", type=int, default=100, help="list at most this many")
    ch.set_defaults(func=_charges)

    mig = sub.add_parser("migrate", help="bring the store's schema to this release's version (the gateway also "
                         "does so when it starts); docs/data.md")
    mig.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    mig.add_argument("--check", action="store_true",
                     help="only tell whether migrations are pending (exit 1 if so), apply nothing")
    mig.set_defaults(func=_migrate)

    fieldops_cli.register(sub)
    notify_cli.register(sub)
    books_cli.register(sub)
    from gateway.web import cli as web_cli  # the screen's commands; FastAPI itself is imported only by `web`

    web_cli.register(sub)
    from gateway.books import ledger_cli

    ledger_cli.register(sub)
    settlement_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
