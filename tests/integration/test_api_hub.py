"""/api/v1 against a real hub: PostgreSQL, Mosquitto, the bridge simulator, the confirmation service, jobs."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.support.mqtt import TestClient
from tests.support.wait import eventually
from tests.support.web_hub import get_json, web_hub

pytestmark = pytest.mark.integration


async def test_status_devices_and_a_plain_action_reach_the_bridge(db_dsn: str, state_dir: Path) -> None:
    async with web_hub(dsn=db_dsn, state_dir=state_dir) as w, aiohttp.ClientSession() as http:
        status = await get_json(http, f"{w.base_url}/api/v1/status", w.headers)
        assert status["ready"] is True and status["hub_id"] == w.hub.config.hub.id
        devices = await get_json(http, f"{w.base_url}/api/v1/devices", w.headers)
        names = {d["name"]: d for d in devices["devices"]}
        assert {"kitchen_light", "front_door"} <= set(names)
        assert names["front_door"]["hazards"] == {"unlock": "lock.unlock"}

        async with http.post(f"{w.base_url}/api/v1/devices/kitchen_light/actions", headers=w.headers,
                             json={"action": "turn_on"}) as response:
            assert response.status == 200, await response.text()
            queued = await response.json()
        commands = await eventually(lambda: w.sim.commands("kitchen_light"))
        assert len(commands) == 1 and commands[0].user_properties.get("id") == queued["key"]

        async def light_on() -> bool:
            d = await get_json(http, f"{w.base_url}/api/v1/devices/kitchen_light", w.headers)
            return d["state"].get("state") == "ON"

        await eventually(light_on)


async def test_unlock_needs_approval_and_is_sent_exactly_once(db_dsn: str, state_dir: Path) -> None:
    async with web_hub(dsn=db_dsn, state_dir=state_dir) as w, aiohttp.ClientSession() as http:
        base = w.hub.config.devices["front_door"].model_extra["base_topic"]
        async with TestClient(1883) as mqtt:
            sets = await mqtt.collect(f"{base}/front_door/set")
            async with http.post(f"{w.base_url}/api/v1/devices/front_door/actions", headers=w.headers,
                                 json={"action": "unlock"}) as response:
                assert response.status == 202, await response.text()
                confirmation = await response.json()
            cid = confirmation["id"]
            pending = await get_json(http, f"{w.base_url}/api/v1/confirmations?state=pending", w.headers)
            assert [c["id"] for c in pending["confirmations"]] == [cid]
            assert w.sim.commands("front_door") == []

            async with http.post(f"{w.base_url}/api/v1/confirmations/{cid}/approve", headers=w.headers) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["state"] in ("executing", "done")
            async with http.post(f"{w.base_url}/api/v1/confirmations/{cid}/approve", headers=w.headers) as r:
                assert r.status == 409 and (await r.json())["error"] == "not_pending"
            async with http.post(f"{w.base_url}/api/v1/confirmations/{cid}/cancel", headers=w.headers) as r:
                assert r.status == 409

            await sets.wait_for(1, timeout=20)
            messages = await sets.settle(quiet_s=1.0)
            assert [m.json() for m in messages] == [{"state": "UNLOCK"}]

            async def done() -> bool:
                c = await get_json(http, f"{w.base_url}/api/v1/confirmations/{cid}", w.headers)
                return c["state"] == "done"

            await eventually(done)
        audit = await get_json(http, f"{w.base_url}/api/v1/audit?correlation_id={cid}&limit=50", w.headers)
        kinds = [e["kind"] for e in audit["events"]]
        assert "confirmation.requested" in kinds and "confirmation.executing" in kinds


async def test_audit_pages_by_id_without_gaps_or_repeats(db_dsn: str, state_dir: Path) -> None:
    async with web_hub(dsn=db_dsn, state_dir=state_dir, jobs={}) as w, aiohttp.ClientSession() as http:
        for i in range(7):
            await w.hub.store.record_event("test.paging", subject=f"s{i}")
        url = f"{w.base_url}/api/v1/audit?kind=test.paging&limit=3"
        seen: list[int] = []
        page = await get_json(http, url, w.headers)
        while True:
            seen += [e["id"] for e in page["events"]]
            if page["next_before_id"] is None:
                break
            page = await get_json(http, f"{url}&before_id={page['next_before_id']}", w.headers)
        assert len(seen) == 7 and seen == sorted(seen, reverse=True) and len(set(seen)) == 7


async def test_goals_and_jobs(db_dsn: str, state_dir: Path) -> None:
    async with web_hub(dsn=db_dsn, state_dir=state_dir) as w, aiohttp.ClientSession() as http:
        async with http.post(f"{w.base_url}/api/v1/goals", headers=w.headers,
                             json={"title": "Use less heating", "template": "energy", "target": 0.5}) as r:
            assert r.status == 201, await r.text()
            goal = await r.json()
        async with http.post(f"{w.base_url}/api/v1/goals", headers=w.headers,
                             json={"title": "x", "template": "no_such_template"}) as r:
            assert r.status == 422 and "unknown template" in (await r.json())["detail"]
        goals = await get_json(http, f"{w.base_url}/api/v1/goals", w.headers)
        assert [g["id"] for g in goals["goals"]] == [goal["id"]]

        if w.hub.services.jobs is None:
            pytest.skip("the job service is not wired into the hub in this build")
        jobs = await get_json(http, f"{w.base_url}/api/v1/jobs", w.headers)
        assert [j["name"] for j in jobs["jobs"]] == ["daily_health_check"]
        async with http.post(f"{w.base_url}/api/v1/jobs/daily_health_check/run", headers=w.headers) as r:
            assert r.status == 202
            run_id = (await r.json())["run_id"]

        async def finished() -> str | None:
            runs = await get_json(http, f"{w.base_url}/api/v1/jobs/history?name=daily_health_check", w.headers)
            run = next((x for x in runs["runs"] if x["id"] == run_id), None)
            return run["status"] if run and run["status"] not in ("scheduled", "running") else None

        assert await eventually(finished, timeout=40) == "succeeded"
