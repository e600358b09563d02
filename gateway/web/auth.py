"""Who is asking: a session (cookie) or an API token (``Authorization: Bearer``); roles; CSRF.

A session is a random 32-byte value in the ``spd_session`` cookie (``Secure``, ``HttpOnly``,
``SameSite=Strict``); the store keeps only its SHA-256 with the account, the expiry and the session's CSRF
token. Every POST made with a session must carry that CSRF token (form field ``csrf`` or header
``X-CSRF-Token``); a POST made with an API token carries no cookie, so it needs none. An API token is
``spd_<name>_<random>``, shown once at creation and stored as its SHA-256.

A route says who may use it with ``Depends(allowed(*roles))``; the same dependency refuses a caller with no
session or token (a page redirects to the sign-in page, the API answers 401) and a caller of another role
(403).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from gateway.web.context import context_of
from gateway.web.roles import ACKNOWLEDGE_ALARM, EVERYONE, RESEND_CHARGE, Role

SESSION_COOKIE = "spd_session"
LOGIN_COOKIE = "spd_login"  # the sign-in form's own CSRF value (double submit), before any session exists
CSRF_HEADER = "x-csrf-token"
TOKEN_PREFIX = "spd_"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # the account, or "token:<name>" for an API token
    role: Role
    csrf: str  # "" for an API token
    via: str  # "session" | "token"

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"web:{self.name}" if self.via == "session" else f"api:{self.name}"


class NotSignedIn(Exception):
    """No valid session or token."""


class Forbidden(Exception):
    """Signed in, but the role may not do this (or the CSRF token is missing or wrong)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def secret_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def make_api_token(name: str) -> str:
    return f"{TOKEN_PREFIX}{name}_{new_secret()}"


def authenticate(request: Request) -> Principal:
    """The caller, from a bearer token or the session cookie; :class:`NotSignedIn` otherwise."""
    ctx = context_of(request)
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.startswith(TOKEN_PREFIX):
            raise NotSignedIn()
        token = ctx.store.accounts.token(secret_hash(value.strip()))
        if token is None or token.role not in Role.__members__.values():
            raise NotSignedIn()
        return Principal(f"token:{token.name}", Role(token.role), "", "token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise NotSignedIn()
    session = ctx.store.accounts.session(secret_hash(cookie), now=time.time())
    if session is None or session.role not in Role.__members__.values():
        raise NotSignedIn()
    return Principal(session.username, Role(session.role), session.csrf, "session")


def allowed(*roles: Role) -> Any:
    """A dependency: the caller, if signed in with one of ``roles``; POSTs by session also need the CSRF token."""

    async def dependency(request: Request) -> Principal:
        who = authenticate(request)
        request.state.principal = who
        if who.role not in roles:
            raise Forbidden(f"the {who.role.value} role may not do this")
        if request.method == "POST" and who.via == "session":
            sent = request.headers.get(CSRF_HEADER)
            if sent is None and request.headers.get("content-type", "").startswith(
                    ("application/x-www-form-urlencoded", "multipart/form-data")):
                form = await request.form()
                field = form.get("csrf")
                sent = field if isinstance(field, str) else None
            if not sent or not hmac.compare_digest(sent, who.csrf):
                raise Forbidden("missing or wrong CSRF token: reload the page and try again")
        return who

    dependency.roles = roles  # type: ignore[attr-defined]  # read by the route table in docs and tests
    return dependency


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


Anyone = Annotated[Principal, Depends(allowed(*EVERYONE))]
"""A route parameter: any signed-in role."""
MayResend = Annotated[Principal, Depends(allowed(*RESEND_CHARGE))]
MayAcknowledge = Annotated[Principal, Depends(allowed(*ACKNOWLEDGE_ALARM))]
