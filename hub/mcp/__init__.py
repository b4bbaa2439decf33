"""Model Context Protocol, both ways, with the official ``mcp`` SDK (see docs/mcp.md).

- ``hub.mcp.client``: the tool route. Supervised connections to the MCP servers in ``[mcp.servers.NAME]``,
  their tools offered to the frontier model and called with a timeout, an audit event and metrics.
- ``hub.mcp.tools``: its value types (``ToolSpec``, ``ToolCallError``), importable without the SDK.
- ``hub.mcp.answer``: answering a request through MCP tools (called by the understanding service).
- ``hub.mcp.agent``: what an agent may do in this house (devices, non-hazardous actions, memory, routines,
  *requesting* a hazardous action); one implementation in-process, one over the hub's HTTP API.
- ``hub.mcp.server``: the hub as an MCP server over those operations (``kitt-hub mcp``, stdio).
- ``hub.mcp.http``: the agent endpoints of ``/api/v1`` and, via ``hub.mcp.streamable``, the optional streamable
  HTTP MCP endpoint.

Nothing here is imported by the kernel at import time: the plugin ``handlers.mcp`` and the CLI load it.
"""
