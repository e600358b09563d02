"""``spd-gateway web``, ``user``, ``web-token`` and ``web-cert``: serve the screen, manage its accounts and tokens."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import re
import sys
import time
from pathlib import Path
from typing import Any

from gateway.audit import AuditAction, AuditLog
from gateway.data.engine import DB_HELP, store_location
from gateway.store import GatewayStore
from gateway.web.roles import Role

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _actor(a: argparse.Namespace) -> str:
    return str(a.by or getpass.getuser())


def _read_password(a: argparse.Namespace, username: str) -> str | None:
    from gateway.web.passwords import WeakPassword, check_password_rules

    if a.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {username}: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return None
    try:
        check_password_rules(password, username=username)
    except WeakPassword as err:
        print(f"refused: {err}", file=sys.stderr)
        return None
    return password


def _user(a: argparse.Namespace) -> int:
    from gateway.web.passwords import hash_password

    store = GatewayStore(a.db)
    try:
        audit = AuditLog(store)
        if a.action == "list":
            for acc in store.accounts.accounts():
                print(f"{acc.username}\t{acc.role}\t{'disabled' if acc.disabled else 'enabled'}")
            return 0
        if not a.name or not NAME.match(a.name):
            print("give the account's name: letters, digits, '_', '.', '-' (at most 64)", file=sys.stderr)
            return 2
        now = time.time()
        if a.action == "add":
            if a.role is None:
                print("spd-gateway user add needs --role", file=sys.stderr)
                return 2
            password = _read_password(a, a.name)
            if password is None:
                return 2
            if not store.accounts.add(a.name, a.role, hash_password(password), now=now):
                print(f"there is an account {a.name} already", file=sys.stderr)
                return 1
            audit.record(_actor(a), AuditAction.WEB_ACCOUNT_CHANGED, account=a.name, change="added", role=a.role)
            print(f"account {a.name} ({a.role}) added")
            return 0
        if store.accounts.account(a.name) is None:
            print(f"no account {a.name}", file=sys.stderr)
            return 1
        if a.action == "passwd":
            password = _read_password(a, a.name)
            if password is None:
                return 2
            store.accounts.set_password(a.name, hash_password(password), now=now)
            change = "password changed (its sessions ended)"
        else:
            store.accounts.set_disabled(a.name, a.action == "disable", now=now)
            change = "disabled (its sessions ended)" if a.action == "disable" else "enabled"
        audit.record(_actor(a), AuditAction.WEB_ACCOUNT_CHANGED, account=a.name, change=change.split(" (")[0])
        print(f"account {a.name}: {change}")
        return 0
    finally:
        store.close()


def _token(a: argparse.Namespace) -> int:
    from gateway.web.auth import make_api_token, secret_hash

    store = GatewayStore(a.db)
    try:
        if a.action == "list":
            for t in store.accounts.tokens():
                state = "revoked" if t.revoked_at is not None else "active"
                print(f"{t.name}\t{t.role}\t{state}\tcreated by {t.created_by}")
            return 0
        if not a.name or not NAME.match(a.name):
            print("give the token's --name: letters, digits, '_', '.', '-' (at most 64)", file=sys.stderr)
            return 2
        audit = AuditLog(store)
        if a.action == "revoke":
            if not store.accounts.revoke_token(a.name, now=time.time()):
                print(f"no active token {a.name}", file=sys.stderr)
                return 1
            audit.record(_actor(a), AuditAction.API_TOKEN_CHANGED, token=a.name, change="revoked")
            print(f"token {a.name} revoked")
            return 0
        if a.role is None:
            print("spd-gateway web-token create needs --role", file=sys.stderr)
            return 2
        token = make_api_token(a.name)
        if not store.accounts.add_token(a.name, a.role, secret_hash(token), by=_actor(a), now=time.time()):
            print(f"there is a token named {a.name} already (revoke it, or choose another name)", file=sys.stderr)
            return 1
        audit.record(_actor(a), AuditAction.API_TOKEN_CHANGED, token=a.name, change="created", role=a.role)
        print(token)
        print(f"API token {a.name} ({a.role}); shown only now: send it as 'Authorization: Bearer <token>'",
              file=sys.stderr)
        return 0
    finally:
        store.close()


def _cert(a: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from gateway.pki import CertRole, SiteCA, write_private_key

    ca = SiteCA.load(a.ca_dir)
    key, cert = ca.issue_with_new_key(a.name, role=CertRole.SERVER, dns_names=tuple(a.dns or ()),
                                      ip_addresses=tuple(a.ip or ()), valid_days=a.valid_days)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = a.out_dir / "web.crt", a.out_dir / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)
    write_private_key(key_path, key)
    print(f"web certificate for {a.name} written to {cert_path} (with the site CA) and {key_path}; "
          f"[web] cert_file and key_file name them. Browsers trust it once the site CA is installed "
          f"(fingerprint {ca.fingerprint})")
    return 0


def _web(a: argparse.Namespace) -> int:
    from gateway.config import build_config, read_gateway_file
    from gateway.web.server import WebServer
    from gateway.web.settings import check_web_config
    from gateway.web.unlock import on_demand_unlock
    from spd_common.toml_config import ConfigError

    source = str(a.config) if a.config is not None else "<command line>"
    try:
        fields = read_gateway_file(a.config) if a.config is not None else {}
        cfg = build_config(fields, {"db_path": a.db}, source=source)
        overrides: dict[str, Any] = {k: v for k, v in (("host", a.host), ("port", a.port)) if v is not None}
        web = dataclasses.replace(cfg.web, **overrides)
        check_web_config(web, source=source)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    store = GatewayStore(cfg.db_path)
    try:
        WebServer(store, web, unlock=on_demand_unlock(store, cfg), books=cfg.books).run()
    finally:
        store.close()
    return 0


def register(sub: Any) -> None:
    roles = [r.value for r in Role]
    p = sub.add_parser("web", help="serve the supervisor's screen and its JSON API (docs/web.md); "
                                   "spd-gateway run serves it too with [web] enabled = true")
    p.add_argument("--config", type=Path, default=None, help="the gateway configuration file ([store] and [web])")
    p.add_argument("--db", type=store_location, default=None, help=DB_HELP + " (overrides [store])")
    p.add_argument("--host", default=None, help="listen address (overrides [web] host)")
    p.add_argument("--port", type=int, default=None, help="listen port (overrides [web] port)")
    p.set_defaults(func=_web)

    p = sub.add_parser("user", help="the screen's accounts: add, passwd, disable, enable, list")
    p.add_argument("action", choices=["add", "passwd", "disable", "enable", "list"], help="what to do")
    p.add_argument("name", nargs="?", default=None, help="the account's name (not for list)")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("--role", choices=roles, default=None, help="the account's role (add)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input instead of asking twice")
    p.add_argument("--by", default=None, help="who did it (default: the login name), for the audit log")
    p.set_defaults(func=_user)

    p = sub.add_parser("web-token", help="API tokens for integrations: create (printed once), list, revoke")
    p.add_argument("action", choices=["create", "list", "revoke"], help="what to do")
    p.add_argument("--db", type=store_location, required=True, help=DB_HELP)
    p.add_argument("--name", default=None, help="the token's name (the integration using it)")
    p.add_argument("--role", choices=roles, default=None, help="the role the token acts with (create)")
    p.add_argument("--by", default=None, help="who did it (default: the login name), for the audit log")
    p.set_defaults(func=_token)

    p = sub.add_parser("web-cert", help="issue the screen's TLS certificate and key from the site CA")
    p.add_argument("--ca-dir", type=Path, required=True, help="the site CA directory")
    p.add_argument("--out-dir", type=Path, required=True, help="where to write web.crt and web.key")
    p.add_argument("--name", required=True, help="the server's name (certificate CN), e.g. spd-gw.hospital.local")
    p.add_argument("--dns", action="append", help="a DNS name browsers use for it; repeat for several")
    p.add_argument("--ip", action="append", help="an IP address browsers use for it; repeat for several")
    p.add_argument("--valid-days", type=int, default=397, help="days the certificate is valid")
    p.set_defaults(func=_cert)
