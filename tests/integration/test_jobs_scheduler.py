"""Schedules against the real PostgreSQL: sync, ticks as one transaction, misfire on the database clock."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest

from hub.config import JobSection
from hub.jobs.scheduler import sync_schedules, tick
from hub.store import Store
from tests.support import jobs as job_fixtures

pytestmark = pytest.mark.integration

# The shared fixtures (one database per module, emptied per test).
dsn = job_fixtures.dsn
store = job_fixtures.store


async def test_migration_creates_the_job_tables(store: Store) -> None:
    names = {r["tablename"] for r in await store.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"schedules", "job_runs", "leases", "goals", "projects", "tasks", "goal_outcomes"} <= names


async def test_sync_upserts_keeps_progress_and_keeps_disabled_rows(store: Store) -> None:
    jobs = {"a": JobSection(schedule="every 1h"), "b": JobSection(schedule="0 6 * * *", timezone="Europe/Berlin")}
    first = await sync_schedules(store, jobs)
    # Pretend a tick was processed: next_run_at moved; a re-sync with the same spec must not reset it.
    await store.write("UPDATE schedules SET next_run_at = next_run_at + interval '1 hour' WHERE name = 'a'")
    second = await sync_schedules(store, {**jobs, "b": JobSection(schedule="0 6 * * *", timezone="Europe/Berlin",
                                                                  enabled=False)})
    assert second["a"] == first["a"] + timedelta(hours=1)
    row = await store.fetchrow("SELECT enabled, kind, cron, timezone FROM schedules WHERE name = 'b'")
    assert dict(row) == {"enabled": False, "kind": "cron", "cron": "0 6 * * *", "timezone": "Europe/Berlin"}
    # A changed expression starts afresh from the new spec.
    third = await sync_schedules(store, {"a": JobSection(schedule="every 7m")})
    assert timedelta(0) < third["a"] - await store.fetchval("SELECT now()") <= timedelta(minutes=7)
    assert (await store.fetchval("SELECT count(*) FROM schedules")) == 2  # 'b' kept, though not configured


async def test_disabled_schedules_are_not_ticked(store: Store) -> None:
    await sync_schedules(store, {"off": JobSection(schedule="every 1s", enabled=False)})
    await store.write("UPDATE schedules SET next_run_at = now() - interval '10 seconds'")
    result = await tick(store)
    assert result.schedules == 0
    assert await store.fetchval("SELECT count(*) FROM job_runs") == 0


async def test_tick_inserts_the_run_and_advances_in_one_transaction(store: Store) -> None:
    await sync_schedules(store, {"j": JobSection(schedule="every 1h", max_attempts=5, timeout_s=12)})
    nominal = await store.fetchval("UPDATE schedules SET next_run_at = next_run_at - interval '1 hour' "
                                   "RETURNING next_run_at")
    result = await tick(store)
    assert (result.inserted, result.missed, result.schedules) == (1, 0, 1)
    run = await store.fetchrow("SELECT job, nominal_at, status, max_attempts, timeout_s, run_after FROM job_runs")
    assert dict(run) == {"job": "j", "nominal_at": nominal, "status": "scheduled", "max_attempts": 5,
                         "timeout_s": 12.0, "run_after": nominal}
    sched = await store.fetchrow("SELECT next_run_at, last_nominal_at FROM schedules WHERE name = 'j'")
    assert sched["next_run_at"] == nominal + timedelta(hours=1)
    assert sched["last_nominal_at"] == nominal


async def test_replaying_a_processed_tick_inserts_nothing(store: Store) -> None:
    await sync_schedules(store, {"j": JobSection(schedule="every 1h")})
    await store.write("UPDATE schedules SET next_run_at = next_run_at - interval '1 hour'")
    saved = await store.fetchval("SELECT next_run_at FROM schedules")
    assert (await tick(store)).inserted == 1
    # As if an instance crashed after inserting but before advancing: the unique (job, nominal) key holds.
    await store.write("UPDATE schedules SET next_run_at = $1", saved)
    assert (await tick(store)).inserted == 0
    assert await store.fetchval("SELECT count(*) FROM job_runs") == 1


async def test_misfire_once_on_the_database_clock_counts_missed_ticks(store: Store) -> None:
    await sync_schedules(store, {"m": JobSection(schedule="every 1m", misfire="once")})
    await store.write("UPDATE schedules SET next_run_at = next_run_at - interval '2 hours'")
    result = await tick(store)
    assert result.inserted == 1
    # 120 ticks were due (the next one is still in the future): the latest runs, 119 are counted missed.
    assert result.missed == 119
    row = await store.fetchrow("SELECT missed_count, next_run_at > now() AS future FROM schedules")
    assert row["missed_count"] == 119 and row["future"]


async def test_misfire_all_is_capped(store: Store) -> None:
    await sync_schedules(store, {"m": JobSection(schedule="every 1m", misfire="all", catch_up_cap=4)})
    await store.write("UPDATE schedules SET next_run_at = next_run_at - interval '30 minutes'")
    result = await tick(store)
    assert result.inserted == 4
    assert result.missed == 26  # 30 due, the latest 4 run
    nominal = [r["nominal_at"] for r in await store.fetch("SELECT nominal_at FROM job_runs ORDER BY nominal_at")]
    assert [b - a for a, b in itertools.pairwise(nominal)] == [timedelta(minutes=1)] * 3


async def test_misfire_skip_drops_a_late_tick(store: Store) -> None:
    await sync_schedules(store, {"s": JobSection(schedule="every 1h", misfire="skip")})
    # Three due ticks (two hours ago, one hour ago, this hour), the latest late by the time since the hour: with
    # a grace shorter than that, 'skip' runs none. (Relative to the hour, so the test holds at any minute.)
    await store.write("UPDATE schedules SET next_run_at = date_trunc('hour', now()) - interval '2 hours'")
    result = await tick(store, misfire_grace_s=0.001)
    assert (result.inserted, result.missed) == (0, 3)


async def test_concurrent_tickers_create_each_tick_exactly_once(store: Store) -> None:
    jobs = {f"c{i}": JobSection(schedule="every 1m", misfire="all", catch_up_cap=100) for i in range(8)}
    await sync_schedules(store, jobs)
    await store.write("UPDATE schedules SET next_run_at = next_run_at - interval '20 minutes'")
    results = await asyncio.gather(*(tick(store, batch=3) for _ in range(12)))
    while (await tick(store)).schedules:  # whatever the racers left locked-and-skipped
        pass
    assert sum(r.inserted for r in results) <= 8 * 20
    rows = await store.fetch("SELECT job, count(*) AS n, count(DISTINCT nominal_at) AS d FROM job_runs GROUP BY job")
    assert len(rows) == 8
    assert all(r["n"] == r["d"] == 20 for r in rows)
