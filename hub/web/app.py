"""The aiohttp app factory: liveness, readiness, metrics (the panel and /api/v1 are added by hub.web.api)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from hub.web.deps import WebDeps
from hub.web.keys import DEPS


async def healthz(request: web.Request) -> web.Response:
    # Answering at all proves the event loop turns.
    return web.json_response({"alive": True, "time": time.time()})


async def readyz(request: web.Request) -> web.Response:
    ready, results = await request.app[DEPS].readiness.evaluate()
    body = {
        "ready": ready,
        "checks": {r.name: {"ok": r.ok, "reason": r.reason, "required": r.required} for r in results},
        "reasons": [f"{r.name}: {r.reason}" for r in results if not r.ok and r.required],
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DEPS].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(deps: WebDeps) -> web.Application:
    app = web.Application(client_max_size=256 * 1024)
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    try:
        from hub.web import api
    except ImportError:  # the API/panel module is optional in a minimal build
        api = None  # type: ignore[assignment]
    if api is not None:
        api.setup(app)
        from hub.mcp.http import mount_mcp_http

        mount_mcp_http(app, deps)
    return app


class WebServer:
    """Owns the AppRunner and its TCP site."""

    def __init__(self, *, deps: WebDeps) -> None:
        self._deps = deps
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = create_app(self._deps)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        cfg = self._deps.config.web
        site = web.TCPSite(self._runner, cfg.host, cfg.port, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
