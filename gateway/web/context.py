"""What every page and API route works with: the store, the audit log, the settings, the remote unlock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from gateway.audit import AuditLog
from gateway.books.output import yuan
from gateway.books.settings import BooksSettings
from gateway.store import GatewayStore
from gateway.web.ratelimit import LoginLimiter
from gateway.web.settings import WebConfig

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

Unlock = Callable[[str, str, int, str], int]
"""(site, device, seconds, requested by) -> the signed command's sequence number
(:meth:`gateway.fleet.Fleet.unlock`)."""


@dataclass
class WebContext:
    store: GatewayStore
    config: WebConfig
    unlock: Unlock | None = None  # None: no fleet link (no command-signing key); unlocks are refused
    books: BooksSettings | None = None  # [books]: alert windows, routes (None: the defaults, the web section's zone)
    audit: AuditLog = field(init=False)
    limiter: LoginLimiter = field(init=False)
    templates: Jinja2Templates = field(init=False)
    past_days: dict[int, tuple[float, dict[str, int]]] = field(default_factory=dict)
    """Uses per department of days before today, with when they were counted (the overview's chart)."""

    def __post_init__(self) -> None:
        self.audit = AuditLog(self.store)
        self.limiter = LoginLimiter(self.config.login_attempts, self.config.login_window_s)
        self.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
        self.templates.env.filters["when"] = self.local_time
        self.templates.env.filters["yuan"] = yuan  # integer fen as yuan with two decimals (the books' money)

    @property
    def books_settings(self) -> BooksSettings:
        """The ``[books]`` settings the alerts and replenishment pages use."""
        if self.books is not None:
            return self.books
        return BooksSettings(utc_offset_minutes=self.config.utc_offset_minutes)

    @property
    def tz(self) -> dt.timezone:
        return dt.timezone(dt.timedelta(minutes=self.config.utc_offset_minutes))

    def local_time(self, ts: float | None) -> str:
        """A Unix time as the site's local time, ``YYYY-MM-DD HH:MM:SS``; '-' for none."""
        if ts is None:
            return "-"
        return dt.datetime.fromtimestamp(ts, self.tz).strftime("%Y-%m-%d %H:%M:%S")


def context_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx
