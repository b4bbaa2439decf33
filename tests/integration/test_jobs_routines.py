"""The five routines and the task executor against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hub.errors import StaleLeaseError
from hub.jobs import GoalError, add_goal, list_goals
from hub.jobs.context import JobDeps, RoutineContext, TaskInfo
from hub.jobs.leases import acquire
from hub.jobs.routines import (
    daily_health_check,
    outcome_measurement_cycle,
    project_generation_cycle,
    task_execution_cycle,
    weekly_research_cycle,
)
from hub.metrics import Metrics
from hub.store import Store
from tests.support import jobs as job_fixtures
from tests.support.jobs import Published

pytestmark = pytest.mark.integration

# The shared fixtures (one database per module, emptied per test).
dsn = job_fixtures.dsn
store = job_fixtures.store


async def make_ctx(store: Store, job: str, *, concurrency: int = 4, **dep_args: Any) -> RoutineContext:
    async with store.transaction() as conn:
        lease = await acquire(conn, f"job:{job}", "test", 60)
    assert lease is not None
    dep_args.setdefault("publish", Published())
    dep_args.setdefault("health_probe", dict)
    deps = JobDeps(store=store, metrics=Metrics(), hub_id="house", instance_id="test", task_retry_base_s=0.01,
                   **dep_args)
    return RoutineContext(deps=deps, job=job, run_id=1, attempt=1, lease=lease, concurrency=concurrency)


async def add_tasks(store: Store, specs: list[dict[str, Any]]) -> list[int]:
    goal = await add_goal(store, "test goal")
    project = await store.fetchval("INSERT INTO projects (goal_id, title, template) VALUES ($1, 'p', 'default') "
                                   "RETURNING id", goal["id"])
    ids = []
    for s in specs:
        ids.append(await store.fetchval(
            "INSERT INTO tasks (project_id, goal_id, title, action, params, hazardous, max_attempts, timeout_s) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) RETURNING id",
            project, goal["id"], s.get("title", "t"), s.get("action", "wait"), s.get("params", {}),
            s.get("hazardous", False), s.get("max_attempts", 3), s.get("timeout_s", 5.0)))
    return ids


# --- goals ---------------------------------------------------------------------------------------------------


async def test_add_and_list_goals(store: Store) -> None:
    goal = await add_goal(store, "  Use less energy  ", template="energy", target=0.5)
    assert goal["title"] == "Use less energy" and goal["status"] == "active"
    with pytest.raises(GoalError):
        await add_goal(store, "x", template="nope")
    with pytest.raises(GoalError):
        await add_goal(store, "")
    listed = await list_goals(store)
    assert [(g["id"], g["projects"], g["tasks_total"]) for g in listed] == [(goal["id"], 0, 0)]
    assert await store.fetchval("SELECT count(*) FROM events WHERE kind = 'goal.added'") == 1


# --- project generation → task execution → outcome measurement ----------------------------------------------


async def test_the_goal_to_outcome_loop(store: Store) -> None:
    goal = await add_goal(store, "Quiet nights", template="energy", target=1.0)
    gen = await make_ctx(store, "project_generation_cycle")
    result = await project_generation_cycle(gen)
    assert result["projects_created"] == 1
    assert (await project_generation_cycle(gen))["projects_created"] == 0  # one active project per goal
    tasks = await store.fetch("SELECT title, action, status, fence_token FROM tasks ORDER BY position")
    assert [t["action"] for t in tasks] == ["notify", "notify", "record"]
    assert tasks[0]["title"] == "Check which lights stay on after midnight"

    publish = Published()
    run = await make_ctx(store, "task_execution_cycle", publish=publish)
    report = await task_execution_cycle(run)
    assert (report["claimed"], report["done"], report["failed"]) == (3, 3, 0)
    assert {t["status"] for t in await store.fetch("SELECT status FROM tasks")} == {"done"}
    assert [m[0].rsplit("/", 2)[0] for m in publish.messages] == ["kitt/house/jobs/task_execution_cycle"] * 2

    measure = await make_ctx(store, "outcome_measurement_cycle")
    out = await outcome_measurement_cycle(measure)
    assert out["measured"] == 1 and out["outcomes"][0]["met_target"] is True
    g = await store.fetchrow("SELECT status, progress FROM goals WHERE id = $1", goal["id"])
    assert (g["status"], g["progress"]) == ("achieved", 1.0)
    assert await store.fetchval("SELECT status FROM projects") == "succeeded"
    assert (await outcome_measurement_cycle(measure))["measured"] == 0


async def test_project_generation_uses_the_frontier_when_given(store: Store) -> None:
    await add_goal(store, "Fewer open windows in winter")
    prompts: list[str] = []

    async def frontier(prompt: str) -> str:
        prompts.append(prompt)
        return "1. Check the bedroom window at 22:00\n2. Remind about airing for 5 minutes\n"

    ctx = await make_ctx(store, "project_generation_cycle", frontier=frontier)
    await project_generation_cycle(ctx)
    assert "Fewer open windows in winter" in prompts[0]
    assert await store.fetchval("SELECT source FROM projects") == "frontier"
    titles = [r["title"] for r in await store.fetch("SELECT title FROM tasks ORDER BY position")]
    assert titles == ["Check the bedroom window at 22:00", "Remind about airing for 5 minutes"]


async def test_outcome_below_target_keeps_the_goal_active(store: Store) -> None:
    await add_tasks(store, [{"params": {"seconds": 0}}, {"action": "missing"}])
    await task_execution_cycle(await make_ctx(store, "task_execution_cycle"))
    out = await outcome_measurement_cycle(await make_ctx(store, "outcome_measurement_cycle"))
    assert out["outcomes"][0]["success"] == 0.5 and out["outcomes"][0]["met_target"] is False
    assert await store.fetchval("SELECT status FROM goals") == "active"
    assert await store.fetchval("SELECT status FROM projects") == "failed"


# --- the task executor ---------------------------------------------------------------------------------------


async def test_tasks_run_concurrently_but_within_the_bound(store: Store) -> None:
    await add_tasks(store, [{"action": "probe"} for _ in range(12)])
    running = peak = 0

    async def probe(task: TaskInfo, ctx: RoutineContext) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return {"ok": True}

    ctx = await make_ctx(store, "task_execution_cycle", concurrency=3, task_actions={"probe": probe})
    report = await task_execution_cycle(ctx)
    assert report["done"] == 12
    assert peak == 3


async def test_task_retries_timeouts_and_permanent_failures(store: Store) -> None:
    flaky_id, hang_id, unknown_id = await add_tasks(store, [
        {"action": "flaky", "max_attempts": 3},
        {"action": "wait", "params": {"seconds": 60}, "timeout_s": 0.1, "max_attempts": 2},
        {"action": "no-such-action", "max_attempts": 3},
    ])
    tries: list[int] = []

    async def flaky(task: TaskInfo, ctx: RoutineContext) -> dict[str, Any]:
        tries.append(task.id)
        if len(tries) < 3:
            raise ConnectionError("device busy")
        return {"after": len(tries)}

    ctx = await make_ctx(store, "task_execution_cycle", task_actions={"flaky": flaky})
    report = await task_execution_cycle(ctx)
    assert (report["done"], report["failed"]) == (1, 2)
    rows = {r["id"]: r for r in await store.fetch("SELECT id, status, attempts, errors, result FROM tasks")}
    assert rows[flaky_id]["status"] == "done" and rows[flaky_id]["attempts"] == 3
    assert rows[flaky_id]["result"] == {"after": 3}
    assert [e["error"] for e in rows[flaky_id]["errors"]] == ["ConnectionError: device busy"] * 2
    assert rows[hang_id]["status"] == "failed" and rows[hang_id]["attempts"] == 2
    assert rows[hang_id]["errors"][-1]["error"] == "timed out after 0.1 s"
    assert rows[unknown_id]["status"] == "failed" and rows[unknown_id]["attempts"] == 1  # not retried


async def test_a_hazardous_task_never_runs_it_opens_a_confirmation(store: Store) -> None:
    (task_id,) = await add_tasks(store, [{"action": "device_command", "hazardous": True,
                                          "params": {"device": "oven", "capability": "appliance.on"}}])
    executed: list[int] = []
    gated: list[TaskInfo] = []

    async def device_command(task: TaskInfo, ctx: RoutineContext) -> None:
        executed.append(task.id)

    async def gate(task: TaskInfo) -> str:
        gated.append(task)
        return "conf-123"

    ctx = await make_ctx(store, "task_execution_cycle", hazard_gate=gate,
                         task_actions={"device_command": device_command})
    report = await task_execution_cycle(ctx)
    assert report["awaiting_confirmation"] == 1 and report["claimed"] == 0
    assert executed == []
    assert [(t.id, t.params["device"]) for t in gated] == [(task_id, "oven")]
    row = await store.fetchrow("SELECT status, confirmation_id FROM tasks")
    assert (row["status"], row["confirmation_id"]) == ("awaiting_confirmation", "conf-123")
    event = await store.fetchrow("SELECT correlation_id, body FROM events WHERE kind = 'task.awaiting_confirmation'")
    assert event["correlation_id"] == "conf-123" and event["body"]["task_id"] == task_id
    await task_execution_cycle(ctx)  # a second cycle neither runs it nor asks again
    assert executed == [] and len(gated) == 1


async def test_tasks_orphaned_by_an_older_term_are_claimed_again(store: Store) -> None:
    (task_id,) = await add_tasks(store, [{"params": {"seconds": 0}}])
    old = await make_ctx(store, "task_execution_cycle")
    await store.write("UPDATE tasks SET status = 'running', fence_token = $1, attempts = 1", old.token)
    await store.write("UPDATE leases SET expires_at = now()")  # the old cycle's term ends (crash)
    new = await make_ctx(store, "task_execution_cycle")
    assert new.token == old.token + 1
    report = await task_execution_cycle(new)
    assert report["done"] == 1
    row = await store.fetchrow("SELECT status, attempts, fence_token FROM tasks WHERE id = $1", task_id)
    assert (row["status"], row["attempts"], row["fence_token"]) == ("done", 2, new.token)
    with pytest.raises(StaleLeaseError):  # and the old term can no longer claim anything
        await task_execution_cycle(old)


# --- reports -------------------------------------------------------------------------------------------------


async def test_daily_health_check_reports_subsystems_devices_and_publishes(store: Store) -> None:
    publish = Published()

    async def probe() -> dict[str, Any]:
        return {"store": True, "mqtt": "ok", "device:front_door": True, "device:oven": "no heartbeat for 2 h"}

    ctx = await make_ctx(store, "daily_health_check", publish=publish, health_probe=probe)
    result = await daily_health_check(ctx)
    assert result["ok"] is False and result["unavailable"] == 1
    topic, payload = publish.messages[0]
    assert topic == "kitt/house/jobs/daily_health_check/report"
    assert payload["devices"] == {"total": 2, "available": 1, "unavailable": {"oven": "no heartbeat for 2 h"}}
    assert payload["subsystems"]["store"]["ok"] is True
    body = await store.fetchval("SELECT body FROM events WHERE kind = 'job.health_report'")
    assert body["devices"]["unavailable"] == {"oven": "no heartbeat for 2 h"}


async def test_weekly_research_cycle_counts_usage_and_asks_the_frontier(store: Store) -> None:
    for intent, n in (("lights.on", 3), ("weather", 1)):
        for _ in range(n):
            await store.record_event("intent.recognized", body={"intent": intent, "latency_ms": 120})
    await store.record_event("request.failed", body={"latency_ms": 900})
    await store.write("INSERT INTO events (actor, kind, body, at) VALUES ('hub', 'intent.recognized', "
                      "'{\"intent\": \"ancient\"}', now() - interval '30 days')")
    asked: list[str] = []

    async def frontier(prompt: str) -> str:
        asked.append(prompt)
        return "Lights are the most used feature."

    publish = Published()
    ctx = await make_ctx(store, "weekly_research_cycle", frontier=frontier, publish=publish)
    result = await weekly_research_cycle(ctx)
    assert result["summarised"] is True
    report = publish.messages[0][1]
    assert report["top_intents"] == [{"intent": "lights.on", "count": 3}, {"intent": "weather", "count": 1}]
    assert report["failures"] == [{"kind": "request.failed", "count": 1}]
    assert report["latency_ms"]["samples"] == 5 and report["latency_ms"]["max_ms"] == 900
    assert report["summary"] == "Lights are the most used feature."
    assert "lights.on" in asked[0]


async def test_a_stale_routine_cannot_write_its_report(store: Store) -> None:
    ctx = await make_ctx(store, "daily_health_check")
    await store.write("UPDATE leases SET token = token + 1")  # another instance took over meanwhile
    with pytest.raises(StaleLeaseError):
        await daily_health_check(ctx)
    assert await store.fetchval("SELECT count(*) FROM events WHERE kind = 'job.health_report'") == 0


async def test_a_job_late_by_twice_its_period_shows_in_readiness(db_dsn: str, tmp_path) -> None:
    """The kernel reports overdue routines on /readyz (not a gate) once they miss twice their period."""
    from hub.app import Hub, wait_ready
    from tests.support.config import make_config

    config = make_config(dsn=db_dsn, state_dir=tmp_path, plugins=(),
                         jobs={"tick": {"schedule": "every 1s", "enabled": True}})
    async with Hub(config) as hub:
        assert await wait_ready(hub, timeout=30)
        # Pretend the job was created long ago and never succeeded.
        await hub.store.write("UPDATE schedules SET created_at = now() - interval '1 hour'")
        await hub.store.write("UPDATE job_runs SET status = 'dead' WHERE status = 'succeeded'")
        ready, checks = await hub.readiness.evaluate()
        jobs = next(c for c in checks if c.name == "jobs")
        assert ready  # the hub stays ready
        assert not jobs.ok and "tick" in jobs.reason and not jobs.required
