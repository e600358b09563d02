"""``spd-gateway`` commands for field operations: site CA, enrolment, revocation, broker files, fleet, audit."""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditAction, AuditLog, chain_break_alarms
from gateway.broker_acl import DEFAULT_TEMPLATE, GATEWAY_CLI_IDENTITY, BrokerPaths, render_acl, render_config
from gateway.data.engine import DB_HELP, store_location
from gateway.linking import link_alarms
from gateway.pki import GATEWAY_IDENTITY
from gateway.store import GatewayStore
from spd_common.command_schema import Component
from spd_common.export import ExportError
from spd_common.mqtt import TlsSettings


def _actor(a: argparse.Namespace) -> str:
    return str(a.by or getpass.getuser())


def _ca_init(a: argparse.Namespace) -> int:
    from gateway.pki import SiteCA

    ca = SiteCA.create(a.ca_dir, site=a.site)
    print(f"site CA created in {a.ca_dir}\nfingerprint (give it to technicians with each token): {ca.fingerprint}")
    return 0


def _enrol_token(a: argparse.Namespace) -> int:
    from gateway.enrol import BadTokenRequest, EnrolmentTokens
    from gateway.pki import SiteCA
    from spd_common.wire import WireError

    ca = SiteCA.load(a.ca_dir)
    tokens = EnrolmentTokens(Path(a.ca_dir) / "tokens.db")
    try:
        tok = tokens.issue(site=a.site, device=a.device, ttl_s=a.ttl_hours * 3600, issued_by=_actor(a))
    except (BadTokenRequest, WireError) as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    finally:
        tokens.close()
    if a.db:
        store = GatewayStore(a.db)
        AuditLog(store).record(_actor(a), AuditAction.TOKEN_ISSUED, device=a.device, site=a.site)
        store.close()
    print(f"token:          {tok.text}\nca-fingerprint: {ca.fingerprint}\nvalid for:      {a.ttl_hours} h, once")
    if tok.replaced:
        print(f"replaces:       {tok.replaced} unused token(s) of {a.device}, void from now")
    return 0


def _enrol_serve(a: argparse.Namespace) -> int:
    from gateway.commands import load_signing_key, public_key_pem
    from gateway.enrol import EnrolmentService, EnrolmentSettings, EnrolmentTokens
    from gateway.enrol_http import ServerLimits
    from gateway.pki import SiteCA

    ca = SiteCA.load(a.ca_dir)
    settings = EnrolmentSettings(a.broker_host, a.broker_port, public_key_pem(load_signing_key(a.signing_key)))
    limits = ServerLimits(per_client=a.max_per_client, request_s=a.request_timeout)
    svc = EnrolmentService(ca, EnrolmentTokens(Path(a.ca_dir) / "tokens.db"), settings, host=a.bind,
                           port=a.port, limits=limits).start()
    print(f"enrolment service on {svc.url}; CA fingerprint {ca.fingerprint}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    svc.stop()
    return 0


def _revoke(a: argparse.Namespace) -> int:
    from gateway.pki import RevocationReason, SiteCA

    ca = SiteCA.load(a.ca_dir)
    n = ca.revoke_name(a.device, RevocationReason(a.reason))
    if a.db:
        store = GatewayStore(a.db)
        AuditLog(store).record(_actor(a), AuditAction.CERT_REVOKED, device=a.device, reason=a.reason, count=n)
        store.close()
    print(f"revoked {n} certificate(s) of {a.device}; CRL written to {ca.crl_path}. "
          "Copy it to the broker and restart it (systemctl restart mosquitto): Mosquitto reads the CRL "
          "only at start-up, and a revoked device already connected stays connected until then.")
    return 0


def _crl(a: argparse.Namespace) -> int:
    from gateway.pki import SiteCA

    path = SiteCA.load(a.ca_dir).write_crl(valid_days=a.valid_days)
    print(f"CRL written to {path}, valid {a.valid_days} days; copy it to the broker and restart it "
          "(systemctl restart mosquitto: Mosquitto reads the CRL only at start-up)")
    return 0


def _signing_key(a: argparse.Namespace) -> int:
    from gateway.commands import generate_signing_key, public_key_pem

    key = generate_signing_key(a.out)
    sys.stdout.write(public_key_pem(key).decode())
    return 0


def _broker_acl(a: argparse.Namespace) -> int:
    text = render_acl(a.site, gateways=a.gateway or [GATEWAY_IDENTITY])
    if a.out:
        Path(a.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _broker_config(a: argparse.Namespace) -> int:
    paths = BrokerPaths(ca_file=a.ca_file, cert_file=a.cert_file, key_file=a.key_file, crl_file=a.crl_file,
                        acl_file=a.acl_file, persistence_dir=a.persistence_dir)
    sys.stdout.write(render_config(Path(a.template).read_text(), paths, port=a.port, bind=a.bind))
    return 0


def _import_events(a: argparse.Namespace) -> int:
    from gateway.event_import import import_events

    store = GatewayStore(a.db)
    try:
        res = import_events(store, a.file)
    except ExportError as err:
        store.close()
        print(f"refused: {a.file}: {err}")
        return 2
    AuditLog(store).record(_actor(a), AuditAction.EVENTS_IMPORTED, device=res.device, file=str(a.file),
                           new=res.new, duplicates=res.duplicates)
    store.close()
    print(f"{res.device} ({res.site}): {res.events} events in file, {res.new} stored, "
          f"{res.duplicates} already stored; contiguous up to seq {res.contiguous}")
    for seq, detail in res.chain_breaks:
        print(f"chain break at seq {seq}: {detail}")
    return 1 if res.chain_breaks else 0


@contextmanager
def _fleet(a: argparse.Namespace) -> Iterator[Any]:
    """The store and a fleet connected to the broker for one command; both closed afterwards, even on error."""
    from gateway.commands import CommandSigner, load_signing_key
    from gateway.fleet import Fleet, FleetLink

    store = GatewayStore(a.db)
    tls = TlsSettings(a.tls_ca, a.tls_cert, a.tls_key) if a.tls_ca else None
    link = FleetLink(store, host=a.broker_host, port=a.broker_port, tls=tls, client_id=GATEWAY_CLI_IDENTITY).start()
    try:
        if not link.wait_connected():
            raise SystemExit("cannot reach the broker")
        yield Fleet(store, CommandSigner(load_signing_key(a.signing_key)), link.publish)
    finally:
        link.stop()
        store.close()


def _push(a: argparse.Namespace) -> int:
    from gateway.catalog_publish import publish_allowlist, publish_catalog

    component = Component(a.component)
    targets = [(a.site, d) for d in a.device] if a.device else None
    if a.build and component is Component.CONFIG:
        raise SystemExit("spd-gateway push: --build makes the catalog or the allow-list; a config is pushed --file")
    if a.build and component is Component.ALLOWLIST and not a.dept:
        raise SystemExit("spd-gateway push: --component allowlist --build needs --dept (whose staff to list)")
    with _fleet(a) as fleet:
        if not a.build:
            doc = json.loads(Path(a.file).read_text(encoding="utf-8"))
            versions = fleet.push(component, doc, requested_by=_actor(a), devices=targets)
        elif component is Component.CATALOG:
            doc, versions = publish_catalog(fleet, fleet.store, requested_by=_actor(a), dept=a.dept, devices=targets,
                                            discharge_grace_s=a.discharge_grace)
            print(f"catalog document version {doc['version']} ({doc['digest'][:19]}): {len(doc['items'])} items, "
                  f"{len(doc['recalled_lots'])} recalled lots, {len(doc['consumed_serials'])} consumed serials, "
                  + ("no census" if doc["patients"] is None else
                     f"{len(doc['patients']['in_house'])} patients in house"))
        else:
            doc, versions = publish_allowlist(fleet, fleet.store, dept=a.dept, requested_by=_actor(a),
                                              devices=targets)
            print(f"allow-list of {a.dept}: {len(doc['badges'])} badges")
    for device, version in versions.items():
        print(f"{device}: {a.component} version {version} published")
    return 0


def _unlock(a: argparse.Namespace) -> int:
    with _fleet(a) as fleet:
        seq = fleet.unlock(a.site, a.device, seconds=a.seconds, requested_by=_actor(a))
    print(f"unlock {a.device} sent (command {seq})")
    return 0


def _lockdown(a: argparse.Namespace) -> int:
    with _fleet(a) as fleet:
        seq = fleet.lockdown(a.site, a.device, on=a.on, reason=a.reason, requested_by=_actor(a))
    print(f"lockdown {'on' if a.on else 'off'} for {a.device} sent (command {seq})")
    return 0


def _rotate(a: argparse.Namespace) -> int:
    with _fleet(a) as fleet:
        seq = fleet.rotate(a.site, a.device, enrol_url=a.enrol_url, requested_by=_actor(a))
    print(f"credential rotation for {a.device} sent (command {seq})")
    return 0


def _devices(a: argparse.Namespace) -> int:
    from gateway.commands import CommandSigner
    from gateway.fleet import Fleet, format_devices

    store = GatewayStore(a.db, synchronous="NORMAL")
    fleet = Fleet(store, CommandSigner(Ed25519PrivateKey.generate()), lambda t, p, r: None,
                  offline_after_s=a.offline_after)
    print(format_devices(fleet.devices()))
    store.close()
    return 0


def _alarms(a: argparse.Namespace) -> int:
    store = GatewayStore(a.db)
    alarms = chain_break_alarms(store)
    for al in alarms:
        print(al)
    for device, seq, body in store.devices.alarm_events():
        print(f"{device} seq {seq}: {body}")
    for link in link_alarms(store):  # decided at the gateway, from every device's events (gateway/linking.py)
        print(link)
    store.close()
    return 1 if alarms else 0


def _audit(a: argparse.Namespace) -> int:
    store = GatewayStore(a.db)
    if a.what == "verify":
        audit = AuditLog(store)
        broken = audit.verify()
        rows = store.audit.count()
        store.close()
        if broken is not None:
            print(f"BROKEN: {broken}")
            return 1
        print(f"audit log intact: {rows} rows, every hash and link holds")
        return 0
    for e in AuditLog(store).entries(device=a.device, limit=a.limit):
        print(f"{e.id}\t{e.at:.0f}\t{e.actor}\t{e.action}\t{e.device}\t{e.outcome}\t{json.dumps(e.detail)}")
    store.close()
    return 0


def register(sub: Any) -> None:
    def by(p: argparse.ArgumentParser) -> None:
        p.add_argument("--by", default=None, help="who asked (default: the login name)")

    p = sub.add_parser("ca-init", help="create the site CA")
    p.add_argument("--ca-dir", type=Path, required=True, help="the site CA directory")
    p.add_argument("--site", required=True, help="the site id (e.g. H1)")
    p.set_defaults(func=_ca_init)

    p = sub.add_parser("enrol-token", help="issue a one-time enrolment token for a device")
    p.add_argument("--ca-dir", type=Path, required=True, help="the site CA directory")
    p.add_argument("--site", required=True, help="the device's site id")
    p.add_argument("--device", required=True, help="the device id the token enrols")
    p.add_argument("--ttl-hours", type=float, default=24.0, help="hours the token stays valid")
    p.add_argument("--db", type=store_location, default=None, help="gateway store, for the audit log "
                   "(a SQLite file, or a postgresql:// URL)")
    by(p)
    p.set_defaults(func=_enrol_token)

    p = sub.add_parser("enrol-serve", help="serve enrolment over HTTPS")
    p.add_argument("--ca-dir", type=Path, required=True, help="the site CA directory")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port to listen on")
    p.add_argument("--broker-host", required=True, help="the broker address handed to enrolled devices")
    p.add_argument("--broker-port", type=int, default=8883, help="the broker port handed to enrolled devices")
    p.add_argument("--signing-key", type=Path, required=True,
                   help="command-signing key; its public half is handed to enrolled devices")
    p.add_argument("--max-per-client", type=int, default=8,
                   help="open connections one address may hold (raise it if devices come through one NAT address)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a client has for the TLS handshake and its whole request")
    p.set_defaults(func=_enrol_serve)

    p = sub.add_parser("revoke", help="revoke a device's certificates and rewrite the CRL")
    p.add_argument("--ca-dir", type=Path, required=True, help="the site CA directory")
    p.add_argument("--device", required=True, help="the device whose certificates are revoked")
    p.add_argument("--reason", default="cessation_of_operation",
                   choices=["key_compromise", "superseded", "cessation_of_operation", "unspecified"],
                   help="the revocation reason written to the CRL")
    p.add_argument("--db", type=store_location, default=None, help="gateway store, for the audit log "
                   "(a SQLite file, or a postgresql:// URL)")
    by(p)
    p.set_defaults(func=_revoke)

    p = sub.add_parser("crl", help="re-issue the CRL (do it before it expires: monthly)")
    p.add_argument("--ca-dir", type=Path, required=True, help="the site CA directory")
    p.add_argument("--valid-days", type=int, default=30, help="days until the CRL expires")
    p.set_defaults(func=_crl)

    p = sub.add_parser("signing-key", help="create the command-signing key; prints its public key")
    p.add_argument("--out", type=Path, required=True, help="where to write the private key (mode 0600)")
    p.set_defaults(func=_signing_key)

    p = sub.add_parser("broker-acl", help="write the Mosquitto ACL for the site(s)")
    p.add_argument("--site", action="append", required=True, help="a site id; repeat for several sites")
    p.add_argument("--gateway", action="append", default=None,
                   help=f"a gateway instance's client id (default {GATEWAY_IDENTITY}); repeat for several instances: "
                        "each gets rights for itself and its fleet link ('<id>-fleet')")
    p.add_argument("--out", type=Path, default=None, help="write the ACL here (default: standard output)")
    p.set_defaults(func=_broker_acl)

    p = sub.add_parser("broker-config", help="render the Mosquitto TLS listener config")
    p.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, help="the Mosquitto configuration template")
    p.add_argument("--port", type=int, default=8883, help="the TLS listener's port")
    p.add_argument("--bind", default="0.0.0.0", help="the TLS listener's address")
    for name, what in (("ca-file", "the site CA certificate"), ("cert-file", "the broker's certificate"),
                       ("key-file", "the broker's key"), ("crl-file", "the CRL"), ("acl-file", "the ACL"),
                       ("persistence-dir", "Mosquitto's persistence directory")):
        p.add_argument(f"--{name}", type=Path, required=True, help=f"{what}, as the broker sees it")
    p.set_defaults(func=_broker_config)

    p = sub.add_parser("import-events", help="store an spd-device export file, exactly once")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("file", type=Path, help="the export file written by spd-device export-events")
    by(p)
    p.set_defaults(func=_import_events)

    for name, fn, helptext in (("push", _push, "publish a new version of config, catalog or allow-list"),
                               ("unlock", _unlock, "send a signed one-time unlock"),
                               ("lockdown", _lockdown, "lock a cabinet down (refuse every badge), or lift it"),
                               ("rotate-credentials", _rotate, "have a device renew its key and certificate")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
        p.add_argument("--signing-key", type=Path, required=True, help="the command-signing key")
        p.add_argument("--broker-host", default="127.0.0.1", help="the MQTT broker")
        p.add_argument("--broker-port", type=int, default=8883, help="the MQTT broker's port")
        p.add_argument("--tls-ca", help="the site CA (mutual TLS to the broker)")
        p.add_argument("--tls-cert", help="the gateway's client certificate")
        p.add_argument("--tls-key", help="the gateway's client key")
        p.add_argument("--site", required=True, help="the device's site id")
        by(p)
        if name == "push":
            p.add_argument("--component", required=True, choices=[c.value for c in Component],
                           help="what to publish")
            source = p.add_mutually_exclusive_group(required=True)
            source.add_argument("--file", type=Path, help="the component as JSON")
            source.add_argument("--build", action="store_true",
                                help="build it from the gateway's tables: the catalog document (items, recalls, "
                                     "stock lists, consumed serials, census) or the allow-list of --dept")
            p.add_argument("--dept", default=None, help="with --build: the department (allow-list: whose staff; "
                                                        "catalog: only its stock list)")
            p.add_argument("--discharge-grace", type=float, default=86400.0, metavar="SECONDS",
                           help="with --build of the catalog: how long a discharged wristband is still charged")
            p.add_argument("--device", action="append", help="only these devices (default: all known)")
        elif name == "unlock":
            p.add_argument("--device", required=True, help="the cabinet to unlock")
            p.add_argument("--seconds", type=int, default=5, help="how long the latch stays released")
        elif name == "lockdown":
            p.add_argument("--device", required=True, help="the cabinet to lock down")
            onoff = p.add_mutually_exclusive_group(required=True)
            onoff.add_argument("--on", dest="on", action="store_true", help="refuse every badge")
            onoff.add_argument("--off", dest="on", action="store_false", help="lift the lockdown")
            p.add_argument("--reason", required=True, help="why (recorded and shown on the device)")
        else:
            p.add_argument("--device", required=True, help="the device to renew its credentials")
            p.add_argument("--enrol-url", required=True, help="the enrolment service, https://host:port")
        p.set_defaults(func=fn)

    p = sub.add_parser("devices", help="list devices: online/offline, last seen, version, backlog, alarms")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("--offline-after", type=float, default=120.0,
                   help="seconds without a state report before a device is listed offline")
    p.set_defaults(func=_devices)

    p = sub.add_parser("alarms", help="hash-chain breaks, alarm events and not_linked alarms")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.set_defaults(func=_alarms)

    p = sub.add_parser("audit", help="who sent which command, enrolments, revocations, imports; "
                                     "'audit verify' checks the hash chain")
    p.add_argument("what", nargs="?", choices=["list", "verify"], default="list",
                   help="list (default) the rows, or verify the chain: exit 1 naming the first broken row")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("--device", default=None, help="only entries about this device")
    p.add_argument("--limit", type=int, default=100, help="show at most this many entries")
    p.set_defaults(func=_audit)
