"""Runs against the real PostgreSQL: leases and fencing, claim/execute/retry/dead, timeout, reaper, JobService."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hub.config import JobSection
from hub.errors import StaleLeaseError
from hub.jobs import JobError, JobService
from hub.jobs.context import JobDeps, RoutineContext
from hub.jobs.leases import acquire, fenced_transaction, job_lease_name
from hub.jobs.runner import RunnerSettings, claim, execute, reap
from hub.jobs.scheduler import sync_schedules
from hub.metrics import Metrics
from hub.store import Store
from tests.support import jobs as job_fixtures
from tests.support.jobs import Published

pytestmark = pytest.mark.integration

# The shared fixtures (one database per module, emptied per test).
dsn = job_fixtures.dsn
store = job_fixtures.store


def deps(store: Store, instance: str = "i1", metrics: Metrics | None = None) -> JobDeps:
    return JobDeps(store=store, metrics=metrics or Metrics(), publish=Published(), health_probe=dict,
                   instance_id=instance)


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Poll until ``check`` returns something truthy (a wait, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def queue_run(store: Store, job: str, **section: Any) -> int:
    await sync_schedules(store, {job: JobSection(schedule="every 1d", **section)})
    return await store.fetchval(
        "INSERT INTO job_runs (job, trigger, max_attempts, timeout_s) SELECT name, 'manual', max_attempts, "
        "timeout_s FROM schedules WHERE name = $1 RETURNING id", job)


# --- leases and fencing -------------------------------------------------------------------------------------


async def test_lease_token_rises_on_takeover_and_fences_the_old_holder(store: Store) -> None:
    async with store.transaction() as conn:
        a = await acquire(conn, "planner", "A", 30)
    async with store.transaction() as conn:
        assert await acquire(conn, "planner", "B", 30) is None  # held and live
    async with fenced_transaction(store, a) as conn:  # A may write
        await conn.execute("SELECT 1")
    await store.write("UPDATE leases SET expires_at = now() - interval '1 second'")  # A stalls past its TTL
    async with store.transaction() as conn:
        b = await acquire(conn, "planner", "B", 30)
    assert b is not None and b.token == a.token + 1
    with pytest.raises(StaleLeaseError):
        async with fenced_transaction(store, a) as conn:
            await conn.execute("INSERT INTO goals (title) VALUES ('written by a stale holder')")
    assert await store.fetchval("SELECT count(*) FROM goals") == 0  # rolled back
    assert a.lost


async def test_a_takeover_waits_for_a_fenced_transaction_in_flight(store: Store) -> None:
    async with store.transaction() as conn:
        a = await acquire(conn, "planner", "A", 0.2)
    order: list[str] = []
    async with fenced_transaction(store, a) as conn:
        # The lease expires while A's fenced write is in progress; B's takeover must wait for A's commit.
        await asyncio.sleep(0.4)

        async def takeover() -> None:
            async with store.transaction() as c2:
                await acquire(c2, "planner", "B", 30)
            order.append("B took over")

        b_task = asyncio.create_task(takeover())
        await asyncio.sleep(0.3)
        await conn.execute("INSERT INTO goals (title) VALUES ('A committed')")
        order.append("A committed")
    await b_task
    assert order == ["A committed", "B took over"]


# --- claim / execute ----------------------------------------------------------------------------------------


async def test_a_run_succeeds_with_its_token_and_metrics(store: Store) -> None:
    run_id = await queue_run(store, "ok")
    d = deps(store)
    seen: dict[str, Any] = {}

    async def routine(ctx: RoutineContext) -> dict[str, Any]:
        seen.update(token=ctx.token, attempt=ctx.attempt, run_id=ctx.run_id)
        async with ctx.fenced() as conn:
            await conn.execute("INSERT INTO goals (title) VALUES ('fenced write')")
        return {"answer": 42}

    run = await claim(d, ["ok"], RunnerSettings())
    assert run is not None and run.id == run_id
    assert await claim(d, ["ok"], RunnerSettings()) is None  # one running run per job
    assert await execute(d, run, routine, RunnerSettings()) == "succeeded"
    row = await store.fetchrow("SELECT status, attempts, result, lease_token, duration_ms FROM job_runs")
    assert row["status"] == "succeeded" and row["attempts"] == 1 and row["result"] == {"answer": 42}
    assert row["lease_token"] == seen["token"] and row["duration_ms"] >= 0
    assert d.metrics.job_runs.labels(job="ok", status="succeeded")._value.get() == 1
    assert d.metrics.job_last_success.labels(job="ok")._value.get() > 1.7e9
    # The lease was released: the next run need not wait for its expiry.
    assert await store.fetchval("SELECT expires_at <= now() FROM leases WHERE name = 'job:ok'")


async def test_failures_retry_with_backoff_then_go_dead(store: Store) -> None:
    await queue_run(store, "flaky", max_attempts=3)
    d = deps(store)
    settings = RunnerSettings(retry_base_s=0.01, retry_cap_s=0.05)

    async def routine(ctx: RoutineContext) -> None:
        raise RuntimeError(f"boom {ctx.attempt}")

    outcomes = []
    for _ in range(3):
        run = await wait_until(lambda: claim(d, ["flaky"], settings))
        outcomes.append(await execute(d, run, routine, settings))
    assert outcomes == ["failed", "failed", "dead"]
    row = await store.fetchrow("SELECT status, attempts, errors, last_error FROM job_runs")
    assert row["status"] == "dead" and row["attempts"] == 3
    assert [e["error"] for e in row["errors"]] == ["RuntimeError: boom 1", "RuntimeError: boom 2",
                                                   "RuntimeError: boom 3"]
    assert await claim(d, ["flaky"], settings) is None  # dead letters are not claimed
    kinds = [r["kind"] for r in await store.fetch("SELECT kind FROM events ORDER BY id")]
    assert kinds == ["job.run.failed", "job.run.failed", "job.run.dead"]


async def test_a_failed_run_waits_for_its_backoff(store: Store) -> None:
    await queue_run(store, "slowretry", max_attempts=3)
    d = deps(store)
    settings = RunnerSettings(retry_base_s=600, retry_cap_s=600)

    async def routine(ctx: RoutineContext) -> None:
        raise RuntimeError("nope")

    run = await claim(d, ["slowretry"], settings)
    assert await execute(d, run, routine, settings) == "failed"
    assert await claim(d, ["slowretry"], settings) is None
    delay = await store.fetchval("SELECT EXTRACT(EPOCH FROM run_after - finished_at) FROM job_runs")
    assert 300 <= delay <= 600


async def test_a_run_over_its_timeout_is_timed_out(store: Store) -> None:
    await queue_run(store, "hang", timeout_s=0.2, max_attempts=2)
    d = deps(store)

    async def routine(ctx: RoutineContext) -> None:
        await asyncio.sleep(3600)

    run = await claim(d, ["hang"], RunnerSettings())
    assert await execute(d, run, routine, RunnerSettings(retry_base_s=0.01)) == "timed_out"
    row = await store.fetchrow("SELECT status, last_error, errors FROM job_runs")
    assert row["status"] == "timed_out" and "timed out after 0.2 s" in row["last_error"]
    assert row["errors"][0]["kind"] == "timed_out"


async def test_the_reaper_recovers_a_run_whose_holder_died(store: Store) -> None:
    run_id = await queue_run(store, "crashy", max_attempts=3)
    dead_instance = deps(store, "dead-one")
    settings = RunnerSettings(lease_ttl_s=0.3, retry_base_s=0.01, retry_cap_s=0.02)
    stale = await claim(dead_instance, ["crashy"], settings)
    assert stale is not None  # ... and the instance dies here: no heartbeat, no outcome
    survivor = deps(store, "survivor")
    reaped = await wait_until(lambda: reap(survivor, settings))
    assert [(r["id"], r["status"], r["lease_owner"]) for r in reaped] == [(run_id, "failed", "dead-one")]
    run = await wait_until(lambda: claim(survivor, ["crashy"], settings))
    assert run.attempt == 2 and run.lease.token == stale.lease.token + 1

    async def routine(ctx: RoutineContext) -> None:
        return None

    assert await execute(survivor, run, routine, settings) == "succeeded"
    row = await store.fetchrow("SELECT status, attempts, errors FROM job_runs WHERE id = $1", run_id)
    assert row["status"] == "succeeded" and row["attempts"] == 2
    assert [e["kind"] for e in row["errors"]] == ["lease_expired"]
    # The zombie's late completion is refused: its token is history.
    assert await execute(dead_instance, stale, routine, settings) == "fenced"
    refused = await store.fetchrow("SELECT actor, body FROM events WHERE kind = 'job.write_refused'")
    assert refused["actor"] == "dead-one" and refused["body"]["token"] == stale.lease.token
    assert await store.fetchval("SELECT status FROM job_runs WHERE id = $1", run_id) == "succeeded"


# --- JobService ----------------------------------------------------------------------------------------------


async def test_job_service_ticks_runs_and_reports(store: Store) -> None:
    calls: list[int] = []

    async def counting(ctx: RoutineContext) -> dict[str, Any]:
        calls.append(ctx.run_id)
        return {"n": len(calls)}

    metrics = Metrics()
    service = JobService(
        store=store, metrics=metrics, jobs={"fast": JobSection(schedule="every 1s"),
                                            "manual": JobSection(schedule="0 0 1 1 *")},
        instance_id="svc", publish=Published(), health_probe=dict,
        routines={"fast": counting, "manual": counting}, poll_interval_s=0.1, lease_ttl_s=3, reap_interval_s=0.5,
    )
    await service.start()
    try:
        await wait_until(lambda: store.fetchval(
            "SELECT count(*) >= 3 FROM job_runs WHERE job = 'fast' AND status = 'succeeded'"))
        run_id = await service.run_now("manual")
        await wait_until(lambda: store.fetchval(
            "SELECT status = 'succeeded' FROM job_runs WHERE id = $1", run_id))
        with pytest.raises(JobError):
            await service.run_now("no-such-job")
        jobs = {j["name"]: j for j in await service.list_jobs()}
        assert jobs["manual"]["last_run_id"] == run_id and jobs["manual"]["last_status"] == "succeeded"
        hist = await service.history("fast", limit=2)
        assert len(hist) == 2 and all(h["job"] == "fast" for h in hist)
        health = await service.health()
        assert health["ok"] and health["overdue"] == []
        assert set(health["loops"].values()) == {"running"}
    finally:
        await service.stop()
    fast_runs = await store.fetch("SELECT nominal_at FROM job_runs WHERE job = 'fast' ORDER BY nominal_at")
    assert len({r["nominal_at"] for r in fast_runs}) == len(fast_runs)
    assert metrics.job_runs.labels(job="manual", status="succeeded")._value.get() == 1


async def test_health_reports_a_job_without_success_for_two_periods(store: Store) -> None:
    service = JobService(store=store, metrics=Metrics(), jobs={"stuck": JobSection(schedule="every 1m")},
                         instance_id="svc", publish=Published(), health_probe=dict)
    await sync_schedules(store, {"stuck": JobSection(schedule="every 1m")})
    assert (await service.health())["ok"]
    await store.write("UPDATE schedules SET created_at = now() - interval '3 minutes'")
    health = await service.health()
    assert not health["ok"]
    assert [j["job"] for j in health["overdue"]] == ["stuck"]
    await store.write("INSERT INTO job_runs (job, status, finished_at) VALUES ('stuck', 'succeeded', now())")
    assert (await service.health())["ok"]


async def test_stop_hands_back_a_run_in_flight_without_using_an_attempt(store: Store) -> None:
    started = asyncio.Event()

    async def long(ctx: RoutineContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    service = JobService(store=store, metrics=Metrics(), jobs={"long": JobSection(schedule="0 0 1 1 *")},
                         instance_id="svc", publish=Published(), health_probe=dict, routines={"long": long},
                         poll_interval_s=0.1, shutdown_grace_s=0.1)
    await service.start()
    run_id = await service.run_now("long")
    await asyncio.wait_for(started.wait(), 30)
    await service.stop()
    row = await store.fetchrow("SELECT status, attempts, errors FROM job_runs WHERE id = $1", run_id)
    assert row["status"] == "scheduled" and row["attempts"] == 0
    assert row["errors"][-1]["kind"] == "interrupted"
    assert await store.fetchval("SELECT expires_at <= now() FROM leases WHERE name = $1", job_lease_name("long"))
