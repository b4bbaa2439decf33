"""What an AI agent (an MCP client) may do in this house, in one place, for both ways the hub serves MCP.

``LocalAgent`` works on the hub's own services (used by the ``/api/v1/agent/*`` and ``/api/v1/memory``
endpoints and by the in-hub streamable HTTP MCP endpoint); ``HttpAgent`` calls those endpoints of a running
hub with its token (used by ``kitt-hub mcp``, which must not start a second hub). Same operations, same
answers, same errors.

The rules: an agent acts as ``Principal(kind="agent")``. It may read devices, state, memory and routines, run
non-hazardous device actions, store memories, and *request* a hazardous action, which only opens a pending
confirmation that a person approves by voice, on the panel or in Home Assistant. There is no operation to
approve or cancel, and the confirmation service refuses agent principals anyway (``agent_cannot_approve``).
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

from hub.contracts import Confirmation, DeviceAction, DeviceInfo, Principal
from hub.errors import KittError

MEMORY_LIMIT_MAX = 20


class AgentError(KittError):
    """A refused or failed agent operation. ``code`` is stable (the ``error`` of the HTTP API):

    not_found, hazardous (use request_hazardous_action), not_hazardous (use device_action), action_refused (the
    device cannot do it now), unavailable (a service is not running), invalid (bad input), failed (anything else).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AgentOps(Protocol):
    async def devices(self) -> list[dict[str, Any]]: ...

    async def device(self, name: str) -> dict[str, Any]: ...

    async def act(self, device: str, action: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    async def request_hazardous(self, device: str, action: str,
                                params: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    async def confirmation(self, confirmation_id: str) -> dict[str, Any]: ...

    async def memory_search(self, query: str, *, site: str | None = None, limit: int = 5) -> list[dict[str, Any]]: ...

    async def memory_store(self, text: str, *, site: str = "agent") -> dict[str, Any]: ...

    async def routines(self) -> list[dict[str, Any]]: ...


def device_dict(info: DeviceInfo, state: Any) -> dict[str, Any]:
    return {
        "name": info.name, "label": info.label, "kind": info.kind, "area": info.area, "adapter": info.adapter,
        "capabilities": list(info.capabilities), "hazards": dict(info.hazards),
        "state": dict(state.state) if state else {}, "available": state.available if state else None,
        "updated_at": state.updated_at.isoformat() if state and state.updated_at else None,
    }


def confirmation_dict(c: Confirmation) -> dict[str, Any]:
    return {
        "id": c.id, "state": c.state, "device": c.action.device, "action": c.action.action,
        "params": dict(c.action.params), "hazard_class": c.hazard_class, "level": c.level, "prompt": c.prompt,
        "requested_by": c.requested_by.label, "created_at": c.created_at.isoformat(),
        "expires_at": c.expires_at.isoformat(),
    }


class LocalAgent:
    """The agent operations on the hub's services (in the hub process)."""

    def __init__(self, *, services: Any, store: Callable[[], Any], spine: Callable[[], Any],
                 agent: str = "mcp") -> None:
        # Getters: the hub sets its store and spine after the web app (which builds this) exists.
        self._services = services
        self._get_store = store
        self._get_spine = spine
        self.principal = Principal(kind="agent", user=agent)

    def _need(self, name: str) -> Any:
        service = getattr(self._services, name, None)
        if service is None:
            raise AgentError("unavailable", f"the {name} service is not running on this hub")
        return service

    async def devices(self) -> list[dict[str, Any]]:
        devices = self._need("devices")
        infos = sorted(devices.all(), key=lambda d: (d.area, d.label))
        return [device_dict(i, devices.state(i.name)) for i in infos]

    async def device(self, name: str) -> dict[str, Any]:
        devices = self._need("devices")
        info = devices.get(name)
        if info is None:
            raise AgentError("not_found", f"no device called {name!r}")
        return device_dict(info, devices.state(name))

    def _checked(self, device: str, action: str, params: Mapping[str, Any] | None) -> tuple[Any, DeviceAction]:
        devices = self._need("devices")
        if devices.get(device) is None:
            raise AgentError("not_found", f"no device called {device!r}")
        act = DeviceAction(device=device, action=action, params=dict(params or {}))
        if (why := devices.validate(act)) is not None:
            raise AgentError("action_refused", why)
        return devices, act

    async def act(self, device: str, action: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        devices, act = self._checked(device, action, params)
        if devices.hazard_class(act) is not None:
            raise AgentError("hazardous", f"{act.describe()} is hazardous: call request_hazardous_action, which "
                                          "asks a person to approve it")
        store, spine = self._get_store(), self._get_spine()
        if store is None or spine is None:
            raise AgentError("unavailable", "the store or the MQTT spine is not running yet")
        key = f"agent:{uuid.uuid4().hex}"
        async with spine.transaction() as conn:  # the relay publishes the command right after the commit
            outbox_id = await devices.enqueue_command(conn, act, key=key, correlation_id=key)
            await store.record_event("agent.action", actor=self.principal.label, subject=device,
                                     correlation_id=key, conn=conn,
                                     body={"action": act.action, "params": act.params})
        return {"status": "queued", "device": device, "action": action, "key": key, "outbox_id": outbox_id}

    async def request_hazardous(self, device: str, action: str,
                                params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        devices, act = self._checked(device, action, params)
        hazard = devices.hazard_class(act)
        if hazard is None:
            raise AgentError("not_hazardous", f"{act.describe()} is not hazardous: call device_action")
        confirmations = self._need("confirmations")
        confirmation = await confirmations.request(act, hazard_class=hazard, principal=self.principal,
                                                   correlation_id=f"agent:{uuid.uuid4().hex[:12]}")
        return confirmation_dict(confirmation)

    async def confirmation(self, confirmation_id: str) -> dict[str, Any]:
        confirmation = await self._need("confirmations").get(confirmation_id)
        if confirmation is None:
            raise AgentError("not_found", f"no confirmation {confirmation_id!r}")
        return confirmation_dict(confirmation)

    async def memory_search(self, query: str, *, site: str | None = None, limit: int = 5) -> list[dict[str, Any]]:
        if not query.strip():
            raise AgentError("invalid", "the query is empty")
        embedder, memory = self._need("embedder"), self._need("memory")
        vector = await embedder.embed(query)
        hits = await memory.recall(vector, site=site, limit=max(1, min(limit, MEMORY_LIMIT_MAX)))
        return [{"id": str(h.id), "score": round(float(h.score), 4), "text": h.payload.get("text", ""),
                 "site": h.payload.get("site"), "time": h.payload.get("time")} for h in hits]

    async def memory_store(self, text: str, *, site: str = "agent") -> dict[str, Any]:
        if not text.strip():
            raise AgentError("invalid", "the text is empty")
        embedder, memory, vectors = self._need("embedder"), self._need("memory"), self._need("vectors")
        vector = await embedder.embed(text)
        point_id = await memory.remember(text, vector, site=site, user=self.principal.user)
        # Flushed before answering: an agent that stores and then searches finds what it stored.
        await vectors.flush()
        return {"id": str(point_id), "site": site}

    async def routines(self) -> list[dict[str, Any]]:
        jobs = self._need("jobs")
        return [_jsonable(j) for j in await jobs.list_jobs()]


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(row), default=str))


class HttpAgent:
    """The same operations over a running hub's ``/api/v1`` with its bearer token (for ``kitt-hub mcp``)."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpAgent:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._session = aiohttp.ClientSession(headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        if self._session is None:
            raise AgentError("unavailable", "the agent client is not open")
        url = f"{self._base}/api/v1{path}"
        try:
            async with self._session.request(method, url, json=body) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise AgentError("unavailable", f"the hub does not answer at {self._base}: "
                                            f"{type(exc).__name__}: {exc} (is `kitt-hub run` running?)") from exc
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            code = data.get("error", "failed") if isinstance(data, dict) else "failed"
            detail = data.get("detail") if isinstance(data, dict) else None
            raise AgentError(str(code), _detail_text(detail) or f"HTTP {status} from {path}")
        if data is None:
            raise AgentError("failed", f"{method} {path} answered {status} without a JSON body")
        return data

    async def devices(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/devices"))["devices"])

    async def device(self, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/devices/{urllib.parse.quote(name, safe='')}"))

    async def act(self, device: str, action: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(await self._call("POST", "/agent/actions",
                                     {"device": device, "action": action, "params": dict(params or {})}))

    async def request_hazardous(self, device: str, action: str,
                                params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(await self._call("POST", "/agent/confirmations",
                                     {"device": device, "action": action, "params": dict(params or {})}))

    async def confirmation(self, confirmation_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/agent/confirmations/{urllib.parse.quote(confirmation_id, safe='')}"))

    async def memory_search(self, query: str, *, site: str | None = None, limit: int = 5) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"query": query, "limit": limit}
        if site:
            body["site"] = site
        return list((await self._call("POST", "/memory/search", body))["results"])

    async def memory_store(self, text: str, *, site: str = "agent") -> dict[str, Any]:
        return dict(await self._call("POST", "/memory", {"text": text, "site": site}))

    async def routines(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/jobs"))["jobs"])


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field')}: {d.get('problem')}" if isinstance(d, dict) else str(d) for d in detail)
    return "" if detail is None else str(detail)
