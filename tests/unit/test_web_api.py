"""The /api/v1 routes, authentication, CSRF, errors and headers, against fake services (no I/O)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import WSMsgType, WSServerHandshakeError, web

from hub.contracts import DeviceAction, Principal
from hub.web.api.keys import PUBLIC_PATHS
from hub.web.app import create_app
from tests.support.web_app import TOKEN, bearer, client_for, login, make_deps
from tests.support.web_fakes import (
    FakeCache,
    FakeConfirmations,
    FakeDevices,
    FakeJobs,
    FakeSpine,
    FakeStore,
    make_event,
)

SAMPLE = {"name": "kitchen_light", "id": "abc123"}


def full_deps(**kw: Any) -> Any:
    deps = make_deps(devices=FakeDevices(), confirmations=FakeConfirmations(), jobs=FakeJobs(), cache=FakeCache(),
                     **kw)
    deps.store = FakeStore([make_event(i) for i in range(1, 8)])
    deps.spine = FakeSpine(deps.store)
    return deps


def api_routes(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, concrete path) under /api/ from the router itself, so a new route cannot be missed."""
    out = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or not resource.canonical.startswith("/api/") or route.method == "HEAD":
            continue
        if resource.canonical in app[PUBLIC_PATHS]:
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE.get(m.group(1), "x"), resource.canonical)
        out.append((route.method, path))
    return out


def test_the_router_has_mutating_api_routes() -> None:
    routes = api_routes(create_app(full_deps()))
    assert sum(1 for m, _ in routes if m == "POST") >= 6
    assert ("GET", "/api/v1/devices") in routes


async def test_every_api_call_without_credentials_is_401() -> None:
    deps = full_deps()
    async with client_for(deps) as client:
        routes = api_routes(client.app)  # type: ignore[arg-type]
        for method, path in routes:
            response = await client.request(method, path, json={})
            assert response.status == 401, (method, path, response.status)
            body = await response.json()
            assert body["error"] == "unauthorized"
        # Nothing happened behind the refusals.
        assert deps.services.devices.enqueued == [] and deps.services.jobs.runs == []


async def test_every_mutating_call_with_a_cookie_but_no_csrf_token_is_403() -> None:
    deps = full_deps()
    async with client_for(deps) as client:
        csrf = await login(client)
        mutating = [(m, p) for m, p in api_routes(client.app) if m not in ("GET", "HEAD")]  # type: ignore[arg-type]
        assert mutating
        for method, path in mutating:
            response = await client.request(method, path, json={})
            assert response.status == 403, (method, path)
            assert (await response.json())["error"] == "csrf"
            wrong = await client.request(method, path, json={}, headers={"X-CSRF-Token": csrf + "x"})
            assert wrong.status == 403
        cross = await client.post("/api/v1/jobs/daily_health_check/run",
                                  headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert cross.status == 403
        ok = await client.post("/api/v1/jobs/daily_health_check/run", headers={"X-CSRF-Token": csrf})
        assert ok.status == 202


async def test_public_endpoints_need_no_credentials() -> None:
    async with client_for(full_deps()) as client:
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
            assert (await client.get(path)).status == 200, path


async def test_wrong_bearer_tokens_are_throttled_per_address_even_for_the_right_one() -> None:
    deps = full_deps(login_max_failures=3)
    async with client_for(deps) as client:
        for _ in range(3):
            assert (await client.get("/api/v1/status", headers=bearer("nope"))).status == 401
        throttled = await client.get("/api/v1/status", headers=bearer(TOKEN))
        assert throttled.status == 429
        assert int(throttled.headers["Retry-After"]) >= 1
    metrics = deps.metrics.render().decode()
    assert 'kitt_messages_rejected_total{reason="api_unauthorized"} 3.0' in metrics
    assert 'kitt_messages_rejected_total{reason="api_throttled"} 1.0' in metrics


async def test_login_form_sets_a_strict_httponly_cookie_and_checks_csrf() -> None:
    async with client_for(full_deps()) as client:
        page = await client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
        forged = await client.post("/login", data={"csrf": "forged-value-1234567890", "token": TOKEN},
                                   allow_redirects=False)
        assert forged.status == 403
        response = await client.post("/login", data={"csrf": csrf, "token": TOKEN}, allow_redirects=False)
        assert response.status == 303
        cookie = response.headers.getall("Set-Cookie")
        session = next(c for c in cookie if c.startswith("kitt_session="))
        assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
        assert TOKEN not in session
        assert (await client.get("/", allow_redirects=False)).status == 200


async def test_login_with_the_wrong_token_is_throttled() -> None:
    async with client_for(full_deps(login_max_failures=2)) as client:
        page = await client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
        for _ in range(2):
            bad = await client.post("/login", data={"csrf": csrf, "token": "wrong"}, allow_redirects=False)
            assert bad.status == 401
            assert "wrong" not in bad.headers.get("Set-Cookie", "")
        blocked = await client.post("/login", data={"csrf": csrf, "token": TOKEN}, allow_redirects=False)
        assert blocked.status == 429
        assert (await client.get("/", allow_redirects=False)).status == 303


async def test_logout_needs_the_session_csrf_and_ends_the_session() -> None:
    async with client_for(full_deps()) as client:
        csrf = await login(client)
        assert (await client.post("/logout", data={"csrf": "bad"}, allow_redirects=False)).status == 403
        out = await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
        assert out.status == 303
        assert (await client.get("/api/v1/status")).status == 401


async def test_security_headers_on_every_kind_of_response() -> None:
    async with client_for(full_deps()) as client:
        for path in ("/healthz", "/login", "/static/app.js", "/api/v1/nowhere", "/api/v1/status", "/nowhere"):
            response = await client.get(path, headers=bearer(), allow_redirects=False)
            csp = response.headers.get("Content-Security-Policy", "")
            assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp, path
            assert response.headers["X-Frame-Options"] == "DENY", path
            assert response.headers["Referrer-Policy"] == "no-referrer", path
            assert response.headers["X-Content-Type-Options"] == "nosniff", path


async def test_a_non_hazardous_action_is_queued_once_with_a_fresh_key() -> None:
    deps = full_deps()
    async with client_for(deps) as client:
        response = await client.post("/api/v1/devices/kitchen_light/actions", headers=bearer(),
                                     json={"action": "set_brightness", "params": {"brightness": 40}})
        assert response.status == 200
        body = await response.json()
        assert body["status"] == "queued"
        again = await client.post("/api/v1/devices/kitchen_light/actions", headers=bearer(),
                                  json={"action": "turn_off"})
        assert again.status == 200
    (first, key1), (second, key2) = deps.services.devices.enqueued
    assert (first.action, first.params) == ("set_brightness", {"brightness": 40})
    assert second.action == "turn_off"
    assert key1 == body["key"] and key1 != key2
    assert deps.store.transactions == 2 and deps.spine.notified == 2


async def test_a_hazardous_action_opens_a_confirmation_and_sends_nothing() -> None:
    deps = full_deps()
    async with client_for(deps) as client:
        response = await client.post("/api/v1/devices/front_door/actions", headers=bearer(),
                                     json={"action": "unlock"})
        assert response.status == 202
        confirmation = await response.json()
        assert confirmation["state"] == "pending" and confirmation["hazard_class"] == "lock.unlock"
        assert confirmation["requested_by"] == "user:web"
        assert deps.services.devices.enqueued == []
        listed = await (await client.get("/api/v1/confirmations?state=pending", headers=bearer())).json()
        assert [c["id"] for c in listed["confirmations"]] == [confirmation["id"]]
        cid = confirmation["id"]
        approved = await client.post(f"/api/v1/confirmations/{cid}/approve", headers=bearer())
        assert approved.status == 200 and (await approved.json())["state"] == "executing"
        twice = await client.post(f"/api/v1/confirmations/{cid}/approve", headers=bearer(), json={})
        assert twice.status == 409 and (await twice.json())["error"] == "not_pending"
        missing = await client.post("/api/v1/confirmations/nope/cancel", headers=bearer())
        assert missing.status == 404 and (await missing.json())["error"] == "not_found"


@pytest.mark.parametrize(("body", "field"), [
    ({"params": {}}, "action"),
    ({"action": "Turn On!"}, "action"),
    ({"action": "turn_on", "params": {"brightness": {"deep": 1}}}, "params.brightness"),
    ({"action": "turn_on", "colour": "red"}, "colour"),
])
async def test_invalid_bodies_name_what_is_wrong(body: dict[str, Any], field: str) -> None:
    deps = full_deps()
    async with client_for(deps) as client:
        response = await client.post("/api/v1/devices/kitchen_light/actions", headers=bearer(), json=body)
        assert response.status == 422
        error = await response.json()
        assert error["error"] == "invalid_body"
        assert any(p["field"].startswith(field) for p in error["detail"]), error
    assert 'reason="api_invalid_body"' in deps.metrics.render().decode()


async def test_not_json_and_wrong_media_type_and_unknown_action() -> None:
    async with client_for(full_deps()) as client:
        url = "/api/v1/devices/kitchen_light/actions"
        broken = await client.post(url, data="{", headers={**bearer(), "Content-Type": "application/json"})
        assert broken.status == 400 and (await broken.json())["error"] == "invalid_json"
        form = await client.post(url, data="action=turn_on", headers={**bearer(), "Content-Type": "text/plain"})
        assert form.status == 415
        refused = await client.post(url, headers=bearer(), json={"action": "unlock"})
        assert refused.status == 409 and "cannot" in (await refused.json())["detail"]
        unknown = await client.get("/api/v1/devices/garden_gnome", headers=bearer())
        assert unknown.status == 404


async def test_query_validation_and_audit_paging_by_id() -> None:
    async with client_for(full_deps()) as client:
        bad = await client.get("/api/v1/audit?limit=0&colour=red", headers=bearer())
        assert bad.status == 422
        assert {p["field"] for p in (await bad.json())["detail"]} == {"limit", "colour"}
        page1 = await (await client.get("/api/v1/audit?limit=3", headers=bearer())).json()
        assert [e["id"] for e in page1["events"]] == [7, 6, 5] and page1["next_before_id"] == 5
        page2 = await (await client.get("/api/v1/audit?limit=3&before_id=5", headers=bearer())).json()
        assert [e["id"] for e in page2["events"]] == [4, 3, 2]
        last = await (await client.get("/api/v1/audit?limit=3&before_id=2", headers=bearer())).json()
        assert [e["id"] for e in last["events"]] == [1] and last["next_before_id"] is None


async def test_missing_services_answer_503_naming_the_service() -> None:
    async with client_for(make_deps()) as client:
        for path, name in (("/api/v1/devices", "devices"), ("/api/v1/jobs", "jobs"),
                           ("/api/v1/cache/stats", "cache"), ("/api/v1/confirmations", "confirmations")):
            response = await client.get(path, headers=bearer())
            assert response.status == 503, path
            body = await response.json()
            assert body["error"] == "service_unavailable" and name in body["detail"]


async def test_cache_invalidate_takes_exactly_one_target() -> None:
    deps = full_deps()
    deps.services.cache.entries = {"what is a heat pump": {"topic:energy"}, "who wrote dune": set()}
    async with client_for(deps) as client:
        both = await client.post("/api/v1/cache/invalidate", headers=bearer(), json={"key": "a", "tag": "b"})
        assert both.status == 422
        by_tag = await client.post("/api/v1/cache/invalidate", headers=bearer(), json={"tag": "topic:energy"})
        assert await by_tag.json() == {"scope": "tag", "removed": 1}
        every = await client.post("/api/v1/cache/invalidate", headers=bearer(), json={"all": True})
        assert await every.json() == {"scope": "all", "removed": 1}


async def test_run_now_rejects_an_unknown_job_and_queues_a_known_one() -> None:
    deps = full_deps()
    async with client_for(deps) as client:
        assert (await client.post("/api/v1/jobs/no_such_job/run", headers=bearer())).status == 404
        queued = await client.post("/api/v1/jobs/daily_health_check/run", headers=bearer())
        assert queued.status == 202
        run_id = (await queued.json())["run_id"]
        history = await (await client.get("/api/v1/jobs/history?name=daily_health_check", headers=bearer())).json()
        assert [r["id"] for r in history["runs"]] == [run_id]


async def test_live_channel_needs_a_session_and_the_same_origin_and_pushes_changes() -> None:
    deps = full_deps()
    async with client_for(deps) as client:
        unauthenticated = await client.get("/api/v1/live")
        assert unauthenticated.status == 401
        await login(client)
        origin = f"http://{client.host}:{client.port}"
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect("/api/v1/live", headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403
        async with client.ws_connect("/api/v1/live", headers={"Origin": origin}) as ws:
            assert (await ws.receive_json())["type"] == "hello"
            deps.services.devices.report("kitchen_light", state="ON")
            message = await ws.receive_json()
            assert message["type"] == "device"
            assert message["device"]["name"] == "kitchen_light" and message["device"]["state"] == {"state": "ON"}
            person = Principal(kind="user", user="test")
            confirmation = await deps.services.confirmations.request(
                DeviceAction("front_door", "unlock"), hazard_class="lock.unlock", principal=person)
            await deps.services.confirmations.cancel(confirmation.id, principal=person)
            pushed = await ws.receive_json()
            assert pushed["type"] == "confirmation" and pushed["confirmation"]["state"] == "cancelled"
            await ws.close()
            assert ws.closed and (await ws.receive()).type in (WSMsgType.CLOSED, WSMsgType.CLOSING)


def test_panel_assets_have_no_inline_script_or_style_and_nothing_remote() -> None:
    from hub.web.api.panel import STATIC

    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text.replace("http://www.w3.org", "")), path.name
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"inline script in {path.name}"
            assert " style=" not in text and "<style" not in text, f"inline style in {path.name}"
            assert not re.search(r"\son[a-z]+=", text), f"inline event handler in {path.name}"
