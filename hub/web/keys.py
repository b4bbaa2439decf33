"""Typed application keys (a leaf module: everything may import it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from hub.web.deps import WebDeps

DEPS: web.AppKey[WebDeps] = web.AppKey("kitt_deps")
