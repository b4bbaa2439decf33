"""The ``/api/v1`` JSON API and the panel, added to the app built by ``hub.web.app.create_app``.

``setup(app)`` is the one entry point: endpoints from the ``routes_*`` modules (each a ``RouteTable``),
the middlewares (errors, authentication), the security headers, the panel and its static files, the
OpenAPI document, and the live channel as a cleanup context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from hub.web.api import (
    panel,
    routes_audit,
    routes_cache,
    routes_confirmations,
    routes_devices,
    routes_jobs,
    routes_live,
    routes_status,
)
from hub.web.api.keys import AUTH, ENDPOINTS, LIVE, PUBLIC_PATHS
from hub.web.api.middleware import auth_middleware, error_middleware, security_headers
from hub.web.api.models import Open
from hub.web.api.routing import API_PREFIX, Call, Endpoint, RouteTable, register
from hub.web.auth import Auth
from hub.web.keys import DEPS
from hub.web.live import LiveHub
from hub.web.openapi import build_document

_meta = RouteTable(tag="meta")


@_meta.get("/openapi.json", summary="This document (OpenAPI 3.1)", public=True,
           responses={200: ("the OpenAPI document", Open)})
async def openapi(call: Call) -> web.StreamResponse:
    return web.json_response(build_document(call.request.app[ENDPOINTS]))


def all_endpoints() -> tuple[Endpoint, ...]:
    tables = (routes_status.routes, routes_devices.routes, routes_confirmations.routes, routes_jobs.routes,
              routes_cache.routes, routes_audit.routes, routes_live.routes, _meta)
    return tuple(ep for table in tables for ep in table.endpoints)


async def _live_context(app: web.Application) -> AsyncIterator[None]:
    live = app[LIVE]
    await live.start()
    yield
    await live.stop()


async def _close_live_sockets(app: web.Application) -> None:
    await app[LIVE].close_sockets()


def setup(app: web.Application, *, live_poll_s: float = 1.0) -> None:
    deps = app[DEPS]
    endpoints = all_endpoints()
    app[ENDPOINTS] = endpoints
    app[PUBLIC_PATHS] = frozenset(ep.path for ep in endpoints if ep.public)
    # The token is read at call time: the hub sets it just before the server starts.
    app[AUTH] = Auth(token=lambda: deps.token, max_failures=deps.config.web.login_max_failures)
    app[LIVE] = LiveHub(services=deps.services, poll_interval_s=live_poll_s)
    app.middlewares.extend([error_middleware, auth_middleware])
    app.on_response_prepare.append(security_headers)
    register(app, endpoints)
    panel.setup(app)
    app.cleanup_ctx.append(_live_context)
    app.on_shutdown.append(_close_live_sockets)


__all__ = ["API_PREFIX", "all_endpoints", "setup"]
