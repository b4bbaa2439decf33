"""The tool route: supervised connections to the configured MCP servers and one ``ToolRoute`` over all of them.

Each ``[mcp.servers.NAME]`` (a stdio command or a streamable HTTP URL) gets a ``ServerConnection``: nothing is
started with the hub; the first use starts a supervisor task that connects, lists the server's tools and then
holds the session open. A server that dies (its process killed, its pipe closed, a heartbeat unanswered) is
reconnected — for stdio, restarted — with jittered exponential backoff, for as long as the hub runs. A caller
never waits longer than its timeout, and a dead server only fails the calls that need it.

``ToolRoute`` (``services.tools``) offers every tool as an OpenAI function tool to the frontier model and
calls them: every call has a timeout, an audit event ``mcp.tool_call`` (awaited) and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from mcp import Client, MCPError, StdioServerParameters
from mcp import types as mcp_types

from hub.aio import wait_event
from hub.config import McpServer
from hub.jobs.backoff import backoff_delay
from hub.mcp.tools import ToolCallError, ToolSpec

log = structlog.get_logger("kitt.mcp")

__all__ = ["McpMetrics", "ServerConnection", "ToolCallError", "ToolRoute", "ToolSpec", "make_client"]

# OpenAI function names: ^[a-zA-Z0-9_-]{1,64}$ — anything else is renamed before it is offered.
_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")
# Characters of the audit body kept from a call's arguments (a model can send a lot; the trail stays small).
AUDIT_ARGUMENTS_MAX = 500
# Characters of a tool's answer handed back (a spoken reply or a model's context, not a data dump).
RESULT_MAX = 4000

@dataclass(frozen=True)
class RemoteTool:
    name: str
    description: str
    input_schema: dict[str, Any]


class McpSession(Protocol):
    """The part of ``mcp.Client`` the connection uses (a protocol so tests can see the seam)."""

    async def list_tools(self, *, cursor: str | None = None) -> Any: ...

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None,
                        read_timeout_seconds: float | None = None) -> Any: ...



ClientFactory = Callable[[str, McpServer], Any]  # returns an async context manager yielding an McpSession
Audit = Callable[..., Awaitable[Any]]  # Store.record_event's shape: (kind, *, actor, subject, correlation_id, body)


def make_client(name: str, settings: McpServer) -> Client:
    """The SDK client for one configured server: a child process over stdio, or streamable HTTP."""
    info = mcp_types.Implementation(name="kitt-hub", version="1")
    # Listings are re-read on every (re)connect, so the SDK's response cache would only serve stale ones.
    if settings.command:
        command, *args = settings.command
        # The child runs in the hub's working directory with the SDK's small default environment plus ``env``.
        return Client(StdioServerParameters(command=command, args=list(args), env=dict(settings.env) or None),
                      cache=None, client_info=info)
    return Client(settings.url, cache=None, client_info=info)


def result_text(result: Any) -> str:
    """The text of a ``CallToolResult``: text blocks joined; structured content as JSON when there is no text."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        if isinstance(text, str):
            parts.append(text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')}]")
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    text = "\n".join(parts).strip()
    return text if len(text) <= RESULT_MAX else text[:RESULT_MAX] + " …"


class ServerConnection:
    """One MCP server: started on first use, supervised, restarted with backoff after a crash.

    The SDK's ``Client`` is an anyio context manager, so one task (the supervisor) enters and leaves it;
    callers from other tasks use the session while it is up (the SDK's dispatcher correlates requests).
    """

    def __init__(self, name: str, settings: McpServer, *, client_factory: ClientFactory = make_client,
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 60.0, heartbeat_s: float = 30.0,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.settings = settings
        self._factory = client_factory
        self._backoff_base = backoff_base_s
        self._backoff_cap = backoff_cap_s
        self._ping_interval = heartbeat_s
        self._on_restart = on_restart
        self._session: McpSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._broken = asyncio.Event()
        self._stopping = False
        self.tools: tuple[RemoteTool, ...] = ()
        self.state: Literal["idle", "connecting", "up", "backoff", "stopped"] = "idle"
        self.last_error: str | None = None
        self.failures = 0      # failed attempts in a row (resets once connected): the backoff step
        self.failed_total = 0  # attempts that never came up, since the first use
        self.connects = 0      # successful connects (the first one and every restart)

    @property
    def transport(self) -> str:
        return "stdio" if self.settings.command else "http"

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "transport": self.transport, "tools": [t.name for t in self.tools],
                "connects": self.connects, "error": self.last_error}

    # --- use ----------------------------------------------------------------------------------------

    async def ensure(self, timeout: float) -> McpSession:
        """The live session, starting the supervisor on first use. Raises ``ToolCallError("unavailable")``
        when the server is not up within ``timeout`` or the attempt under way fails."""
        if self._stopping:
            raise ToolCallError("unavailable", f"the tool server {self.name!r} is stopped")
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"kitt[mcp].{self.name}")
        seen_failed = self.failed_total
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    # Wait for a session, or for the attempt under way (or the next one, when we came during
                    # a backoff) to fail: a failure from before we asked is no reason to give up.
                    await self._changed.wait_for(
                        lambda: self._session is not None or self._stopping or self.failed_total > seen_failed)
            except TimeoutError:
                raise ToolCallError("unavailable", self._unavailable(f"not up within {timeout:g} s")) from None
        if self._session is None:
            raise ToolCallError("unavailable", self._unavailable("could not start"))
        return self._session

    def _unavailable(self, why: str) -> str:
        detail = f" ({self.last_error})" if self.last_error else ""
        return f"the tool server {self.name!r} is unavailable: {why}{detail}"

    def mark_broken(self, why: str) -> None:
        """A call found the connection dead: no one gets this session again; the supervisor reconnects
        (restarts the process) now."""
        self.last_error = why
        self._session = None
        self._broken.set()

    # --- lifecycle ----------------------------------------------------------------------------------

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = "stopped"
        async with self._changed:
            self._changed.notify_all()

    async def _set(self, state: Literal["idle", "connecting", "up", "backoff", "stopped"],
                   session: McpSession | None) -> None:
        async with self._changed:
            self.state = state
            self._session = session
            self._changed.notify_all()

    async def _supervise(self) -> None:
        while not self._stopping:
            self._broken.clear()
            await self._set("connecting", None)
            try:
                async with self._factory(self.name, self.settings) as client:
                    self.tools = await asyncio.wait_for(self._list(client), self.settings.timeout_s)
                    self.connects += 1
                    if self.connects > 1 and self._on_restart is not None:
                        self._on_restart(self.name)
                    self.failures = 0
                    self.last_error = None
                    await self._set("up", client)
                    log.info("mcp server up", server=self.name, tools=[t.name for t in self.tools],
                             connects=self.connects)
                    await self._watch(client)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # anyio wraps failures in groups; any of them means "reconnect"
                task = asyncio.current_task()
                # A cancellation can arrive wrapped in an exception group: being cancelled is never a retry.
                if isinstance(exc, KeyboardInterrupt | SystemExit) or (task is not None and task.cancelling()):
                    raise
                self.last_error = self.last_error if self._broken.is_set() else _describe(exc)
            finally:
                # Never leave a dead session visible to callers, whatever ended the attempt.
                self._session = None
            if self._stopping:
                return
            self.failures += 1
            if self.state != "up":
                # An attempt that never came up: callers waiting on it get its error. A lost connection is
                # not one — they wait for the reconnect instead.
                self.failed_total += 1
            delay = backoff_delay(self.failures, base_s=self._backoff_base, cap_s=self._backoff_cap)
            log.warning("mcp server down; reconnecting", server=self.name, error=self.last_error,
                        retry_in_s=round(delay, 2))
            await self._set("backoff", None)
            await asyncio.sleep(delay)

    async def _list(self, client: McpSession) -> tuple[RemoteTool, ...]:
        tools: list[RemoteTool] = []
        cursor: str | None = None
        for _ in range(100):  # a bound on pagination: a server that pages forever is broken
            page = await client.list_tools(cursor=cursor)
            for t in page.tools:
                tools.append(RemoteTool(name=t.name, description=t.description or t.title or "",
                                        input_schema=dict(t.input_schema or {})))
            cursor = getattr(page, "next_cursor", None)
            if not cursor:
                break
        return tuple(tools)

    async def _watch(self, client: McpSession) -> None:
        """Return when the connection is known dead: a call said so, or the heartbeat went unanswered.

        The heartbeat re-lists the tools (``ping`` is gone from the 2026 protocol revision), which also picks
        up tools the server added or removed.
        """
        while True:
            if await wait_event(self._broken, self._ping_interval):
                return
            # the interval passed with the connection intact
            try:
                self.tools = await asyncio.wait_for(self._list(client), self.settings.timeout_s)
            except (MCPError, TimeoutError, OSError) as exc:
                self.mark_broken(f"heartbeat failed: {_describe(exc)}")
                return


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class McpMetrics:
    """The tool route's metrics, from the kernel's registry (``hub.metrics.Metrics.mcp_*``)."""

    def __init__(self, metrics: Any) -> None:
        self.calls = metrics.mcp_tool_calls
        self.seconds = metrics.mcp_tool_seconds
        self.restarts = metrics.mcp_server_restarts
        self.up = metrics.mcp_server_up


class ToolRoute:
    """``services.tools``: the tools of every configured MCP server, offered and called as one set."""

    def __init__(self, servers: Mapping[str, McpServer], *, audit: Audit, metrics: McpMetrics | None = None,
                 reserved: Sequence[str] = (), client_factory: ClientFactory = make_client,
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 60.0, heartbeat_s: float = 30.0) -> None:
        self._audit = audit
        self._metrics = metrics
        # Names the caller already offers the model (the device tools): an MCP tool never shadows them.
        self._reserved = frozenset(reserved)
        self.connections: dict[str, ServerConnection] = {
            name: ServerConnection(name, settings, client_factory=client_factory, backoff_base_s=backoff_base_s,
                                   backoff_cap_s=backoff_cap_s, heartbeat_s=heartbeat_s,
                                   on_restart=self._restarted)
            for name, settings in servers.items()}
        self._specs: dict[str, ToolSpec] = {}

    def _restarted(self, server: str) -> None:
        if self._metrics is not None:
            self._metrics.restarts.labels(server=server).inc()

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing starts here: servers start on first use, so none can delay or break the hub's start."""

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.connections.values()))

    def status(self) -> dict[str, Any]:
        return {name: c.status() for name, c in self.connections.items()}

    # --- tools --------------------------------------------------------------------------------------

    async def list_tools(self, *, timeout: float | None = None) -> list[ToolSpec]:
        """Every server's tools, connecting those used for the first time (in parallel, each within its
        timeout). A server that cannot be reached is left out (and logged): the others still work.

        A server waiting out its backoff after a crash is not waited for — that would slow every request while
        it is down — but the tools it listed stay offered: a call to one waits (within its timeout) for the
        restart, and says clearly if it does not come.
        """
        async def one(conn: ServerConnection) -> None:
            if conn.state == "backoff":
                return
            try:
                await conn.ensure(timeout if timeout is not None else conn.settings.timeout_s)
            except ToolCallError as exc:
                log.warning("mcp server unavailable; its tools are not offered", server=conn.name, error=str(exc))

        await asyncio.gather(*(one(c) for c in self.connections.values()))
        self._refresh_specs()
        return list(self._specs.values())

    def cached_tools(self) -> list[ToolSpec]:
        """The tools as last listed, without connecting (for callers that must not wait)."""
        return list(self._specs.values())

    def _refresh_specs(self) -> None:
        specs: dict[str, ToolSpec] = {}
        seen: dict[str, int] = {}
        for conn in self.connections.values():
            for tool in conn.tools:
                seen[tool.name] = seen.get(tool.name, 0) + 1
        for conn in self.connections.values():
            for tool in conn.tools:
                name = tool.name
                # A name two servers share, or one the caller reserves, is offered as "<server>__<name>".
                if seen[name] > 1 or name in self._reserved:
                    name = f"{conn.name}__{name}"
                name = _FUNCTION_NAME.sub("_", name)[:64]
                specs[name] = ToolSpec(name=name, description=tool.description, input_schema=tool.input_schema,
                                       server=conn.name, remote_name=tool.name)
        self._specs = specs

    async def openai_tools(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The same tools as OpenAI function tools, for ``FrontierClient.chat(tools=…)``."""
        return [spec.openai() for spec in await self.list_tools(timeout=timeout)]

    def has(self, name: str) -> bool:
        return name in self._specs

    async def match(self, text: str) -> ToolSpec | None:
        """A tool to answer ``text`` with no model in between, or None. Conservative on purpose: only a tool
        that needs no arguments, and only when every word of its name (less get/list/show…) is in the text
        and exactly one tool qualifies. Anything needing arguments goes to the frontier model."""
        words = set(re.findall(r"[a-z0-9]+", text.lower()))
        if not words:
            return None
        hits = [spec for spec in await self.list_tools()
                if not spec.required and (need := _name_words(spec.remote_name)) and need <= words]
        return hits[0] if len(hits) == 1 else None

    # --- calls --------------------------------------------------------------------------------------

    async def call(self, name: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None,
                   correlation_id: str | None = None, actor: str = "mcp") -> str:
        """Call a tool by its offered name; its text answer, or ``ToolCallError`` within ``timeout``
        (default: the server's ``timeout_s``), which also bounds starting the server."""
        spec = self._specs.get(name)
        if spec is None:
            await self.list_tools()
            spec = self._specs.get(name)
        if spec is None:
            await self._record(None, name, arguments, "unknown_tool", 0.0, f"no tool called {name!r}",
                               correlation_id, actor)
            raise ToolCallError("unknown_tool", f"no tool called {name!r}")
        conn = self.connections[spec.server]
        limit = timeout if timeout is not None else conn.settings.timeout_s
        args = dict(arguments or {})
        started = time.perf_counter()
        try:
            session = await conn.ensure(limit)
            left = max(0.001, limit - (time.perf_counter() - started))
            # The SDK's own request timeout sends the cancellation to the server; this one is the backstop.
            async with asyncio.timeout(left):
                result = await self._invoke(conn, session, spec, args, left)
        except TimeoutError:
            err = ToolCallError("timeout", f"the tool {spec.remote_name!r} on {spec.server!r} did not answer "
                                           f"within {limit:g} s")
            await self._record(spec, name, args, "timeout", started, str(err), correlation_id, actor)
            raise err from None
        except ToolCallError as exc:
            await self._record(spec, name, args, exc.kind, started, str(exc), correlation_id, actor)
            raise
        await self._record(spec, name, args, "ok", started, None, correlation_id, actor)
        return result

    async def _invoke(self, conn: ServerConnection, session: McpSession, spec: ToolSpec, args: dict[str, Any],
                      left: float) -> str:
        try:
            result = await session.call_tool(spec.remote_name, args, read_timeout_seconds=left)
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise TimeoutError from exc
            if exc.code == mcp_types.CONNECTION_CLOSED:
                conn.mark_broken(f"the connection closed during a call to {spec.remote_name!r}")
                raise ToolCallError("server_down", f"the tool server {spec.server!r} stopped during the call "
                                                   f"to {spec.remote_name!r}; it is being restarted") from exc
            raise ToolCallError("tool_error", f"{spec.remote_name!r} failed: {exc.message}") from exc
        except (OSError, EOFError) as exc:
            conn.mark_broken(_describe(exc))
            raise ToolCallError("server_down", f"the tool server {spec.server!r} is unreachable: "
                                               f"{_describe(exc)}") from exc
        text = result_text(result)
        if getattr(result, "is_error", False):
            raise ToolCallError("tool_error", f"{spec.remote_name!r} failed: {text or 'no detail'}")
        return text

    async def _record(self, spec: ToolSpec | None, name: str, args: Mapping[str, Any] | None, status: str,
                      started: float, error: str | None, correlation_id: str | None, actor: str) -> None:
        seconds = time.perf_counter() - started if started else 0.0
        server = spec.server if spec is not None else "-"
        if self._metrics is not None:
            self._metrics.calls.labels(server=server, tool=spec.remote_name if spec else "-", status=status).inc()
            if spec is not None:
                self._metrics.seconds.labels(server=server).observe(seconds)
            for conn in self.connections.values():
                self._metrics.up.labels(server=conn.name).set(1 if conn.state == "up" else 0)
        shown = json.dumps(dict(args or {}), ensure_ascii=False, default=str)
        if len(shown) > AUDIT_ARGUMENTS_MAX:
            shown = shown[:AUDIT_ARGUMENTS_MAX] + "…"
        # Awaited: a tool call that cannot be audited is an error the caller sees, not a silent gap.
        await self._audit("mcp.tool_call", actor=actor, subject=f"{server}/{spec.remote_name if spec else name}",
                          correlation_id=correlation_id,
                          body={"tool": name, "server": server, "status": status, "ms": round(seconds * 1000, 1),
                                "arguments": shown, "error": error})


_NAME_NOISE = frozenset({"get", "list", "show", "read", "fetch", "query", "the", "a", "of", "for", "current", "my"})


def _name_words(name: str) -> frozenset[str]:
    words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower())
    return frozenset(w for w in words if w not in _NAME_NOISE)
