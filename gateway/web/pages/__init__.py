"""The screen's pages, one module each; this list orders the navigation.

A page module has ``NAV`` (:class:`NavEntry`, or None for a page reached only from another), ``html`` (an
``APIRouter`` of its pages) and ``api`` (an ``APIRouter`` mounted under ``/api/v1``). Adding a page is
adding its module here: the application mounts both routers, the navigation shows the entry to the roles
it names, and the security tests enumerate its routes from the application.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from gateway.web.roles import EVERYONE, Role

PAGE_MODULES: tuple[str, ...] = (
    "gateway.web.pages.overview",
    "gateway.web.pages.fleet",
    "gateway.web.pages.cabinets",
    "gateway.web.pages.charges",
    "gateway.web.pages.alarms",
    # the books (docs/web.md): each seen by the roles its NAV names
    "gateway.web.pages.reconciliation",
    "gateway.web.pages.inspection",
    "gateway.web.pages.settlement",
    "gateway.web.pages.vbp",
    "gateway.web.pages.trace",
    "gateway.web.pages.book_alerts",
    "gateway.web.pages.replenishment",
)


@dataclass(frozen=True, slots=True)
class NavEntry:
    label: str
    path: str
    roles: tuple[Role, ...] = EVERYONE


def load_pages(modules: tuple[str, ...] = PAGE_MODULES) -> list[ModuleType]:
    return [importlib.import_module(m) for m in modules]


def navigation(pages: list[ModuleType]) -> list[NavEntry]:
    return [p.NAV for p in pages if getattr(p, "NAV", None) is not None]
