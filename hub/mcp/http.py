"""The agent's part of ``/api/v1`` and the optional streamable HTTP MCP endpoint, added by ``mount_mcp_http``.

Endpoints (all behind the web token; an agent acts as ``Principal(kind="agent", user="mcp")``):

- ``POST /api/v1/agent/actions`` ``{"device","action","params"}``: a non-hazardous action, queued once (200);
  a hazardous one is refused (409 ``hazardous``).
- ``POST /api/v1/agent/confirmations`` ``{"device","action","params"}``: a hazardous action opens a pending
  confirmation that a person must approve (202); nothing is published before that.
- ``GET /api/v1/agent/confirmations/{id}``: its state.
- ``POST /api/v1/memory/search`` ``{"query","site"?,"limit"?}`` and ``POST /api/v1/memory`` ``{"text","site"?}``:
  the vector memory (``services.embedder`` + ``services.memory``).
- ``/api/v1/mcp`` (only with ``[mcp] http_enabled = true``): the hub as an MCP server over streamable HTTP.

They use the web API's route tables, so they are validated, authenticated (the API's middleware) and listed
in ``/api/v1/openapi.json`` like the rest. There is no approve endpoint here: people approve with
``POST /api/v1/confirmations/{id}/approve`` as an authenticated user.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hub.mcp.agent import AgentError, LocalAgent
from hub.web.api.errors import ApiError
from hub.web.api.keys import ENDPOINTS
from hub.web.api.routing import IDENTITY, Call, Reply, RouteTable, register
from hub.web.deps import WebDeps

log = structlog.get_logger("kitt.mcp.http")

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Site = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Query = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00\x7f]+$")]
Note = Annotated[str, StringConstraints(min_length=1, max_length=4000, pattern=r"^[^\x00\x7f]+$")]

# AgentError.code → HTTP status.
STATUS = {"not_found": 404, "hazardous": 409, "not_hazardous": 409, "action_refused": 409, "unavailable": 503,
          "invalid": 422}
MCP_PATH = "/api/v1/mcp"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AgentActionBody(_Strict):
    device: Name
    action: Name
    params: dict[str, Any] = Field(default_factory=dict, description="e.g. {\"brightness\": 40}")


class AgentConfirmationPath(_Strict):
    id: Ident


class AgentCommandOut(_Open):
    status: str
    device: str
    action: str
    key: str
    outbox_id: int | None = None


class AgentConfirmationOut(_Open):
    id: str
    state: str
    device: str
    action: str
    hazard_class: str
    level: str
    prompt: str
    requested_by: str
    expires_at: str


class MemorySearchBody(_Strict):
    query: Query
    site: Site | None = None
    limit: int = Field(default=5, ge=1, le=20)


class MemoryHit(_Open):
    id: str
    score: float
    text: str


class MemoryHitsOut(_Strict):
    results: list[MemoryHit]


class MemoryBody(_Strict):
    text: Note
    site: Site = "agent"


class MemoryStoredOut(_Open):
    id: str
    site: str


routes = RouteTable(tag="agent")


def _agent(call: Call) -> LocalAgent:
    # Defence in depth: these handlers run only behind the API's authentication middleware.
    if call.request.get(IDENTITY) is None:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    deps = call.deps
    return LocalAgent(services=deps.services, store=lambda: deps.store, spine=lambda: deps.spine)


def _refused(exc: AgentError) -> ApiError:
    return ApiError(STATUS.get(exc.code, 500), exc.code, str(exc))


async def _answer(call_result: Awaitable[Any]) -> Any:
    """The agent's answer, or its refusal as the matching HTTP error."""
    try:
        return await call_result
    except AgentError as exc:
        raise _refused(exc) from exc


@routes.post("/agent/actions", summary="An agent runs a non-hazardous device action", body=AgentActionBody,
             description="Queued once through the outbox, like the panel's actions, as principal agent:mcp. A "
                         "hazardous action is refused (409 hazardous): use POST /api/v1/agent/confirmations.",
             responses={200: ("the command is queued", AgentCommandOut)}, errors=(404, 409, 503))
async def agent_action(call: Call) -> Reply:
    body: AgentActionBody = call.body
    out = await _answer(_agent(call).act(body.device, body.action, body.params))
    return Reply(AgentCommandOut.model_validate(out))


@routes.post("/agent/confirmations", summary="An agent asks a person to approve a hazardous action",
             body=AgentActionBody,
             description="Opens a pending confirmation requested by agent:mcp; nothing is published until a person "
                         "approves it (voice, panel, Home Assistant). An agent can never approve it.",
             responses={202: ("a pending confirmation", AgentConfirmationOut)}, errors=(404, 409, 503))
async def agent_confirmation(call: Call) -> Reply:
    body: AgentActionBody = call.body
    out = await _answer(_agent(call).request_hazardous(body.device, body.action, body.params))
    return Reply(AgentConfirmationOut.model_validate(out), status=202)


@routes.get("/agent/confirmations/{id}", summary="The state of a confirmation an agent asked for",
            path_model=AgentConfirmationPath, responses={200: ("the confirmation", AgentConfirmationOut)},
            errors=(404, 503))
async def agent_confirmation_status(call: Call) -> Reply:
    out = await _answer(_agent(call).confirmation(call.path.id))
    return Reply(AgentConfirmationOut.model_validate(out))


@routes.post("/memory/search", summary="Search the vector memory by meaning", body=MemorySearchBody,
             responses={200: ("the nearest memories, best first", MemoryHitsOut)}, errors=(503,))
async def memory_search(call: Call) -> Reply:
    body: MemorySearchBody = call.body
    hits = await _answer(_agent(call).memory_search(body.query, site=body.site, limit=body.limit))
    return Reply(MemoryHitsOut(results=[MemoryHit.model_validate(h) for h in hits]))


@routes.post("/memory", summary="Store a memory (embedded and written to the vector memory)", body=MemoryBody,
             responses={201: ("stored", MemoryStoredOut)}, errors=(503,))
async def memory_store(call: Call) -> Reply:
    body: MemoryBody = call.body
    out = await _answer(_agent(call).memory_store(body.text, site=body.site))
    return Reply(MemoryStoredOut.model_validate(out), status=201)


def mount_mcp_http(app: web.Application, deps: WebDeps) -> None:
    """Add the agent and memory endpoints (and, when enabled, the streamable HTTP MCP endpoint) to ``app``.

    Call after ``hub.web.api.setup(app)``: without the API's authentication middleware these endpoints would be
    open, so nothing is mounted then.
    """
    if ENDPOINTS not in app:
        log.warning("the web API is not set up; agent and MCP endpoints are not mounted")
        return
    endpoints = tuple(routes.endpoints)
    register(app, endpoints)
    app[ENDPOINTS] = tuple(app[ENDPOINTS]) + endpoints  # so /api/v1/openapi.json lists them
    if deps.config.mcp.http_enabled:
        from hub.mcp.streamable import mount_streamable

        mount_streamable(app, deps, path=MCP_PATH)


__all__ = ["MCP_PATH", "mount_mcp_http", "routes"]
