"""The hub as an MCP server without a hub: the tool set, the agent rules (``LocalAgent``), the agent endpoints
mounted by ``mount_mcp_http``, ``HttpAgent`` (what ``kitt-hub mcp`` uses) against them, and the streamable
HTTP endpoint — over the web tests' in-memory services and aiohttp's loopback test server."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx2
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from hub.config import Config
from hub.contracts import DeviceAction, Principal
from hub.mcp.agent import AgentError, HttpAgent, LocalAgent
from hub.mcp.http import MCP_PATH
from hub.mcp.server import TOOL_NAMES, build_server
from hub.metrics import Metrics
from hub.plugins import Services
from hub.readiness import Readiness
from hub.web.app import create_app
from hub.web.deps import WebDeps
from tests.support.web_app import TOKEN, bearer
from tests.support.web_fakes import FakeConfirmations, FakeDevices, FakeJobs, FakeSpine, FakeStore

# --- in-memory stand-ins for what the web fakes do not cover --------------------------------------------


class EventStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.recorded: list[dict[str, Any]] = []

    async def record_event(self, kind: str, **kw: Any) -> int:
        self.recorded.append({"kind": kind, **kw})
        return len(self.recorded)


class WordEmbedder:
    """Bag of words hashed into 64 dimensions: similar sentences share words, so they are near.

    crc32, not ``hash()``: str hashes change with every process, and so did which words collided (the memory
    search test failed now and then).
    """

    async def embed(self, text: str) -> np.ndarray:
        v = np.zeros(64, np.float32)
        for w in text.lower().replace("?", "").split():
            v[zlib.crc32(w.encode()) % 64] += 1.0
        return v / (np.linalg.norm(v) or 1.0)


@dataclass
class ListMemory:
    points: list[tuple[str, np.ndarray, dict[str, Any]]] = field(default_factory=list)

    async def remember(self, text: str, vector: np.ndarray, *, site: str, user: str | None = None) -> str:
        pid = f"p{len(self.points)}"
        self.points.append((pid, vector, {"text": text, "site": site, "user": user or "", "time": 1.0}))
        return pid

    async def recall(self, vector: np.ndarray, *, site: str | None = None, user: str | None = None,
                     limit: int = 5) -> list[Any]:
        hits = [SimpleNamespace(id=pid, score=float(v @ vector), payload=p) for pid, v, p in self.points
                if site in (None, p["site"])]
        return sorted(hits, key=lambda h: -h.score)[:limit]


@dataclass
class Flushable:
    flushed: int = 0

    async def flush(self) -> None:
        self.flushed += 1


def services() -> Services:
    return Services(devices=FakeDevices(), confirmations=FakeConfirmations(), jobs=FakeJobs(),
                    embedder=WordEmbedder(), memory=ListMemory(), vectors=Flushable())


def deps_for(*, http_enabled: bool = False) -> WebDeps:
    config = Config.model_validate({"web": {"token": TOKEN}, "mcp": {"http_enabled": http_enabled}})
    readiness = Readiness()
    readiness.add("store", lambda: True)
    deps = WebDeps(config=config, metrics=Metrics(), readiness=readiness, services=services(), token=TOKEN)
    deps.store = EventStore()
    deps.spine = FakeSpine(deps.store)
    return deps


def local(deps: WebDeps) -> LocalAgent:
    return LocalAgent(services=deps.services, store=lambda: deps.store, spine=lambda: deps.spine)


@asynccontextmanager
async def api(deps: WebDeps) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(deps)  # mounts the agent endpoints (and /api/v1/mcp when enabled), as the hub does
    async with TestClient(TestServer(app)) as client:
        yield client


# --- the tool set ---------------------------------------------------------------------------------------


async def test_the_tool_set_is_closed_and_nothing_approves() -> None:
    deps = deps_for()
    async with Client(build_server(local(deps))) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == list(TOOL_NAMES)
        assert not [n for n in names if "approve" in n or "cancel" in n]
        result = await client.call_tool("approve_confirmation", {"confirmation_id": "x"})
        assert result.is_error


async def test_refusals_reach_the_agent_as_tool_errors_that_say_what_to_do() -> None:
    deps = deps_for()
    async with Client(build_server(local(deps))) as client:
        result = await client.call_tool("device_action", {"device": "front_door", "action": "unlock"})
        assert result.is_error and "hazardous" in result.content[0].text
        assert "request_hazardous_action" in result.content[0].text
        result = await client.call_tool("request_hazardous_action", {"device": "front_door", "action": "unlock"})
        assert not result.is_error
        opened = json.loads(result.content[0].text)
        assert (opened["state"], opened["requested_by"]) == ("pending", "agent:mcp")
    assert deps.services.devices.enqueued == []


# --- the agent rules ------------------------------------------------------------------------------------


async def test_an_agent_acts_once_and_it_is_audited() -> None:
    deps = deps_for()
    out = await local(deps).act("kitchen_light", "turn_on")
    assert out["status"] == "queued"
    assert deps.services.devices.enqueued == [(DeviceAction("kitchen_light", "turn_on"), out["key"])]
    assert [(e["kind"], e["actor"]) for e in deps.store.recorded] == [("agent.action", "agent:mcp")]
    assert deps.spine.notified == 1


@pytest.mark.parametrize(("device", "action", "code"), [
    ("front_door", "unlock", "hazardous"),
    ("kitchen_light", "unlock", "action_refused"),
    ("garden_gate", "turn_on", "not_found"),
])
async def test_what_an_agent_may_not_do_directly(device: str, action: str, code: str) -> None:
    deps = deps_for()
    with pytest.raises(AgentError) as refused:
        await local(deps).act(device, action)
    assert refused.value.code == code
    assert deps.services.devices.enqueued == []


async def test_a_hazard_request_only_opens_a_pending_confirmation_as_the_agent() -> None:
    deps = deps_for()
    agent = local(deps)
    opened = await agent.request_hazardous("front_door", "unlock")
    confirmation = await deps.services.confirmations.get(opened["id"])
    assert confirmation.state == "pending"
    assert confirmation.requested_by == Principal(kind="agent", user="mcp")
    assert deps.services.devices.enqueued == []
    assert (await agent.confirmation(opened["id"]))["state"] == "pending"
    with pytest.raises(AgentError) as plain:
        await agent.request_hazardous("kitchen_light", "turn_on")
    assert plain.value.code == "not_hazardous"


async def test_memory_is_stored_flushed_and_found_by_meaning() -> None:
    deps = deps_for()
    agent = local(deps)
    await agent.memory_store("the dog is fed at six", site="kitchen")
    await agent.memory_store("the spare key is under the blue pot", site="kitchen")
    assert deps.services.vectors.flushed == 2
    hits = await agent.memory_search("where is the spare key", limit=500)
    assert hits[0]["text"] == "the spare key is under the blue pot" and len(hits) == 2
    with pytest.raises(AgentError) as empty:
        await agent.memory_search("   ")
    assert empty.value.code == "invalid"


async def test_a_missing_service_is_unavailable() -> None:
    deps = deps_for()
    deps.services.memory = None
    with pytest.raises(AgentError) as missing:
        await local(deps).memory_search("anything")
    assert missing.value.code == "unavailable"


# --- the HTTP endpoints, and HttpAgent over them --------------------------------------------------------


async def test_agent_endpoints_need_the_token_and_map_refusals() -> None:
    deps = deps_for()
    async with api(deps) as client:
        body = {"device": "kitchen_light", "action": "turn_on"}
        assert (await client.post("/api/v1/agent/actions", json=body)).status == 401
        ok = await client.post("/api/v1/agent/actions", json=body, headers=bearer())
        assert ok.status == 200 and (await ok.json())["status"] == "queued"
        hazard = {"device": "front_door", "action": "unlock"}
        refused = await client.post("/api/v1/agent/actions", json=hazard, headers=bearer())
        assert refused.status == 409 and (await refused.json())["error"] == "hazardous"
        opened = await client.post("/api/v1/agent/confirmations", json=hazard, headers=bearer())
        assert opened.status == 202 and (await opened.json())["requested_by"] == "agent:mcp"
        bad = await client.post("/api/v1/memory/search", json={"query": "x", "limit": 99}, headers=bearer())
        assert bad.status == 422
        document = await (await client.get("/api/v1/openapi.json")).json()
        assert {"/api/v1/agent/actions", "/api/v1/agent/confirmations", "/api/v1/memory",
                "/api/v1/memory/search"} <= set(document["paths"])
        assert not [p for p in document["paths"] if p.startswith("/api/v1/agent") and "approve" in p]
        assert MCP_PATH not in {r.resource.canonical for r in client.app.router.routes()}  # http_enabled false
    assert len(deps.services.devices.enqueued) == 1


async def test_http_agent_is_the_same_agent_over_the_api() -> None:
    deps = deps_for()
    async with api(deps) as client, HttpAgent(str(client.make_url("")), TOKEN) as agent:
        names = [d["name"] for d in await agent.devices()]
        assert set(names) == {"kitchen_light", "front_door"}
        assert (await agent.act("kitchen_light", "turn_on"))["status"] == "queued"
        with pytest.raises(AgentError) as refused:
            await agent.act("front_door", "unlock")
        assert refused.value.code == "hazardous"
        opened = await agent.request_hazardous("front_door", "unlock")
        assert (await agent.confirmation(opened["id"]))["state"] == "pending"
        await agent.memory_store("the spare key is under the blue pot")
        assert (await agent.memory_search("spare key"))[0]["text"] == "the spare key is under the blue pot"
        assert [j["name"] for j in await agent.routines()] == ["daily_health_check"]
    async with api(deps) as client, HttpAgent(str(client.make_url("")), "wrong-token") as agent:
        with pytest.raises(AgentError) as denied:
            await agent.devices()
        assert denied.value.code == "unauthorized"


# --- the streamable HTTP endpoint ---------------------------------------------------------------------


async def test_streamable_http_endpoint_serves_the_tools_behind_the_token() -> None:
    deps = deps_for(http_enabled=True)
    async with api(deps) as client:
        url = str(client.make_url(MCP_PATH))
        denied = await client.post(MCP_PATH, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert denied.status == 401
        async with httpx2.AsyncClient(headers=bearer()) as http, \
                Client(streamable_http_client(url, http_client=http)) as mcp_client:
            names = [t.name for t in (await mcp_client.list_tools()).tools]
            assert names == list(TOOL_NAMES)
            result = await mcp_client.call_tool("device_action", {"device": "kitchen_light", "action": "turn_on"})
            assert not result.is_error, result
    assert deps.services.devices.enqueued[0][0] == DeviceAction("kitchen_light", "turn_on")
