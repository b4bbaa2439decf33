"""Helpers for web tests: deps with fake services, a test client, logging in like a browser."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub.config import Config
from hub.metrics import Metrics
from hub.plugins import Services
from hub.readiness import Readiness
from hub.web.app import create_app
from hub.web.deps import WebDeps

TOKEN = "unit-test-token-0123456789"


def make_deps(*, token: str = TOKEN, login_max_failures: int = 5, **services: Any) -> WebDeps:
    config = Config.model_validate({"web": {"token": token, "login_max_failures": login_max_failures}})
    readiness = Readiness()
    readiness.add("store", lambda: True)
    return WebDeps(config=config, metrics=Metrics(), readiness=readiness, services=Services(**services),
                   token=token)


@asynccontextmanager
async def client_for(deps: WebDeps) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(deps)
    async with TestClient(TestServer(app)) as client:
        yield client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: TestClient[Any, Any], token: str = TOKEN) -> str:
    """Log in through the form like a browser; returns the session's CSRF token (from /api/v1/session)."""
    page = await client.get("/login")
    html = await page.text()
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the login form has no CSRF field"
    response = await client.post("/login", data={"csrf": match.group(1), "token": token}, allow_redirects=False)
    assert response.status == 303, await response.text()
    session = await client.get("/api/v1/session")
    assert session.status == 200
    return (await session.json())["csrf"]
