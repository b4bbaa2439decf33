"""``kitt-hub mcp [--config PATH]``: the hub as an MCP server on stdio, for an MCP client (an AI agent) to spawn.

It talks to the *running* hub (``kitt-hub run``) through its HTTP API with the configured web token — it never
starts a second hub. stdout carries MCP's JSON-RPC and nothing else; logs go to stderr. See docs/mcp.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from hub.cli.common import add_config_arg, hub_url, load_or_exit
from hub.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mcp", help="serve the hub to an MCP client over stdio (talks to the running hub)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call to the hub's API")
    add_config_arg(p)
    p.set_defaults(func=_mcp)


def _mcp(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    from hub.logs import configure_logging

    # Before anything logs: every log line must go to stderr, stdout is the protocol.
    configure_logging(level=config.hub.log_level, fmt=config.hub.log_format)
    if not config.web.token:
        print(f"kitt-hub mcp: no web token (web.token or {config.web.token_path()}); the hub will refuse calls",
              file=sys.stderr)
    asyncio.run(serve(config, timeout_s=args.timeout))
    return 0


async def serve(config: Config, *, timeout_s: float) -> None:
    from hub.mcp.agent import HttpAgent
    from hub.mcp.server import build_server

    async with HttpAgent(hub_url(config), config.web.token, timeout_s=timeout_s) as agent:
        await build_server(agent, name=f"kitt-hub-{config.hub.id}").run_stdio_async()
