"""The hub as an MCP server over streamable HTTP, inside the hub's own aiohttp app (``[mcp] http_enabled``).

The SDK serves streamable HTTP as an ASGI app; the hub's web server is aiohttp. ``AsgiBridge`` hands one
aiohttp request to the SDK's ``StreamableHTTPSessionManager`` as an ASGI call and streams its answer back.
The manager runs stateless (each POST is self-contained: nothing to expire, nothing to leak) in its own
named task, started with the app and stopped and awaited with it — the SDK's anyio task group must be entered
and left by the same task, which aiohttp's start-up and clean-up hooks are not.

Authentication is the API's: the endpoint lives under ``/api/v1`` and needs the bearer token.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import structlog
from aiohttp import web
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from hub.mcp.agent import LocalAgent
from hub.mcp.server import build_server
from hub.web.deps import WebDeps

log = structlog.get_logger("kitt.mcp.http")

Message = MutableMapping[str, Any]
MAX_BODY = 1024 * 1024


class AsgiBridge:
    """Owns the session manager's task; ``handle`` serves one aiohttp request through it."""

    def __init__(self, manager: StreamableHTTPSessionManager, *, name: str) -> None:
        self._manager = manager
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._stop = asyncio.Event()

    async def start(self, _app: web.Application | None = None) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)
        waiter = asyncio.create_task(self._started.wait(), name=f"{self._name}.started")
        done, _ = await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            waiter.cancel()
            await self._task  # raises why the manager could not start

    async def stop(self, _app: web.Application | None = None) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _run(self) -> None:
        async with self._manager.run():
            self._started.set()
            await self._stop.wait()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        body = await request.read() if request.can_read_body else b""
        response: web.StreamResponse | None = None
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Nothing more will come: wait for the client to go away (aiohttp cancels us then).
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal response
            if message["type"] == "http.response.start":
                response = web.StreamResponse(status=message["status"])
                for key, value in message.get("headers", []):
                    name = key.decode("latin-1")
                    if name.lower() not in ("content-length", "transfer-encoding"):
                        response.headers.add(name, value.decode("latin-1"))
                await response.prepare(request)
            elif message["type"] == "http.response.body":
                assert response is not None, "ASGI body before start"
                chunk = message.get("body", b"")
                if chunk:
                    await response.write(chunk)
                if not message.get("more_body", False):
                    await response.write_eof()

        await self._manager.handle_request(_scope(request), receive, send)
        if response is None:
            return web.Response(status=500, text="the MCP endpoint gave no answer")
        return response


def _scope(request: web.Request) -> dict[str, Any]:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    host, _, port = (request.host or "127.0.0.1").partition(":")
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
        "scheme": request.scheme, "path": request.path, "raw_path": request.raw_path.split("?")[0].encode(),
        "root_path": "", "query_string": request.query_string.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
        "client": tuple(peer[:2]) if peer else None, "server": (host, int(port) if port.isdigit() else 80),
    }


def mount_streamable(app: web.Application, deps: WebDeps, *, path: str) -> AsgiBridge:
    """Serve the hub's MCP tools at ``path`` (POST, GET, DELETE), as agent:mcp over ``LocalAgent``."""

    # The store and the spine are set on ``deps`` after the web app is built: read them at call time.
    agent = LocalAgent(services=deps.services, store=lambda: deps.store, spine=lambda: deps.spine)
    server = build_server(agent,
                          name=f"kitt-hub-{deps.config.hub.id}")
    manager = StreamableHTTPSessionManager(server._lowlevel_server, stateless=True, json_response=True)
    bridge = AsgiBridge(manager, name="kitt[mcp].http")
    app.on_startup.append(bridge.start)
    app.on_cleanup.append(bridge.stop)
    for method in ("POST", "GET", "DELETE"):
        app.router.add_route(method, path, bridge.handle, name=f"mcp_http_{method.lower()}")
    log.info("mcp streamable HTTP endpoint mounted", path=path)
    return bridge

