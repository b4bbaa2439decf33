"""The plugin contract (handlers and device adapters) and the host that runs them in isolation.

A plugin module exposes ``create(ctx: PluginContext) -> Plugin``. The constructor stores the context and
does no I/O; ``start()`` declares routes and timers; ``stop()`` undoes what ``start()`` registered. The hub
never imports a handler by name: it loads the dotted paths listed in ``config.plugins``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

from hub.config import Config
from hub.metrics import Metrics
from hub.readiness import Readiness
from hub.spine import Route, Spine
from hub.store import Store

log = structlog.get_logger("kitt.plugins")


@dataclass
class Services:
    """Shared hub services that plugins may use. Each is optional: a plugin checks what it needs.

    Filled by the kernel (embedder, cache, vectors, jobs) and by plugins that provide a service to others
    (the device registry, understanding, confirmations). Plugins never import each other; they meet here
    and on the bus.
    """

    embedder: Any = None
    cache: Any = None
    vectors: Any = None
    memory: Any = None
    jobs: Any = None
    devices: Any = None
    understanding: Any = None
    confirmations: Any = None
    frontier: Any = None
    tools: Any = None
    voice: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginContext:
    name: str
    config: Config
    spine: Spine
    store: Store
    metrics: Metrics
    services: Services
    readiness: Readiness
    log: Any
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def route(self, route: Route) -> None:
        """Add a route owned by this plugin; removed again by ``undo_all()``."""
        self._undo.append(self.spine.add_route(route))

    def undo_all(self) -> None:
        while self._undo:
            self._undo.pop()()


@runtime_checkable
class Plugin(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class PluginHost:
    """Loads, starts and stops plugins; one failing plugin does not stop the others (it is reported)."""

    def __init__(self, *, names: tuple[str, ...], make_context: Callable[[str], PluginContext]) -> None:
        self._names = names
        self._make_context = make_context
        self._running: list[tuple[str, Plugin, PluginContext]] = []
        self.failed: dict[str, str] = {}

    def load(self) -> None:
        for dotted in self._names:
            try:
                module = importlib.import_module(dotted)
            except ModuleNotFoundError as exc:
                self.failed[dotted] = f"not installed: {exc.name}"
                log.error("plugin not found", plugin=dotted, missing=exc.name)
                continue
            try:
                ctx = self._make_context(dotted)
                plugin = module.create(ctx)
            except Exception as exc:
                self.failed[dotted] = f"{type(exc).__name__}: {exc}"
                log.exception("plugin failed to load", plugin=dotted)
                continue
            self._running.append((dotted, plugin, ctx))

    async def start(self) -> None:
        started = []
        for name, plugin, ctx in self._running:
            try:
                await plugin.start()
            except Exception as exc:
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                log.exception("plugin failed to start", plugin=name)
                ctx.undo_all()
                continue
            started.append((name, plugin, ctx))
        self._running = started

    async def stop(self) -> None:
        for name, plugin, ctx in reversed(self._running):
            try:
                await plugin.stop()
            except Exception:
                log.exception("plugin failed to stop cleanly", plugin=name)
            finally:
                ctx.undo_all()
        self._running = []

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self._running]
