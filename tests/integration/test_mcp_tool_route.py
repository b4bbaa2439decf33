"""The tool route end to end: a real hub (Mosquitto, PostgreSQL, the bridge simulator) with the MCP plugin, a
real stdio MCP server process (tests/support/mcp_server_for_tests.py) and the loopback frontier stand-in that
chooses the tool; requests over MQTT (``kitt/<id>/ask``).

Issue 11 "done means": a request the local intents miss is answered through the tool; with the MCP server
killed mid-call, the request gets a clear error within its timeout and the hub stays up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.config import Config
from tests.support.frontier_stub import FrontierStub
from tests.support.hubs import DEVICE_PLUGINS, devices_config, devices_hub

pytestmark = pytest.mark.integration

PLUGINS = (*DEVICE_PLUGINS, "handlers.mcp")
TOOL_TIMEOUT_S = 8.0
ASK_TIMEOUT_S = 25.0  # longer than the tool's timeout: a reply proves the hub answered by itself
WEATHER = "Weather in Paris: sunny, 21 °C (test server)"


def tool_server(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {"command": [sys.executable, "-m", "tests.support.mcp_server_for_tests"],
            "timeout_s": TOOL_TIMEOUT_S,
            "env": {"MCP_TEST_PID_FILE": str(tmp / "mcp.pid"), "MCP_TEST_STARTED_FILE": str(tmp / "slow.started")},
            **extra}


def config_for(db_dsn: str, state_dir: Path, stub: FrontierStub, servers: dict[str, Any]) -> Config:
    return devices_config(dsn=db_dsn, state_dir=state_dir, plugins=PLUGINS,
                          frontier={"base_url": stub.base_url, "model": "stub", "timeout_s": 5},
                          mcp={"servers": servers})


def tool_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


def read_if_any(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


async def wait_for_file(path: Path) -> str:
    """The file's text once it exists and is not empty (a bound against hanging, not a timing assertion)."""
    async with asyncio.timeout(ASK_TIMEOUT_S):
        while not (text := read_if_any(path)):
            await asyncio.sleep(0.05)
    return text


async def test_a_request_the_intents_miss_is_answered_through_an_mcp_tool(db_dsn: str, state_dir: Path,
                                                                          tmp_path: Path) -> None:
    async with FrontierStub() as stub:
        config = config_for(db_dsn, state_dir, stub, {"weather": tool_server(tmp_path)})
        async with devices_hub(config) as run:
            stub.reply_with_tool("get_weather", city="Paris")
            stub.reply_with_text("It is sunny and 21 degrees in Paris.")
            reply = await run.ask("will I need an umbrella in paris today", timeout=ASK_TIMEOUT_S)

            assert (reply["route"], reply["text"]) == ("tool", "It is sunny and 21 degrees in Paris."), reply
            offered = {t["function"]["name"] for t in stub.requests[0]["tools"]}
            assert {"get_weather", "slow_tool", "whoami", "device_action", "device_state"} <= offered
            # The tool really ran: its answer went back to the model in the follow-up round.
            assert tool_messages(stub.requests[1]) == [WEATHER]
            assert run.sim.commands() == []

            assert run.hub.store is not None
            events = await run.hub.store.fetch(
                "SELECT subject, body FROM events WHERE kind = 'mcp.tool_call' ORDER BY id")
            assert [(e["subject"], e["body"]["status"]) for e in events] == [("weather/get_weather", "ok")]
            assert json.loads(events[0]["body"]["arguments"]) == {"city": "Paris"}
            metrics = run.hub.metrics.render().decode()
            assert 'kitt_mcp_tool_calls_total{server="weather",status="ok",tool="get_weather"} 1.0' in metrics


async def test_killing_the_mcp_server_mid_call_gives_a_clear_error_and_the_hub_stays_up(
        db_dsn: str, state_dir: Path, tmp_path: Path) -> None:
    async with FrontierStub() as stub:
        config = config_for(db_dsn, state_dir, stub, {"weather": tool_server(tmp_path)})
        async with devices_hub(config) as run:
            stub.reply_with_tool("slow_tool", seconds=120)
            pending = asyncio.create_task(run.ask("think about it for a long while", timeout=ASK_TIMEOUT_S))
            await wait_for_file(tmp_path / "slow.started")  # the call is in flight on the server
            killed = int((tmp_path / "mcp.pid").read_text())
            os.kill(killed, signal.SIGKILL)

            reply = await pending
            assert reply["route"] == "tool", reply
            assert reply["text"].startswith("Sorry, I couldn't get that: the tool server 'weather' stopped"), reply

            # The hub is up: ready, and the next request is answered through a restarted tool server.
            assert run.hub.web is not None
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://127.0.0.1:{run.hub.web.port}/readyz") as resp:
                assert resp.status == 200
            stub.reply_with_tool("whoami")
            stub.reply_with_text("I asked the tool server.")
            reply = await run.ask("run the diagnostic helper", timeout=ASK_TIMEOUT_S)
            assert (reply["route"], reply["text"]) == ("tool", "I asked the tool server."), reply
            restarted = tool_messages(stub.requests[-1])
            assert len(restarted) == 1 and restarted[0].isdigit() and int(restarted[0]) != killed

            assert run.hub.store is not None
            statuses = [r["status"] for r in await run.hub.store.fetch(
                "SELECT body->>'status' AS status FROM events WHERE kind = 'mcp.tool_call' ORDER BY id")]
            assert statuses == ["server_down", "ok"]


async def test_a_tool_that_outlives_its_timeout_gets_a_clear_error(db_dsn: str, state_dir: Path,
                                                                  tmp_path: Path) -> None:
    async with FrontierStub() as stub:
        config = config_for(db_dsn, state_dir, stub, {"weather": tool_server(tmp_path, timeout_s=4.0)})
        async with devices_hub(config) as run:
            # Warm: the first call also starts the server, and that start counts against the call's timeout.
            stub.reply_with_tool("get_weather", city="Paris")
            stub.reply_with_text("Sunny.")
            assert (await run.ask("will I need an umbrella in paris today", timeout=ASK_TIMEOUT_S))["route"] == "tool"

            stub.reply_with_tool("slow_tool", seconds=120)
            reply = await run.ask("think about it for a long while", timeout=ASK_TIMEOUT_S)
            assert reply["route"] == "tool", reply
            assert reply["text"] == ("Sorry, I couldn't get that: the tool 'slow_tool' on 'weather' did not answer "
                                     "within 4 s."), reply


async def test_a_broken_mcp_server_never_blocks_the_hub(db_dsn: str, state_dir: Path, tmp_path: Path) -> None:
    async with FrontierStub() as stub:
        broken = {"command": [str(tmp_path / "no-such-mcp-server")], "timeout_s": 3}
        config = config_for(db_dsn, state_dir, stub, {"broken": broken, "weather": tool_server(tmp_path)})
        async with devices_hub(config) as run:  # ready although one server cannot start
            stub.reply_with_tool("get_weather", city="Paris")
            stub.reply_with_text("Sunny in Paris.")
            reply = await run.ask("will I need an umbrella in paris today", timeout=ASK_TIMEOUT_S)
            assert (reply["route"], reply["text"]) == ("tool", "Sunny in Paris."), reply
            assert tool_messages(stub.requests[1]) == [WEATHER]
            status = run.hub.services.tools.status()
            assert status["weather"]["state"] == "up" and status["broken"]["state"] != "up"
            assert status["broken"]["error"]
