"""The screen's ASGI application: the pages, ``/api/v1``, the stylesheet, security headers, error pages.

Every route but the sign-in page and ``/static`` needs a session or an API token (:mod:`gateway.web.auth`).
FastAPI's own OpenAPI route and docs UI are off (the UI would load its script from a CDN); the OpenAPI
document is served at ``/api/v1/openapi.json`` behind the same sign-in as the API it describes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from gateway.web import login
from gateway.web.auth import Anyone, Forbidden, NotSignedIn
from gateway.web.context import STATIC_DIR, WebContext
from gateway.web.pages import PAGE_MODULES, load_pages, navigation

API_PREFIX = "/api/v1"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; font-src 'self'; script-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def _error_page(request: Request, status: int, message: str) -> Response:
    ctx: WebContext = request.app.state.web
    who = getattr(request.state, "principal", None)
    nav = [n for n in request.app.state.navigation if who is not None and who.role in n.roles]
    return ctx.templates.TemplateResponse(request, "error.html", {"who": who, "nav": nav, "status": status,
                                                                  "message": message, "path": request.url.path,
                                                                  "csrf": who.csrf if who else ""},
                                          status_code=status)


def create_app(ctx: WebContext, *, page_modules: tuple[str, ...] = PAGE_MODULES) -> FastAPI:
    app = FastAPI(title="spd-edge gateway", version="1", openapi_url=None, docs_url=None, redoc_url=None,
                  description="The supervisor's screen's JSON API. Authenticate with `Authorization: Bearer <token>` "
                              "(spd-gateway web-token create) or a session cookie plus `X-CSRF-Token` on POSTs.")
    app.state.web = ctx
    pages = load_pages(page_modules)
    app.state.navigation = navigation(pages)
    app.include_router(login.router)
    for module in pages:
        app.include_router(module.html)
        app.include_router(module.api, prefix=API_PREFIX)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.get(f"{API_PREFIX}/openapi.json", tags=["api"], summary="This API's OpenAPI document")
    def openapi_document(who: Anyone) -> dict[str, Any]:
        return app.openapi()

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": "sign in, or send an API token (Authorization: Bearer ...)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path if request.method == "GET" else "/"
        return RedirectResponse(f"/login?next={target}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, status_code=403)
        return _error_page(request, 403, exc.detail)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_json(request) or request.url.path.startswith("/static"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return _error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        if _wants_json(request):
            return JSONResponse({"detail": problems}, status_code=422)
        return _error_page(request, 422, "; ".join(problems))

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static"):
            response.headers["Cache-Control"] = "no-store"
        if ctx.config.tls:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    return app
