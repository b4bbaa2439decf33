"""The OpenAPI 3.1 document of ``/api/v1``, generated from the endpoint definitions the server runs.

Path and query parameters come from the endpoints' path/query models, bodies and responses from their
pydantic models (JSON Schema 2020-12, which OpenAPI 3.1 uses as is), and the errors every endpoint can return
(401 without credentials, 403 on a bad CSRF token, 422 on a bad body …) are added from what the middleware
and the validation do, so the document and the server agree by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from hub.web.api.models import ErrorOut
from hub.web.api.routing import Endpoint

REF = "#/components/schemas/{model}"

ERROR_TEXT = {
    400: "the body is not valid JSON",
    401: "no or a wrong token / session",
    403: "refused (a missing or wrong CSRF token, or not allowed)",
    404: "not found",
    409: "conflicts with the current state",
    415: "the body is not application/json",
    422: "the request is valid JSON but not what this endpoint accepts; detail names each problem",
    423: "locked out after too many wrong PINs",
    426: "a WebSocket upgrade is required",
    429: "too many failed attempts from this address; see Retry-After",
    503: "a service this endpoint needs is not running",
}


def _strip_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Query and path values cannot be null: ``X | None`` means the parameter may be left out."""
    options = schema.get("anyOf")
    if not options:
        return schema
    rest = [o for o in options if o != {"type": "null"}]
    if len(rest) == len(options):
        return schema
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(rest) == 1:
        out.update(rest[0])
    else:
        out["anyOf"] = rest
    if out.get("default", 0) is None:
        del out["default"]
    return out


def _errors(endpoint: Endpoint) -> set[int]:
    codes = set(endpoint.errors)
    if not endpoint.public:
        codes |= {401, 429}
        if endpoint.mutating:
            codes.add(403)
    if endpoint.path_model is not None or endpoint.query_model is not None:
        codes.add(422)
    if endpoint.body_model is not None:
        codes |= {400, 415, 422}
    return codes


def build_document(endpoints: Iterable[Endpoint], *, version: str = "1") -> dict[str, Any]:
    endpoints = list(endpoints)
    pairs: list[tuple[type[BaseModel], Any]] = [(ErrorOut, "serialization")]
    for ep in endpoints:
        for model in (ep.path_model, ep.query_model, ep.body_model):
            if model is not None:
                pairs.append((model, "validation"))
        for _desc, model in ep.responses.values():
            if model is not None:
                pairs.append((model, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(pairs)), ref_template=REF)
    components: dict[str, Any] = top.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return refs[(model, mode)]

    def resolved(model: type[BaseModel]) -> dict[str, Any]:
        name = ref(model, "validation")["$ref"].rsplit("/", 1)[1]
        return components[name]

    def parameters(model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
        if model is None:
            return []
        schema = resolved(model)
        required = set(schema.get("required", ()))
        out = []
        for name, prop in schema.get("properties", {}).items():
            prop = _strip_null(dict(prop))
            param: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required,
                                     "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            out.append(param)
        return out

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {"operationId": ep.operation_id, "summary": ep.summary, "tags": [ep.tag]}
        if ep.description:
            op["description"] = ep.description
        params = parameters(ep.path_model, "path") + parameters(ep.query_model, "query")
        if params:
            op["parameters"] = params
        if ep.body_model is not None:
            op["requestBody"] = {"required": not ep.body_optional,
                                 "content": {"application/json": {"schema": ref(ep.body_model, "validation")}}}
        responses: dict[str, Any] = {}
        for status, (desc, model) in sorted(ep.responses.items()):
            entry: dict[str, Any] = {"description": desc}
            if model is not None:
                entry["content"] = {"application/json": {"schema": ref(model, "serialization")}}
            responses[str(status)] = entry
        for status in sorted(_errors(ep)):
            responses[str(status)] = {
                "description": ERROR_TEXT.get(status, "error"),
                "content": {"application/json": {"schema": ref(ErrorOut, "serialization")}},
            }
        op["responses"] = responses
        if ep.public:
            op["security"] = []
        paths.setdefault(ep.path, {})[ep.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "KITT Edge Hub API",
            "version": version,
            "description": "The local JSON API of the hub. Every call needs the token (Authorization: Bearer) "
                           "or a panel session cookie, reads too: the answers describe the house. Changes made "
                           "with the cookie also need the X-CSRF-Token header.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "the web token (web.token / web.token_file)"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "kitt_session"},
            },
        },
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
    }
