"""Signing in and out. Public: the sign-in page and its POST; everything else needs a session or a token.

A failed sign-in is counted against the account name and the address; past ``[web] login_attempts`` within
``login_window_s`` either key is refused with 429 (and ``Retry-After``) before the password is even checked.
Every attempt, ok or failed, is one ``web_sign_in`` row in the audit log. The sign-in form carries its own
CSRF value (double submit: a cookie and a hidden field), since there is no session yet.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.audit import AuditAction
from gateway.web.auth import LOGIN_COOKIE, SESSION_COOKIE, Anyone, client_address, new_secret, secret_hash
from gateway.web.context import context_of
from gateway.web.passwords import DUMMY_HASH, MAX_LENGTH, verify_password

router = APIRouter()


def _login_form(request: Request, *, error: str | None = None, status_code: int = 200,
                next_path: str = "/") -> HTMLResponse:
    ctx = context_of(request)
    value = secrets.token_urlsafe(24)
    values: dict[str, object] = {"csrf": value, "error": error, "next": next_path, "who": None, "nav": [],
                                 "path": "/login"}
    resp = ctx.templates.TemplateResponse(request, "login.html", values, status_code=status_code)
    resp.set_cookie(LOGIN_COOKIE, value, max_age=3600, secure=True, httponly=True, samesite="strict", path="/login")
    return resp


def _safe_next(value: str) -> str:
    """Only a path on this site (never ``//host`` or a URL)."""
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request) -> HTMLResponse:
    return _login_form(request, next_path=_safe_next(request.query_params.get("next", "/")))


@router.post("/login", include_in_schema=False)
def login(request: Request, username: Annotated[str, Form(max_length=64)] = "",
          password: Annotated[str, Form(max_length=MAX_LENGTH)] = "", csrf: Annotated[str, Form(max_length=100)] = "",
          next_path: Annotated[str, Form(alias="next", max_length=200)] = "/") -> Response:
    ctx = context_of(request)
    address = client_address(request)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not csrf or not cookie or not hmac.compare_digest(csrf, cookie):
        return _login_form(request, error="The sign-in form expired: try again.", status_code=403)
    user_key, addr_key = f"user:{username.lower()}", f"addr:{address}"
    wait = ctx.limiter.blocked_for(user_key, addr_key)
    if wait > 0:
        ctx.audit.record(f"web:{username}", AuditAction.WEB_SIGN_IN, outcome="failed", address=address,
                         reason="rate_limited")
        resp = _login_form(request, error=f"Too many failed sign-ins: try again in {int(wait) + 1} s.",
                           status_code=429)
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    account = ctx.store.accounts.account(username) if username else None
    ok = verify_password(password, account.password_hash if account else DUMMY_HASH)
    if account is None or account.disabled or not ok:
        why = "unknown_account" if account is None else "disabled" if account.disabled else "bad_password"
        ctx.limiter.failed(user_key, addr_key)
        ctx.audit.record(f"web:{username}", AuditAction.WEB_SIGN_IN, outcome="failed", address=address, reason=why)
        return _login_form(request, error="Wrong name or password, or the account is disabled.", status_code=401,
                           next_path=_safe_next(next_path))
    ctx.limiter.succeeded(user_key)
    token, now = new_secret(), time.time()
    ctx.store.accounts.open_session(secret_hash(token), account.username, new_secret(), address, now=now,
                                    expires_at=now + ctx.config.session_lifetime_s)
    ctx.audit.record(f"web:{account.username}", AuditAction.WEB_SIGN_IN, address=address, role=account.role)
    done = RedirectResponse(_safe_next(next_path), status_code=303)
    done.set_cookie(SESSION_COOKIE, token, max_age=int(ctx.config.session_lifetime_s), secure=True, httponly=True,
                    samesite="strict", path="/")
    done.delete_cookie(LOGIN_COOKIE, path="/login")
    return done


@router.post("/logout", include_in_schema=False)
def logout(request: Request, who: Anyone) -> Response:
    """End the session (the CSRF token checked as for every POST)."""
    ctx = context_of(request)
    if who.via == "session":
        ctx.store.accounts.close_session(secret_hash(request.cookies.get(SESSION_COOKIE, "")))
        ctx.audit.record(who.actor, AuditAction.WEB_SIGN_OUT, address=client_address(request))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp
