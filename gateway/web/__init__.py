"""The supervisor's screen: web pages and a JSON API served by the gateway (``spd-gateway web``, or inside
``spd-gateway run`` with ``[web] enabled = true``).

* :mod:`gateway.web.settings` — the ``[web]`` section; :mod:`gateway.web.roles` — who may do what;
* :mod:`gateway.web.auth` — sessions, API tokens, CSRF, the login rate limit;
* :mod:`gateway.web.pages` — one module per page (HTML router and ``/api/v1`` router), listed in
  :data:`gateway.web.pages.PAGE_MODULES`, which also orders the navigation;
* :mod:`gateway.web.app` — the ASGI application; :mod:`gateway.web.server` — uvicorn with the site CA's TLS.

docs/web.md describes the pages, the roles, the API and why FastAPI.
"""
