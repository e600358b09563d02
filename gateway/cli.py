"""``spd-gateway``: run the gateway, import the catalog, inspect and re-send charges."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from device.sync import TlsSettings
from gateway import fieldops_cli
from gateway.catalog import (
    CatalogImportError,
    import_catalog,
    import_recalled_lots,
    read_catalog_file,
    read_recall_file,
)
from gateway.store import GatewayStore


def _tls(a: argparse.Namespace) -> TlsSettings | None:
    """Mutual TLS to the broker from --tls-ca/--tls-cert/--tls-key (all three, or none)."""
    given = [a.tls_ca, a.tls_cert, a.tls_key]
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("spd-gateway: --tls-ca, --tls-cert and --tls-key go together")
    return TlsSettings(str(a.tls_ca), str(a.tls_cert), str(a.tls_key))


def _run(a: argparse.Namespace) -> int:
    from gateway.app import Gateway, GatewayConfig

    tls = _tls(a)
    cfg = GatewayConfig(
        db_path=a.db,
        broker_host=a.broker_host,
        broker_port=a.broker_port if a.broker_port is not None else 8883 if tls else 1883,
        client_id=a.client_id,
        share_group=a.share_group,
        his_protocol=a.his_protocol,
        his_url=a.his_url,
        his_token=os.environ.get("SPD_HIS_TOKEN") or None,
        his_host=a.his_host,
        his_port=a.his_port,
        his_timeout_s=a.his_timeout,
        his_backoff_max_s=a.his_backoff_max,
        facility=a.facility,
        lease_ttl_s=a.lease_ttl,
        his_lanes=a.his_lanes,
        tls=tls,
        signing_key=a.signing_key,
    )
    Gateway(cfg).run_forever()
    return 0


def _catalog_import(a: argparse.Namespace) -> int:
    try:
        entries, errors = read_catalog_file(a.file)
    except CatalogImportError as err:
        print(f"{a.file}: {err.message} [{err.reason}]", file=sys.stderr)
        return 2
    for e in errors:
        print(f"{a.file}:{e.line}: {e.column}: {e.reason}", file=sys.stderr)
    store = GatewayStore(a.db)
    n = import_catalog(store, entries)
    store.close()
    print(f"imported {n} items, {len(errors)} row errors")
    return 1 if errors else 0


def _recall_import(a: argparse.Namespace) -> int:
    try:
        lots, errors = read_recall_file(a.file)
    except CatalogImportError as err:
        print(f"{a.file}: {err.message} [{err.reason}]", file=sys.stderr)
        return 2
    for e in errors:
        print(f"{a.file}:{e.line}: {e.column}: {e.reason}", file=sys.stderr)
    if errors and not a.partial:
        print("recall list not imported: fix the rows above, or pass --partial", file=sys.stderr)
        return 1
    store = GatewayStore(a.db)
    n = import_recalled_lots(store, lots, replace=not a.add)
    store.close()
    print(f"imported {n} recalled lots, {len(errors)} row errors")
    return 1 if errors else 0


def _counts(a: argparse.Namespace) -> int:
    store = GatewayStore(a.db)
    print(json.dumps(store.counts(), indent=2))
    store.close()
    return 0


def _charges(a: argparse.Namespace) -> int:
    store = GatewayStore(a.db)
    try:
        if a.action == "list":
            rows = store.query(
                "SELECT charge_id, device, seq, status, attempts, ack_code, last_error FROM charges "
                "WHERE (? = 'all' OR status = ?) ORDER BY id LIMIT ?",
                (a.status, a.status, a.limit),
            )
            for r in rows:
                print("\t".join("" if v is None else str(v) for v in r))
            return 0
        ok = all(store.requeue_parked(cid) for cid in a.charge_ids)
        print("re-queued" if ok else "some charges were not parked")
        return 0 if ok else 1
    finally:
        store.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spd-gateway", description="spd-edge gateway")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run ingest, charging and the HIS sender")
    run.add_argument("--db", type=Path, required=True)
    run.add_argument("--broker-host", default="127.0.0.1")
    run.add_argument("--broker-port", type=int, default=None, help="default 8883 with TLS, else 1883")
    run.add_argument("--tls-ca", type=Path, default=None, help="the site CA (mutual TLS to the broker)")
    run.add_argument("--tls-cert", type=Path, default=None, help="the gateway's client certificate")
    run.add_argument("--tls-key", type=Path, default=None, help="the gateway's client key")
    run.add_argument("--signing-key", type=Path, default=None,
                     help="command-signing key: also run the fleet link (applied versions, re-sends to devices behind)")
    run.add_argument("--client-id", default="spd-gateway")
    run.add_argument("--share-group", default=None, help="MQTT 5 shared subscription group (several gateways)")
    run.add_argument("--his-protocol", choices=["mllp", "http"], default="mllp", help="HL7 v2/MLLP or JSON/HTTP")
    run.add_argument("--his-url", default=None, help="base URL of the HIS JSON API (--his-protocol http); "
                     "a bearer token is read from the SPD_HIS_TOKEN environment variable")
    run.add_argument("--his-host", default="127.0.0.1")
    run.add_argument("--his-port", type=int, default=2575)
    run.add_argument("--his-timeout", type=float, default=5.0)
    run.add_argument("--his-backoff-max", type=float, default=30.0)
    run.add_argument("--facility", default="HOSP")
    run.add_argument("--his-lanes", type=int, default=4, choices=range(1, 65), metavar="1..64",
                     help="parallel HIS connections (a patient's charges always share one)")
    run.add_argument("--lease-ttl", type=float, default=6.0,
                     help="seconds before another instance may take over charging when this one dies")
    run.set_defaults(func=_run)

    cat = sub.add_parser("catalog-import", help="import the item dictionary from CSV or XLSX (by extension)")
    cat.add_argument("--db", type=Path, required=True)
    cat.add_argument("file", type=Path)
    cat.set_defaults(func=_catalog_import)

    rec = sub.add_parser("recall-import", help="replace the recalled-lots list from CSV or XLSX (by extension)")
    rec.add_argument("--db", type=Path, required=True)
    rec.add_argument("--add", action="store_true", help="add to the list instead of replacing it")
    rec.add_argument("--partial", action="store_true", help="import the good rows even when some rows are bad")
    rec.add_argument("file", type=Path)
    rec.set_defaults(func=_recall_import)

    cnt = sub.add_parser("counts", help="print the store's counters as JSON")
    cnt.add_argument("--db", type=Path, required=True)
    cnt.set_defaults(func=_counts)

    ch = sub.add_parser("charges", help="list charges, or re-send parked ones")
    ch.add_argument("--db", type=Path, required=True)
    ch.add_argument("action", choices=["list", "resend"])
    ch.add_argument("charge_ids", nargs="*")
    ch.add_argument("--status", default="parked", choices=["all", "pending", "accepted", "parked", "voided"])
    ch.add_argument("--limit", type=int, default=100)
    ch.set_defaults(func=_charges)

    fieldops_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    level = logging.DEBUG if a.verbose > 1 else logging.INFO if a.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return int(a.func(a))


if __name__ == "__main__":
    sys.exit(main())
