"""Rendering a page: the template with the caller, the navigation their role sees and the CSRF token."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from gateway.web.auth import Principal
from gateway.web.context import context_of


def page(request: Request, template: str, who: Principal, *, status_code: int = 200, **values: Any) -> HTMLResponse:
    ctx = context_of(request)
    nav = [n for n in request.app.state.navigation if who.role in n.roles]
    return ctx.templates.TemplateResponse(
        request, template, {"who": who, "nav": nav, "csrf": who.csrf, "path": request.url.path, **values},
        status_code=status_code)
