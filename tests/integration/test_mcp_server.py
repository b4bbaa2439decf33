"""The hub as an MCP server: ``kitt-hub mcp`` spawned as a real subprocess by the SDK's stdio client, against a
running in-process hub (real Mosquitto, PostgreSQL, the bridge simulator) whose web API serves the agent
endpoints of ``hub.mcp.http``.

Issue 11 "done means": an MCP client lists the devices, turns on kitchen_light (exactly one /set), searches
memory, and calls request_hazardous_action for front_door unlock: a pending confirmation appears, nothing is
published until a person approves it, and no MCP tool can approve it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mcp import Client, StdioServerParameters

from hub.app import Hub
from hub.contracts import ConfirmationError, DeviceAction, Principal
from hub.mcp.http import mount_mcp_http
from hub.mcp.server import TOOL_NAMES
from hub.web.app import create_app
from tests.support.config import REPO
from tests.support.hubproc import dumps_toml
from tests.support.hubs import DEVICE_PLUGINS, devices_config, devices_hub

pytestmark = pytest.mark.integration

WAIT = 20.0


@asynccontextmanager
async def agent_api(hub: Hub) -> AsyncIterator[int]:
    """The hub's web app with the agent endpoints, on a free loopback port, over the hub's own services.

    Built like the hub builds its own (``create_app(hub.web_deps)``) plus ``mount_mcp_http`` unless the kernel
    already mounts it, so the test does not depend on where the lead wires it.
    """
    app = create_app(hub.web_deps)
    if "agent_action" not in app.router.named_resources():
        mount_mcp_http(app, hub.web_deps)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def mcp_config(tmp: Path, *, hub_id: str, port: int, token: str) -> Path:
    path = tmp / "mcp-config.toml"
    path.write_text(dumps_toml({"hub": {"id": hub_id, "state_dir": str(tmp / "mcp-state"), "log_level": "warning"},
                                "web": {"listen": f"127.0.0.1:{port}", "token": token}}))
    return path


def kitt_hub_mcp(config_path: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "hub.cli", "mcp", "--config", str(config_path)],
                                 cwd=str(REPO))


async def call(client: Client, tool: str, **arguments: Any) -> tuple[bool, str]:
    result = await client.call_tool(tool, arguments, read_timeout_seconds=WAIT)
    text = "\n".join(getattr(b, "text", "") for b in result.content)
    return bool(result.is_error), text


async def test_an_mcp_agent_reads_acts_remembers_and_can_only_request_hazards(db_dsn: str, state_dir: Path,
                                                                              tmp_path: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir, plugins=DEVICE_PLUGINS,
                            jobs={"daily_health_check": {"schedule": "0 6 * * *"}})
    async with devices_hub(config) as run, agent_api(run.hub) as port:
        await run.devices.wait_for(DeviceAction("front_door", "lock"), WAIT)
        await run.hub.services.embedder.wait_ready()
        params = kitt_hub_mcp(mcp_config(tmp_path, hub_id=config.hub.id, port=port, token=run.hub.web_deps.token))
        async with Client(params, read_timeout_seconds=WAIT) as client:
            # The tool set is closed: nothing in it approves, cancels or decides a confirmation.
            names = [t.name for t in (await client.list_tools()).tools]
            assert sorted(names) == sorted(TOOL_NAMES)
            assert not [n for n in names if "approve" in n or "cancel" in n or "decide" in n]

            failed, text = await call(client, "list_devices")
            assert not failed, text
            devices = {d["name"]: d for d in json.loads(text)}
            assert {"kitchen_light", "front_door"} <= set(devices)
            assert devices["front_door"]["hazards"].get("unlock") == "lock.unlock"
            assert devices["front_door"]["state"].get("lock") == "LOCKED"

            failed, text = await call(client, "device_action", device="kitchen_light", action="turn_on")
            assert not failed and json.loads(text)["status"] == "queued", text
            assert await run.devices.wait_for(DeviceAction("kitchen_light", "turn_on"), WAIT)

            # A hazardous action through the plain action tool is refused and says what to do instead.
            failed, text = await call(client, "device_action", device="front_door", action="unlock")
            assert failed and "hazardous" in text and "request_hazardous_action" in text, text

            for note in ("The dog is fed at six in the evening", "The spare key is in the blue pot by the shed",
                         "The boiler is serviced every October"):
                failed, text = await call(client, "store_memory", text=note, site="kitchen")
                assert not failed, text
            failed, text = await call(client, "search_memory", query="where is the spare key")
            assert not failed, text
            hits = json.loads(text)
            assert hits[0]["text"] == "The spare key is in the blue pot by the shed", hits

            failed, text = await call(client, "routine_status")
            assert not failed and [j["name"] for j in json.loads(text)] == ["daily_health_check"], text

            failed, text = await call(client, "request_hazardous_action", device="front_door", action="unlock")
            assert not failed, text
            opened = json.loads(text)
            assert opened["state"] == "pending" and opened["requested_by"] == "agent:mcp", opened
            cid = opened["id"]

            confirmations = run.hub.services.confirmations
            pending = await confirmations.get(cid)
            assert pending is not None and pending.state == "pending"
            assert pending.requested_by == Principal(kind="agent", user="mcp")
            assert cid in {c.id for c in await confirmations.pending()}
            assert run.sim.commands("front_door") == []

            # No tool approves: a made-up one is unknown, and the service refuses an agent principal anyway.
            failed, text = await call(client, "approve_confirmation", confirmation_id=cid)
            assert failed, text
            with pytest.raises(ConfirmationError) as refused:
                await confirmations.approve(cid, principal=Principal(kind="agent", user="mcp"))
            assert refused.value.reason == "agent_cannot_approve"
            failed, text = await call(client, "confirmation_status", confirmation_id=cid)
            assert not failed and json.loads(text)["state"] == "pending", text
            assert run.sim.commands("front_door") == []

            # A person approves (the panel's user): exactly one unlock reaches the bridge.
            await confirmations.approve(cid, principal=Principal(kind="user", user="web"))
            assert await run.devices.wait_for(DeviceAction("front_door", "unlock"), WAIT)
            assert [json.loads(c.payload) for c in run.sim.commands("front_door")] == [{"state": "UNLOCK"}]
            assert [json.loads(c.payload) for c in run.sim.commands("kitchen_light")] == [{"state": "ON"}]

        events = await run.hub.store.fetch("SELECT kind, actor FROM events WHERE kind = 'agent.action'")
        assert [(e["kind"], e["actor"]) for e in events] == [("agent.action", "agent:mcp")]


async def test_kitt_hub_mcp_says_clearly_when_the_hub_is_not_running(tmp_path: Path) -> None:
    from tests.support.config import free_port

    params = kitt_hub_mcp(mcp_config(tmp_path, hub_id="nohub", port=free_port(), token="t"))
    async with Client(params, read_timeout_seconds=WAIT) as client:
        failed, text = await call(client, "list_devices")
    assert failed and "does not answer" in text and "kitt-hub run" in text, text
