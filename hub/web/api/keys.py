"""Typed application keys of the API and panel (a leaf module)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from hub.web.api.routing import Endpoint
    from hub.web.auth import Auth
    from hub.web.live import LiveHub

AUTH: web.AppKey[Auth] = web.AppKey("kitt_auth")
LIVE: web.AppKey[LiveHub] = web.AppKey("kitt_live")
ENDPOINTS: web.AppKey[tuple[Endpoint, ...]] = web.AppKey("kitt_endpoints")
# Canonical paths that need no credential (the OpenAPI document).
PUBLIC_PATHS: web.AppKey[frozenset[str]] = web.AppKey("kitt_public_paths")
