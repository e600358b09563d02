"""The gateway's configuration file (TOML): one strict loader behind ``spd-gateway run`` and the systemd unit.

A hospital runs exactly what was tested: ``spd-gateway run --config
/etc/spd-gateway/gateway.toml`` is both the systemd ``ExecStart`` and the
command the test harnesses start. Command-line flags override the file, key
by key (a site engineer trying another HIS port need not edit the file).

The file is parsed as strictly as the device's (both read it with
:class:`~spd_common.toml_config.Section`): an unknown section or key, a
wrong type or a value out of range stops the gateway at start-up with
``file: key: reason``, never a silent default. Relative paths are relative
to the file. Secrets never appear on a command line (where ``ps`` shows them
to every user): the HIS bearer token comes from ``his.token_file`` or the
environment variable named by ``his.token_env`` (``SPD_HIS_TOKEN`` when
neither is set). Sections::

    [run]         part ("all", the default | "ingest" | "books" | "his": one part of the gateway in this process,
                  :mod:`gateway.parts`; the systemd template unit spd-gateway@.service gives it as --part)
    [store]       path (a SQLite file, the default) | url (postgresql://user@host:port/db: PostgreSQL)
    [broker]      host, port | hosts (a broker cluster's nodes, "host:port" each), mqtt_version ("5" | "3.1.1"),
                  client_id, share_group; [broker.tls] ca_file, cert_file, key_file
    [his]         protocol ("mllp" | "http"), host, port (mllp) or url, token_file | token_env (http),
                  lanes, timeout_s, backoff_max_s, facility, sending_facility
    [lease]       ttl_s
    [fleet]       signing_key; cert_file, key_file (the fleet link's own certificate, CN {client_id}-fleet,
                  required with [broker.tls]: the broker makes each connection's client id its certificate's name)
    [adt]         host, port (absent: no ADT listener), discharge_grace_s
    [alarms]      not_linked_within_s (a cabinet take charged on no device by then raises one alarm)
    [metrics]     enabled, listen ("host:port", default 127.0.0.1:9108), offline_after_s (docs/metrics.md)
    [notify]      offline_after_s, his_down_after_s, check_every_s, retry_first_s, retry_max_s, give_up_after_s;
                  [notify.smtp] host, port, starttls, ca_file, username, password_file | password_env, from, to,
                  timeout_s; [notify.webhook] url, secret_file | secret_env, ca_file, timeout_s (docs/notify.md)
    [web]         enabled, host, port, cert_file, key_file, session_lifetime_s, login_attempts, login_window_s,
                  offline_after_s, utc_offset_minutes (the supervisor's screen, gateway/web/settings.py)
    [books]       expiry_windows_days, abnormal_*, replenish_*, utc_offset_minutes; [books.routes]
                  (stock alerts and replenishment, :mod:`gateway.books.settings`)

``deploy/examples/gateway.toml`` shows every key; docs/deploy.md explains them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.data.engine import is_postgres_url, store_location
from gateway.parts import PARTS
from spd_common.mqtt import MQTT_VERSIONS, Address, TlsSettings, parse_addresses
from spd_common.toml_config import ConfigError, Section, parse_toml, read_config_text

if TYPE_CHECKING:  # gateway.app pulls in every service; the parser of spd-gateway's other commands need not
    from gateway.app import GatewayConfig

DEFAULT_PATH = Path("/etc/spd-gateway/gateway.toml")
DEFAULT_TOKEN_ENV = "SPD_HIS_TOKEN"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # also a share-group name: no MQTT wildcards or '/'
_HOST = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")
_FACILITY = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")  # an HL7 HD component: no delimiters


def _path(s: Section, name: str, base: Path) -> Path:
    v = s.get_str(name)
    if not v:
        raise s.error(name, "must not be empty")
    p = Path(v)
    return p if p.is_absolute() else base / p


def read_secret_file(path: Path, *, source: str, key: str) -> str:
    """A secret from a file: the first line, stripped; refused when missing, empty or readable by everyone."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, key, f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(source, key, f"{path} cannot be read: {err}") from None
    if st.st_mode & stat.S_IROTH:
        raise ConfigError(source, key, f"{path} is readable by every user: chmod o-r it (it holds a secret)")
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(source, key, f"{path} is empty")
    return secret


def _secret_from_env(name: str, *, source: str, key: str, required: bool) -> str | None:
    v = os.environ.get(name, "").strip()
    if not v and required:
        raise ConfigError(source, key, f"environment variable {name} is not set")
    return v or None


def parse_gateway_config(doc: Mapping[str, Any], *, source: str = "<config>",
                         base_dir: Path | None = None) -> dict[str, Any]:
    """The :class:`GatewayConfig` fields a document sets (only those: defaults and flags fill the rest)."""
    base = base_dir or Path(".")
    top = Section(dict(doc), source=source)
    out: dict[str, Any] = {}

    r = top.section("run", optional=True)
    if r is not None:
        if r.has("part"):
            out["part"] = r.get_str("part", choices=PARTS)
        r.done()

    s = top.section("store", optional=True)
    if s is not None:
        url = s.get_str("url", None)
        if url is not None:
            if s.has("path"):
                raise ConfigError(source, s.key("url"), "give either path (SQLite) or url (PostgreSQL), not both")
            if not is_postgres_url(url):
                raise ConfigError(source, s.key("url"), f"must start with postgresql:// (got {url[:20]!r})")
            if urlsplit(url).password:
                raise ConfigError(source, s.key("url"), "must not hold a password (a secret): the PostgreSQL "
                                  "client reads it from ~/.pgpass or PGPASSFILE, as for psql")
            out["db_path"] = url
        else:
            out["db_path"] = _path(s, "path", base)
        s.done()

    b = top.section("broker", optional=True)
    if b is not None:
        t = b.section("tls", optional=True)
        if t is not None:
            ca, cert, key = (_path(t, n, base) for n in ("ca_file", "cert_file", "key_file"))
            out["tls"] = TlsSettings(str(ca), str(cert), str(key))
            t.done()
        if b.has("host"):
            out["broker_host"] = b.get_str("host", pattern=_HOST)
        if b.has("port"):
            out["broker_port"] = b.get_int("port", min=1, max=65535)
        if b.has("hosts"):  # a broker cluster: the first node, then the others in turn after a drop
            if b.has("host") or b.has("port"):
                raise b.error("hosts", "give hosts (a cluster's nodes) or host and port, not both")
            nodes = broker_addresses(b, "hosts")
            out["broker_host"], out["broker_port"] = nodes[0]
            out["broker_fallbacks"] = nodes[1:]
        if b.has("mqtt_version"):
            out["mqtt_version"] = b.get_str("mqtt_version", choices=tuple(MQTT_VERSIONS))
        if b.has("client_id"):
            out["client_id"] = b.get_str("client_id", pattern=_CLIENT_ID)
        if b.has("share_group"):
            if out.get("mqtt_version", "5") != "5":
                raise b.error("share_group", "a shared subscription needs mqtt_version = \"5\"")
            out["share_group"] = b.get_str("share_group", pattern=_CLIENT_ID)
        b.done()

    h = top.section("his", optional=True)
    if h is not None:
        protocol = h.get_str("protocol", "mllp", choices=("mllp", "http"))
        out["his_protocol"] = protocol
        if protocol == "mllp":
            for name in ("url", "token_file", "token_env"):
                if h.has(name):
                    raise h.error(name, 'only with protocol = "http"')
            if h.has("host"):
                out["his_host"] = h.get_str("host", pattern=_HOST)
            if h.has("port"):
                out["his_port"] = h.get_int("port", min=1, max=65535)
        else:
            for name in ("host", "port"):
                if h.has(name):
                    raise h.error(name, 'only with protocol = "mllp" (the HTTP HIS is addressed by url)')
            url = h.get_str("url")
            if not url.startswith(("http://", "https://")):
                raise h.error("url", f"{url!r} is not an http:// or https:// URL")
            out["his_url"] = url
            if h.has("token_file") and h.has("token_env"):
                raise h.error("token_env", "give token_file or token_env, not both")
            if h.has("token_file"):
                path = _path(h, "token_file", base)
                out["his_token"] = read_secret_file(path, source=source, key=h.key("token_file"))
            elif h.has("token_env"):
                env = h.get_str("token_env", pattern=_ENV_NAME)
                out["his_token"] = _secret_from_env(env, source=source, key=h.key("token_env"), required=True)
        if h.has("lanes"):
            out["his_lanes"] = h.get_int("lanes", min=1, max=64)
        if h.has("timeout_s"):
            out["his_timeout_s"] = h.get_float("timeout_s", min=0.1, max=300.0)
        if h.has("backoff_max_s"):
            out["his_backoff_max_s"] = h.get_float("backoff_max_s", min=0.1, max=3600.0)
        if h.has("facility"):
            out["facility"] = h.get_str("facility", pattern=_FACILITY)
        if h.has("sending_facility"):
            out["sending_facility"] = h.get_str("sending_facility", pattern=_FACILITY)
        h.done()

    le = top.section("lease", optional=True)
    if le is not None:
        if le.has("ttl_s"):
            out["lease_ttl_s"] = le.get_float("ttl_s", min=1.0, max=600.0)
        le.done()

    f = top.section("fleet", optional=True)
    if f is not None:
        out["signing_key"] = _path(f, "signing_key", base)
        if f.has("cert_file") or f.has("key_file"):
            tls = out.get("tls")
            if tls is None:
                raise f.error("cert_file", "the fleet link's certificate needs [broker.tls] (its ca_file)")
            out["fleet_tls"] = TlsSettings(tls.ca_file, str(_path(f, "cert_file", base)),
                                           str(_path(f, "key_file", base)))
        f.done()

    a = top.section("adt", optional=True)
    if a is not None:
        if a.has("host"):
            out["adt_host"] = a.get_str("host", pattern=_HOST)
        if a.has("port"):
            out["adt_port"] = a.get_int("port", min=1, max=65535)
        if a.has("discharge_grace_s"):
            out["discharge_grace_s"] = a.get_float("discharge_grace_s", min=0.0, max=30 * 86400.0)
        a.done()

    bk = top.section("books", optional=True)
    if bk is not None:
        from gateway.books.settings import parse_books_section

        out["books"] = parse_books_section(bk)

    al = top.section("alarms", optional=True)
    if al is not None:
        if al.has("not_linked_within_s"):
            out["not_linked_within_s"] = al.get_float("not_linked_within_s", min=60.0, max=7 * 86400.0)
        al.done()

    m = top.section("metrics", optional=True)
    if m is not None:
        _metrics_section(m, out)
    n = top.section("notify", optional=True)
    if n is not None:
        out["notify"] = _notify_section(n, base, source)
    w = top.section("web", optional=True)
    if w is not None:
        from gateway.web.settings import parse_web_section

        out["web"] = parse_web_section(w, base=base, source=source)

    top.done()
    return out


def _listen(s: Section, name: str) -> str:
    from gateway.metrics import parse_listen

    v = str(s.get_str(name))
    try:
        parse_listen(v)
    except ValueError as err:
        raise s.error(name, str(err)) from None
    return v


def _metrics_section(m: Section, out: dict[str, Any]) -> None:
    """``[metrics]``: the section switches the /metrics server on (``enabled = false`` keeps it off)."""
    from gateway.metrics import DEFAULT_LISTEN

    listen = _listen(m, "listen") if m.has("listen") else DEFAULT_LISTEN
    if m.get_bool("enabled", True):
        out["metrics_listen"] = listen
    if m.has("offline_after_s"):
        out["metrics_offline_after_s"] = m.get_float("offline_after_s", min=5.0, max=30 * 86400.0)
    m.done()


def _secret(s: Section, base: Path, source: str, stem: str, *, required: bool) -> str | None:
    """``{stem}_file`` or ``{stem}_env``: a secret from a file (not readable by everyone) or the environment."""
    f, e = f"{stem}_file", f"{stem}_env"
    if s.has(f) and s.has(e):
        raise s.error(e, f"give {f} or {e}, not both")
    if s.has(f):
        return read_secret_file(_path(s, f, base), source=source, key=s.key(f))
    if s.has(e):
        return _secret_from_env(s.get_str(e, pattern=_ENV_NAME), source=source, key=s.key(e), required=True)
    if required:
        raise s.error(f, f"is required (or {e})")
    return None


def _notify_section(n: Section, base: Path, source: str) -> Any:
    from gateway.notify_settings import NotifySettings, SmtpSettings, WebhookSettings

    kw: dict[str, Any] = {}
    for name, lo, hi in (("offline_after_s", 30.0, 30 * 86400.0), ("his_down_after_s", 10.0, 7 * 86400.0),
                         ("check_every_s", 0.2, 600.0), ("retry_first_s", 0.1, 3600.0),
                         ("retry_max_s", 1.0, 86400.0), ("give_up_after_s", 60.0, 30 * 86400.0)):
        if n.has(name):
            kw[name] = n.get_float(name, min=lo, max=hi)
    sm = n.section("smtp", optional=True)
    if sm is not None:
        to = sm.get_list("to")
        if not to or not all(isinstance(a, str) and "@" in a for a in to):
            raise sm.error("to", "must be a list of e-mail addresses")
        sender = sm.get_str("from")
        if "@" not in sender:
            raise sm.error("from", f"{sender!r} is not an e-mail address")
        username = sm.get_str("username") if sm.has("username") else None
        password = _secret(sm, base, source, "password", required=username is not None)
        kw["smtp"] = SmtpSettings(
            host=sm.get_str("host", pattern=_HOST), sender=sender, recipients=tuple(to),
            port=sm.get_int("port", 25, min=1, max=65535), starttls=sm.get_bool("starttls", False),
            ca_file=str(_path(sm, "ca_file", base)) if sm.has("ca_file") else None,
            username=username, password=password, timeout_s=sm.get_float("timeout_s", 10.0, min=0.5, max=300.0))
        if password is not None and not kw["smtp"].starttls:
            raise sm.error("starttls", "a password goes only over STARTTLS: set starttls = true")
        sm.done()
    wh = n.section("webhook", optional=True)
    if wh is not None:
        url = wh.get_str("url")
        if not url.startswith(("http://", "https://")):
            raise wh.error("url", f"{url!r} is not an http:// or https:// URL")
        secret = _secret(wh, base, source, "secret", required=True)
        assert secret is not None
        if wh.has("ca_file") and not url.startswith("https://"):
            raise wh.error("ca_file", "only with an https:// url")
        kw["webhook"] = WebhookSettings(url=url, secret=secret,
                                        timeout_s=wh.get_float("timeout_s", 5.0, min=0.5, max=120.0),
                                        ca_file=str(_path(wh, "ca_file", base)) if wh.has("ca_file") else None)
        wh.done()
    n.done()
    settings = NotifySettings(**kw)
    if settings.retry_first_s > settings.retry_max_s:
        raise n.error("retry_first_s", "must not be more than retry_max_s")
    return settings


def broker_addresses(s: Section, name: str) -> tuple[Address, ...]:
    """A broker cluster's nodes: a list of at least one ``"host:port"``, none twice."""
    try:
        return parse_addresses(s.get_list(name))
    except ValueError as err:
        raise s.error(name, str(err)) from None


def read_gateway_file(path: str | Path) -> dict[str, Any]:
    """Read and parse a configuration file; every problem is a :class:`ConfigError` naming the file."""
    p = Path(path)
    doc = parse_toml(read_config_text(p), source=str(p))
    return parse_gateway_config(doc, source=str(p), base_dir=p.absolute().parent)


def build_config(file_fields: Mapping[str, Any], overrides: Mapping[str, Any], *,
                 source: str = "<command line>") -> GatewayConfig:
    """Defaults, then the file, then the flags; checked as a whole (e.g. ``http`` needs a URL)."""
    from gateway.app import GatewayConfig

    fields = {**file_fields, **{k: v for k, v in overrides.items() if v is not None}}
    if fields.get("db_path") is None:
        raise ConfigError(source, "store.path", "is required (or store.url; in the file, or --db)")
    if "broker_port" not in fields:
        fields["broker_port"] = 8883 if fields.get("tls") is not None else 1883
    if fields.get("his_protocol", "mllp") == "http":
        if not fields.get("his_url"):
            raise ConfigError(source, "his.url", 'is required with protocol = "http"')
        if fields.get("his_token") is None:
            fields["his_token"] = _secret_from_env(DEFAULT_TOKEN_ENV, source=source, key="his.token_env",
                                                   required=False)
    known = {f.name for f in dataclasses.fields(GatewayConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:  # a programming error, not a technician's: the flag table below names a missing field
        raise TypeError(f"not GatewayConfig fields: {unknown}")
    return GatewayConfig(**fields)


# ---------------------------------------------------------------- the command line: flags over the file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``spd-gateway run``; each overrides the matching key of ``--config``."""
    p.add_argument("--config", type=Path, default=None,
                   help=f"the gateway configuration file (TOML; the systemd unit uses {DEFAULT_PATH}); "
                        "the options below override its keys")
    p.add_argument("--check", action="store_true",
                   help="check the configuration, print the effective settings (secrets hidden) and exit")
    p.add_argument("--part", choices=PARTS, default=None,
                   help="run one part of the gateway in this process, or all of them ([run] part; default all): "
                        "ingest (MQTT, group commit, acks), books (charging, the link watch, the stock ledger, the "
                        "fleet link, ADT, the screen), his (the HIS lanes, incidents, /metrics); one process per "
                        "part, all on one store and configuration file (docs/scale.md)")
    p.add_argument("--db", type=store_location, default=None,
                   help="the gateway store: a SQLite file ([store] path) or a postgresql:// URL ([store] url)")
    p.add_argument("--broker-host", default=None, help="MQTT broker host ([broker] host; default 127.0.0.1)")
    p.add_argument("--broker-port", type=int, default=None,
                   help="MQTT broker port ([broker] port; default 8883 with TLS, else 1883)")
    p.add_argument("--tls-ca", type=Path, default=None, help="the site CA, for mutual TLS to the broker "
                   "([broker.tls] ca_file; --tls-ca, --tls-cert and --tls-key go together)")
    p.add_argument("--tls-cert", type=Path, default=None,
                   help="the gateway's client certificate ([broker.tls] cert_file)")
    p.add_argument("--tls-key", type=Path, default=None, help="the gateway's client key ([broker.tls] key_file)")
    p.add_argument("--client-id", default=None,
                   help="MQTT client id, also this instance's name in the charging lease ([broker] client_id)")
    p.add_argument("--share-group", default=None,
                   help="MQTT 5 shared subscription group, for several gateways on one store ([broker] share_group)")
    p.add_argument("--signing-key", type=Path, default=None,
                   help="command-signing key: also run the fleet link (applied versions, re-sends to devices "
                        "behind) ([fleet] signing_key)")
    p.add_argument("--fleet-tls-cert", type=Path, default=None,
                   help="the fleet link's own certificate, CN <client-id>-fleet, needed with TLS and a signing key "
                        "([fleet] cert_file; the CA is --tls-ca's)")
    p.add_argument("--fleet-tls-key", type=Path, default=None, help="the fleet link's key ([fleet] key_file)")
    p.add_argument("--his-protocol", choices=["mllp", "http"], default=None,
                   help="HL7 v2 over MLLP or JSON over HTTP ([his] protocol; default mllp)")
    p.add_argument("--his-url", default=None, help="base URL of the HIS JSON API, with --his-protocol http "
                   "([his] url); the bearer token comes from [his] token_file or token_env, or $SPD_HIS_TOKEN")
    p.add_argument("--his-token-file", type=Path, default=None,
                   help="file holding the HIS bearer token ([his] token_file); never the token itself")
    p.add_argument("--his-host", default=None, help="HIS MLLP host ([his] host; default 127.0.0.1)")
    p.add_argument("--his-port", type=int, default=None, help="HIS MLLP port ([his] port; default 2575)")
    p.add_argument("--his-timeout", type=float, default=None,
                   help="seconds to wait for the HIS's answer to one charge ([his] timeout_s; default 5)")
    p.add_argument("--his-backoff-max", type=float, default=None,
                   help="longest pause between retries while the HIS does not answer ([his] backoff_max_s; default 30)")
    p.add_argument("--his-lanes", type=int, default=None, choices=range(1, 65), metavar="1..64",
                   help="parallel HIS connections; a patient's charges always share one ([his] lanes; default 4)")
    p.add_argument("--facility", default=None, help="receiving facility, MSH-6 ([his] facility; default HOSP)")
    p.add_argument("--sending-facility", default=None,
                   help="sending facility, MSH-4 ([his] sending_facility; default SPD)")
    p.add_argument("--lease-ttl", type=float, default=None,
                   help="seconds before another instance may take over charging when this one dies "
                        "([lease] ttl_s; default 6)")
    p.add_argument("--adt-host", default=None, help="address the ADT listener binds ([adt] host; default 127.0.0.1)")
    p.add_argument("--adt-port", type=int, default=None,
                   help="port of the ADT listener ([adt] port; without it no ADT listener runs)")
    p.add_argument("--discharge-grace", type=float, default=None,
                   help="seconds after a discharge during which charges for the stay are still accepted "
                        "([adt] discharge_grace_s; default 86400)")
    p.add_argument("--not-linked-within", type=float, default=None, metavar="SECONDS",
                   help="a cabinet take charged on no device this long after is one not_linked alarm "
                        "([alarms] not_linked_within_s; default 1800)")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve the Prometheus metrics at http://HOST:PORT/metrics ([metrics] listen; default: "
                        "not served without a [metrics] section)")


def _tls_flags(a: argparse.Namespace) -> TlsSettings | None:
    given = [a.tls_ca, a.tls_cert, a.tls_key]
    if not any(given):
        return None
    if not all(given):
        raise ConfigError("<command line>", "--tls-ca/--tls-cert/--tls-key", "go together: give all three or none")
    return TlsSettings(str(a.tls_ca), str(a.tls_cert), str(a.tls_key))


def _fleet_tls_flags(a: argparse.Namespace, tls: TlsSettings | None) -> TlsSettings | None:
    if a.fleet_tls_cert is None and a.fleet_tls_key is None:
        return None
    if a.fleet_tls_cert is None or a.fleet_tls_key is None:
        raise ConfigError("<command line>", "--fleet-tls-cert/--fleet-tls-key", "go together: give both or none")
    if tls is None:
        raise ConfigError("<command line>", "--fleet-tls-cert", "needs the broker's TLS (--tls-ca or [broker.tls])")
    return TlsSettings(tls.ca_file, str(a.fleet_tls_cert), str(a.fleet_tls_key))


def _listen_flag(value: str | None) -> str | None:
    if value is None:
        return None
    from gateway.metrics import parse_listen

    try:
        parse_listen(value)
    except ValueError as err:
        raise ConfigError("<command line>", "--metrics-listen", str(err)) from None
    return value


def config_from_args(a: argparse.Namespace) -> GatewayConfig:
    """The effective configuration of ``spd-gateway run``: ``--config`` (if any), overridden by the flags."""
    file_fields = read_gateway_file(a.config) if a.config is not None else {}
    token = None
    if a.his_token_file is not None:
        token = read_secret_file(a.his_token_file, source="<command line>", key="--his-token-file")
    tls = _tls_flags(a)
    overrides = {
        "db_path": a.db, "broker_host": a.broker_host, "broker_port": a.broker_port, "tls": tls,
        "fleet_tls": _fleet_tls_flags(a, tls or file_fields.get("tls")),
        "client_id": a.client_id, "share_group": a.share_group, "signing_key": a.signing_key,
        "his_protocol": a.his_protocol, "his_url": a.his_url, "his_token": token, "his_host": a.his_host,
        "his_port": a.his_port, "his_timeout_s": a.his_timeout, "his_backoff_max_s": a.his_backoff_max,
        "his_lanes": a.his_lanes, "facility": a.facility, "sending_facility": a.sending_facility,
        "lease_ttl_s": a.lease_ttl, "adt_host": a.adt_host, "adt_port": a.adt_port,
        "discharge_grace_s": a.discharge_grace, "not_linked_within_s": a.not_linked_within,
        "metrics_listen": _listen_flag(a.metrics_listen), "part": a.part,
    }
    if overrides["his_protocol"] == "mllp" and file_fields.get("his_protocol") == "http":
        # switching protocol on the command line drops the file's HTTP settings with it
        file_fields = {k: v for k, v in file_fields.items() if k not in ("his_url", "his_token")}
    return build_config(file_fields, overrides, source=str(a.config) if a.config is not None else "<command line>")


def check_files(cfg: GatewayConfig, *, source: str = "<config>") -> None:
    """The files the configuration names can be read: TLS key pair and CA, the command-signing key.

    Checked before anything starts (and by ``--check``), so a wrong path is one line naming the key,
    not a traceback from deep inside a service.
    """
    files: list[tuple[str, str]] = []
    if cfg.tls is not None:
        files += [("broker.tls.ca_file", cfg.tls.ca_file), ("broker.tls.cert_file", cfg.tls.cert_file),
                  ("broker.tls.key_file", cfg.tls.key_file)]
    if cfg.fleet_tls is not None:
        files += [("fleet.cert_file", cfg.fleet_tls.cert_file), ("fleet.key_file", cfg.fleet_tls.key_file)]
    if cfg.tls is not None and cfg.signing_key is not None and cfg.fleet_tls is None:
        raise ConfigError(source, "fleet.cert_file", "over TLS the fleet link needs its own certificate "
                                                     f"(CN {cfg.client_id}-fleet): set cert_file and key_file")
    for key, name in files:
        try:
            Path(name).read_bytes()
        except OSError as err:
            raise ConfigError(source, key, f"{name} cannot be read: {err.strerror}") from None
    if cfg.signing_key is not None:
        from gateway.commands import SigningError, load_signing_key

        try:
            load_signing_key(cfg.signing_key)
        except OSError as err:
            raise ConfigError(source, "fleet.signing_key",
                              f"{cfg.signing_key} cannot be read: {err.strerror}") from None
        except (SigningError, ValueError) as err:
            raise ConfigError(source, "fleet.signing_key", f"{cfg.signing_key}: {err}") from None


def describe(cfg: GatewayConfig) -> str:
    """The effective settings, one ``field = value`` a line, the HIS token shown only as set or not."""
    lines = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "his_token":
            v = "(set)" if v else "(not set)"
        elif f.name == "db_path" and isinstance(v, str) and urlsplit(v).password:  # from --db
            v = v.replace(f":{urlsplit(v).password}@", ":(hidden)@")
        lines.append(f"{f.name} = {v}")
    return "\n".join(lines)
