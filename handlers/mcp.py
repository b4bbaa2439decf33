"""The tool route as a plugin: builds ``hub.mcp.client.ToolRoute`` from ``[mcp.servers.NAME]`` and provides it
as ``services.tools``. No server is contacted here: each starts on first use (see docs/mcp.md), so a missing,
slow or broken MCP server never delays or fails the hub's start. With no servers configured the plugin
provides nothing and the hub runs as before.
"""

from __future__ import annotations

from typing import Any

from hub.plugins import PluginContext

# The frontier already offers these device tools (handlers/understanding/tools.py); an MCP tool with the same
# name is offered as "<server>__<name>" so device actions always go through the hazard gate.
RESERVED_TOOL_NAMES = ("device_action", "device_state")


class McpPlugin:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self.route: Any = None  # hub.mcp.client.ToolRoute once started with servers

    async def start(self) -> None:
        ctx = self._ctx
        servers = ctx.config.mcp.servers
        if not servers:
            return
        # Imported here: the MCP SDK takes ~0.4 s to import, which a hub without MCP servers never pays.
        from hub.mcp.client import McpMetrics, ToolRoute

        self.route = ToolRoute(servers, audit=ctx.store.record_event, metrics=McpMetrics(ctx.metrics),
                               reserved=RESERVED_TOOL_NAMES)
        await self.route.start()
        ctx.services.tools = self.route
        ctx.log.info("mcp tool route ready (servers start on first use)", servers=sorted(servers))

    async def stop(self) -> None:
        route, self.route = self.route, None
        if route is None:
            return
        if self._ctx.services.tools is route:
            self._ctx.services.tools = None
        await route.stop()


def create(ctx: PluginContext) -> McpPlugin:
    return McpPlugin(ctx)
