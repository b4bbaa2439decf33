"""The OpenAPI document is valid OpenAPI 3.1 and describes exactly the routes the server has."""

from __future__ import annotations

import re

import pytest
from aiohttp import web

from hub.web.api import all_endpoints
from hub.web.api.keys import ENDPOINTS
from hub.web.app import create_app
from hub.web.openapi import build_document
from tests.support.web_app import client_for, make_deps


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    return {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}


def document_operations(doc: dict) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in doc["paths"].items() for method in ops}


def test_document_is_valid_openapi_31() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    doc = build_document(all_endpoints())
    assert doc["openapi"].startswith("3.1")
    validator.validate(doc)


def test_every_route_is_documented_and_every_documented_operation_is_served() -> None:
    app = create_app(make_deps())
    # Everything the app serves, the core API and the agent/memory endpoints the MCP module mounts.
    assert router_operations(app) == document_operations(build_document(app[ENDPOINTS]))
    assert set(document_operations(build_document(all_endpoints()))) <= router_operations(app)


def test_path_parameters_match_the_path_templates() -> None:
    doc = build_document(all_endpoints())
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)


def test_security_is_declared_and_errors_are_documented() -> None:
    doc = build_document(all_endpoints())
    assert set(doc["components"]["securitySchemes"]) == {"bearerAuth", "sessionCookie"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = op.get("security") == []
            assert public == (path == "/api/v1/openapi.json"), path
            if not public:
                assert "401" in op["responses"], (method, path)
            if method == "post" and not public:
                assert "403" in op["responses"], (method, path)
            if "requestBody" in op:
                assert {"400", "415", "422"} <= set(op["responses"]), (method, path)


async def test_the_served_document_is_the_generated_one() -> None:
    async with client_for(make_deps()) as client:
        response = await client.get("/api/v1/openapi.json")
        assert response.status == 200
        served = await response.json()
        assert served == build_document(client.server.app[ENDPOINTS])
        assert set(document_operations(build_document(all_endpoints()))) <= document_operations(served)
