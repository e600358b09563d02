"""The ``[web]`` section of the gateway configuration file.

::

    [web]
    enabled = true               # spd-gateway run also serves the screen (spd-gateway web serves it regardless)
    host = "0.0.0.0"             # listen address (default 127.0.0.1)
    port = 8443                  # default 8443
    cert_file = "web.crt"        # TLS certificate and key issued by the site CA (spd-gateway web-cert);
    key_file = "web.key"         # without them only a loopback address may be used
    session_lifetime_s = 28800   # a sign-in lasts this long (default 8 h)
    login_attempts = 5           # failed sign-ins allowed per account and per address ...
    login_window_s = 300         # ... within this many seconds; then 429 until the window passes
    offline_after_s = 120        # a device without a state report for this long is shown offline
    utc_offset_minutes = 480     # the site's time zone, for "today" and the per-day charts
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from spd_common.toml_config import ConfigError, Section


@dataclass(frozen=True, slots=True)
class WebConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8443
    cert_file: Path | None = None
    key_file: Path | None = None
    session_lifetime_s: float = 8 * 3600.0
    login_attempts: int = 5
    login_window_s: float = 300.0
    offline_after_s: float = 120.0
    utc_offset_minutes: int = 480

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


WEB_OFF = WebConfig()
"""No screen unless the file asks for one."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_web_section(w: Section, *, base: Path, source: str) -> WebConfig:
    """The ``[web]`` section; every key is optional."""
    fields: dict[str, object] = {}
    if w.has("enabled"):
        fields["enabled"] = w.get_bool("enabled")
    if w.has("host"):
        fields["host"] = w.get_str("host")
    if w.has("port"):
        fields["port"] = w.get_int("port", min=1, max=65535)
    if w.has("cert_file") != w.has("key_file"):
        raise w.error("cert_file", "cert_file and key_file go together")
    if w.has("cert_file"):
        for name in ("cert_file", "key_file"):
            p = Path(w.get_str(name))
            fields[name] = p if p.is_absolute() else base / p
    if w.has("session_lifetime_s"):
        fields["session_lifetime_s"] = w.get_float("session_lifetime_s", min=60.0, max=7 * 86400.0)
    if w.has("login_attempts"):
        fields["login_attempts"] = w.get_int("login_attempts", min=1, max=100)
    if w.has("login_window_s"):
        fields["login_window_s"] = w.get_float("login_window_s", min=1.0, max=86400.0)
    if w.has("offline_after_s"):
        fields["offline_after_s"] = w.get_float("offline_after_s", min=10.0, max=86400.0)
    if w.has("utc_offset_minutes"):
        fields["utc_offset_minutes"] = w.get_int("utc_offset_minutes", min=-720, max=840)
    w.done()
    cfg = WebConfig(**fields)  # type: ignore[arg-type]
    check_web_config(cfg, source=source)
    return cfg


def check_web_config(cfg: WebConfig, *, source: str) -> None:
    """Plain HTTP only on a loopback address: the session cookie is ``Secure`` and passwords cross the wire."""
    if not cfg.tls and not is_loopback(cfg.host):
        raise ConfigError(source, "web.cert_file", f"listening on {cfg.host} needs TLS: set cert_file and key_file "
                                                   "(spd-gateway web-cert issues them from the site CA)")
