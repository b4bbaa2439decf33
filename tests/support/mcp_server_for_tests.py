"""A small real MCP server over stdio, written with the official SDK, for the tool-route tests.

Run as ``python -m tests.support.mcp_server_for_tests``. Tools:

- ``get_weather(city)``: a fixed, recognisable forecast ("Weather in Paris: sunny, 21 °C (test server)").
- ``slow_tool(seconds)``: sleeps, then answers; for timeouts and for killing the server mid-call.
- ``whoami()``: the process id (no arguments), so a test can tell a restarted server from the first one.

With ``MCP_TEST_PID_FILE`` set, the server writes its pid there at start, and with ``MCP_TEST_STARTED_FILE``
set, ``slow_tool`` writes a line there when it starts sleeping, so a test knows the call is in flight.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer


def _mark_started() -> None:
    marker = os.environ.get("MCP_TEST_STARTED_FILE")
    if marker:
        with Path(marker).open("a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")


def build() -> MCPServer:
    server = MCPServer("kitt-test-tools", log_level="WARNING")

    @server.tool(description="The current weather forecast for a city.")
    def get_weather(city: str) -> str:
        return f"Weather in {city}: sunny, 21 °C (test server)"

    @server.tool(description="Waits the given number of seconds, then answers.")
    async def slow_tool(seconds: float = 30.0) -> str:
        _mark_started()
        await asyncio.sleep(seconds)
        return f"slept {seconds} s"

    @server.tool(description="The process id of this tool server.")
    def whoami() -> str:
        return str(os.getpid())

    return server


def main() -> None:
    pid_file = os.environ.get("MCP_TEST_PID_FILE")
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()), encoding="utf-8")
    build().run("stdio")


if __name__ == "__main__":
    main()
