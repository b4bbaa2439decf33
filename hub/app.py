"""The kernel: assembles the components in a fixed order, starts what can start in parallel, stops in reverse.

Start order: web (liveness at once) → store (embedded PostgreSQL + pool + migrations) ‖ deferred services
(embedding model, vector index: tracked by readiness, never awaited) → spine routes from plugins → MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import structlog

from hub import services as kernel_services
from hub.config import Config
from hub.errors import KittError
from hub.metrics import Metrics
from hub.plugins import PluginContext, PluginHost, Services
from hub.readiness import Readiness
from hub.spine import Spine
from hub.store import EmbeddedPostgres, Store
from hub.web.app import WebServer
from hub.web.deps import WebDeps
from hub.web.token import ensure_token

log = structlog.get_logger("kitt.hub")

DEFAULT_PLUGINS = (
    "handlers.devices",
    "handlers.understanding",
    "handlers.mcp",
    "handlers.confirmations",
    "handlers.ask",
    "handlers.voice",
    "handlers.homeassistant",
    "handlers.admin",
)


class Hub:
    """One running hub. Use as ``async with Hub(config) as hub: await hub.wait_closed()``."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None,
                 on_status: Callable[[str], Any] | None = None) -> None:
        self.config = config
        self._on_status = on_status
        self.metrics = metrics or Metrics()
        self.readiness = Readiness()
        self.services = Services()
        self.store: Store | None = None
        self.spine: Spine | None = None
        self.plugins: PluginHost | None = None
        self.web: WebServer | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._stack = AsyncExitStack()
        self._started_at = time.monotonic()
        self._closed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self.web_deps = WebDeps(config=config, metrics=self.metrics, readiness=self.readiness,
                                services=self.services, status=self.status)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> Hub:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._stack.aclose()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _status(self, text: str) -> None:
        """A progress line for systemd's STATUS= (and nothing else)."""
        if self._on_status is not None:
            self._on_status(text)

    async def _enter(self, start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]]) -> None:
        await start()
        self._stack.push_async_callback(stop)

    async def _start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.web_deps.token = ensure_token(cfg.web)
        self.web = WebServer(deps=self.web_deps)
        await self._enter(self.web.start, self.web.stop)
        self._status(f"web listening on {cfg.web.listen}")
        self.readiness.add("store", self._store_check)
        self.readiness.add("spine", self._spine_check)

        # The store and the slow, deferred services start side by side.
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._start_store(), name="kitt[start].store")
                tg.create_task(kernel_services.start_all(self), name="kitt[start].services")
        except* KittError as group:
            raise group.exceptions[0] from None

        assert self.store is not None
        self._status("store ready; starting plugins")
        self.spine = Spine(config=cfg, store=self.store, metrics=self.metrics)
        self.web_deps.spine = self.spine
        await kernel_services.before_plugins(self)
        self.plugins = PluginHost(names=cfg.plugins or DEFAULT_PLUGINS, make_context=self._plugin_context)
        self.plugins.load()
        await self.plugins.start()
        self._stack.push_async_callback(self.plugins.stop)
        # Spine after plugins: every route is declared before the first SUBSCRIBE; it stops first.
        await self._enter(self.spine.start, self.spine.stop)
        self._status(f"plugins {len(self.plugins.names)} running; connecting to MQTT {cfg.mqtt.redacted_url()}")
        await kernel_services.after_spine(self)

    async def _start_store(self) -> None:
        cfg = self.config.database
        dsn = cfg.url
        if dsn == "embedded":
            self._embedded = EmbeddedPostgres(data_dir=self.config.state_dir / "pg")
            await self._enter(self._embedded.start, self._embedded.stop)
            dsn = self._embedded.dsn
        self.store = Store(dsn=dsn, metrics=self.metrics, pool_min=cfg.pool_min, pool_max=cfg.pool_max,
                           command_timeout_s=cfg.command_timeout_s, slow_query_ms=cfg.slow_query_ms)
        await self._enter(self.store.start, self.store.stop)
        self.web_deps.store = self.store

    def push_stop(self, stop: Callable[[], Awaitable[Any]]) -> None:
        """Register a stop callable, run in reverse order of registration on close."""
        self._stack.push_async_callback(stop)

    def _plugin_context(self, name: str) -> PluginContext:
        assert self.spine is not None and self.store is not None
        return PluginContext(name=name, config=self.config, spine=self.spine, store=self.store,
                             metrics=self.metrics, services=self.services, readiness=self.readiness,
                             log=structlog.get_logger(f"kitt.{name}"))

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """A named background task owned by the hub, cancelled and awaited on close."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- readiness and status ------------------------------------------------------------------------

    async def _store_check(self) -> bool | str:
        if self.store is None:
            return "starting"
        return True if await self.store.ping() else "database unreachable"

    def _spine_check(self) -> bool | str:
        if self.spine is None:
            return "starting"
        if not self.spine.connection.connected:
            return f"MQTT broker {self.config.mqtt.redacted_url()} not connected"
        return True if self.spine.ready else "not subscribed yet"

    async def status(self) -> dict[str, Any]:
        ready, checks = await self.readiness.evaluate()
        out: dict[str, Any] = {
            "hub_id": self.config.hub.id,
            "ready": ready,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "checks": {c.name: {"ok": c.ok, "reason": c.reason} for c in checks},
            "spine": self.spine.status if self.spine else None,
            "plugins": {"running": self.plugins.names if self.plugins else [],
                        "failed": self.plugins.failed if self.plugins else {}},
        }
        for name in ("cache", "jobs", "confirmations", "vectors", "embedder"):
            service = getattr(self.services, name)
            if service is not None and hasattr(service, "status"):
                try:
                    value = service.status()
                    if asyncio.iscoroutine(value):
                        value = await value
                    out[name] = value
                except Exception as exc:  # one broken status provider must not break the status page
                    out[name] = {"error": str(exc)}
        return out


async def wait_ready(hub: Hub, timeout: float | None = None, interval: float = 0.02) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ready, _ = await hub.readiness.evaluate()
        if ready:
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.sleep(interval)
