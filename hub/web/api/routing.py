"""Route definitions that both serve requests and describe them in the OpenAPI document.

Each endpoint names its path, query and body models (pydantic) and its response models. The same definition
registers the aiohttp route, validates every request before the handler sees it, and generates the document
(``hub.web.openapi``), so the two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from hub.web.api.errors import ApiError, validation_problems
from hub.web.auth import Identity
from hub.web.deps import WebDeps
from hub.web.keys import DEPS

API_PREFIX = "/api/v1"
IDENTITY: web.RequestKey[Identity] = web.RequestKey("kitt_identity")


@dataclass(frozen=True)
class Reply:
    body: BaseModel
    status: int = 200


@dataclass
class Call:
    """One validated request as a handler sees it."""

    request: web.Request
    deps: WebDeps
    path: Any
    query: Any
    body: Any

    @property
    def identity(self) -> Identity | None:
        return self.request.get(IDENTITY)


Handler = Callable[[Call], Awaitable[Reply | web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the full aiohttp path, e.g. /api/v1/devices/{name}
    handler: Handler
    summary: str
    tag: str
    responses: Mapping[int, tuple[str, type[BaseModel] | None]]
    path_model: type[BaseModel] | None = None
    query_model: type[BaseModel] | None = None
    body_model: type[BaseModel] | None = None
    body_optional: bool = False
    errors: tuple[int, ...] = ()
    public: bool = False
    description: str = ""

    @property
    def mutating(self) -> bool:
        return self.method not in ("GET", "HEAD", "OPTIONS")

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


@dataclass
class RouteTable:
    """The endpoints of one routes module (immutable definitions, like aiohttp's ``RouteTableDef``)."""

    tag: str
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(self, method: str, path: str, *, summary: str, responses: Mapping[int, tuple[str, Any]],
              path_model: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
              body: type[BaseModel] | None = None, body_optional: bool = False, errors: tuple[int, ...] = (),
              public: bool = False, description: str = "") -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(Endpoint(
                method=method, path=API_PREFIX + path, handler=handler, summary=summary, tag=self.tag,
                responses=responses, path_model=path_model, query_model=query, body_model=body,
                body_optional=body_optional, errors=errors, public=public, description=description))
            return handler
        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)


def _validate(model: type[BaseModel] | None, data: Mapping[str, Any], error: str, where: str) -> Any:
    if model is None:
        if data:
            raise ApiError(422, error, [{"field": k, "problem": f"unknown {where} parameter"} for k in data])
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, error, validation_problems(exc)) from exc


def _query(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ApiError(422, "invalid_query", [{"field": key, "problem": "given more than once"}])
        out[key] = values[0]
    return out


async def _body(request: web.Request, endpoint: Endpoint) -> Any:
    model = endpoint.body_model
    if model is None:
        return None
    raw = await request.read()
    if not raw.strip():
        if endpoint.body_optional:
            return model.model_validate({})
        raise ApiError(422, "invalid_body", "a JSON object body is required")
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json", "the body is not UTF-8") from exc
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_problems(exc)) from exc


def make_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        path = _validate(endpoint.path_model, dict(request.match_info), "invalid_path", "path")
        query = _validate(endpoint.query_model, _query(request), "invalid_query", "query")
        body = await _body(request, endpoint)
        result = await endpoint.handler(Call(request=request, deps=request.app[DEPS], path=path, query=query,
                                             body=body))
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result.body.model_dump(mode="json"), status=result.status)

    handle.__name__ = endpoint.operation_id
    return handle


def register(app: web.Application, endpoints: tuple[Endpoint, ...]) -> None:
    for endpoint in endpoints:
        app.router.add_route(endpoint.method, endpoint.path, make_handler(endpoint), name=endpoint.operation_id)
