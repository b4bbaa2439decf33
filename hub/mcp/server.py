"""The hub as an MCP server: the agent operations (``hub.mcp.agent``) as MCP tools.

Served over stdio by ``kitt-hub mcp`` (with ``HttpAgent``: it talks to the running hub) and over streamable
HTTP inside the hub (``hub.mcp.http``, with ``LocalAgent``). The tool set is deliberately closed: there is no
tool that approves, cancels or otherwise decides a confirmation, and ``request_hazardous_action`` only opens
one. Refusals come back as tool errors (``is_error``) whose text says what to do instead.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from hub.mcp.agent import AgentError, AgentOps

INSTRUCTIONS = (
    "KITT is the local hub of a house. Read devices and their state, run ordinary device actions, search and "
    "store memories, and read the status of the house's routines. Hazardous actions (unlocking a door, opening "
    "the garage, disarming the alarm, switching on the oven …) cannot be done by an agent: "
    "request_hazardous_action opens a pending confirmation, and a person approves it by voice, on the panel or "
    "in Home Assistant. No tool can approve it."
)

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
ACTS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)

# Every tool this server offers. Tests assert the set, so a new tool is a deliberate change.
TOOL_NAMES = ("list_devices", "device_state", "device_action", "request_hazardous_action", "confirmation_status",
              "search_memory", "store_memory", "routine_status")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def build_server(ops: AgentOps, *, name: str = "kitt-hub") -> MCPServer:
    server = MCPServer(name, instructions=INSTRUCTIONS, log_level="WARNING")

    async def run(coro: Any) -> str:
        try:
            return _json(await coro)
        except AgentError as exc:
            # A ToolError reaches the model as is_error with this text: it can read it and do the right thing.
            raise ToolError(f"{exc.code}: {exc}") from exc

    @server.tool(description="All devices of the house with their kind, area, capabilities, hazardous actions, "
                             "current state and availability.", annotations=READ_ONLY)
    async def list_devices() -> str:
        return await run(ops.devices())

    @server.tool(description="One device with its current state and availability.", annotations=READ_ONLY)
    async def device_state(device: str) -> str:
        return await run(ops.device(device))

    @server.tool(description="Run a non-hazardous action on a device: turn_on, turn_off, toggle, set_brightness "
                             "(params: brightness 0-100), set_temperature (params: temperature), close, stop, "
                             "lock, set_position (params: position) … Hazardous actions are refused: use "
                             "request_hazardous_action.", annotations=ACTS)
    async def device_action(device: str, action: str, params: dict[str, Any] | None = None) -> str:
        return await run(ops.act(device, action, params))

    @server.tool(description="Ask a person to approve a hazardous action (unlock a door, open the garage, disarm "
                             "the alarm, switch on the oven …). Only opens a pending confirmation; nothing happens "
                             "until a person approves it by voice, on the panel or in Home Assistant. Returns the "
                             "confirmation's id; check it with confirmation_status.", annotations=ACTS)
    async def request_hazardous_action(device: str, action: str, params: dict[str, Any] | None = None) -> str:
        return await run(ops.request_hazardous(device, action, params))

    @server.tool(description="The state of a confirmation opened by request_hazardous_action: pending, "
                             "executing, done, cancelled, expired …", annotations=READ_ONLY)
    async def confirmation_status(confirmation_id: str) -> str:
        return await run(ops.confirmation(confirmation_id))

    @server.tool(description="Search the house's memory (past conversations and stored notes) by meaning.",
                 annotations=READ_ONLY)
    async def search_memory(query: str, site: str | None = None, limit: int = 5) -> str:
        return await run(ops.memory_search(query, site=site, limit=limit))

    @server.tool(description="Store a note in the house's memory, findable later with search_memory.",
                 annotations=ACTS)
    async def store_memory(text: str, site: str = "agent") -> str:
        return await run(ops.memory_store(text, site=site))

    @server.tool(description="The house's routines (scheduled jobs): schedule, next run, last run and its "
                             "status.", annotations=READ_ONLY)
    async def routine_status() -> str:
        return await run(ops.routines())

    return server
