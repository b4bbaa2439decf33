"""Task-cycle benchmark: the real task executor (PostgreSQL, fencing, row locks) at concurrency 20 against
sequential execution of the same tasks in the same run, plus the scheduler's due → start lag.

``python -m bench tasks`` (the lead's ``bench/__main__.py`` calls ``run(quick)``). Needs the PostgreSQL at
``$KITT_BENCH_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``); a throwaway database is created
and dropped.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from hub.config import JobSection
from hub.jobs import JobService
from hub.jobs.context import JobDeps, RoutineContext
from hub.jobs.leases import acquire
from hub.jobs.tasks import TaskExecutor, default_actions
from hub.metrics import Metrics
from hub.store import Store

TASKS = 100
TASK_IO_S = 0.1
CONCURRENCY = 20
TARGET_S = 0.7


async def _noop_publish(topic: str, payload: dict[str, Any]) -> None:
    return None


async def _seed(store: Store, n: int) -> None:
    await store.write("TRUNCATE goals, projects, tasks CASCADE")
    goal = await store.fetchval("INSERT INTO goals (title) VALUES ('bench') RETURNING id")
    project = await store.fetchval(
        "INSERT INTO projects (goal_id, title, template) VALUES ($1, 'bench', 'default') RETURNING id", goal)
    await store.write(
        "INSERT INTO tasks (project_id, goal_id, position, title, action, params) "
        "SELECT $1, $2, i, 'io ' || i, 'wait', jsonb_build_object('seconds', $3::float8) FROM generate_series(1, $4) i",
        project, goal, TASK_IO_S, n,
    )


async def _cycle(store: Store, deps: JobDeps, n: int, concurrency: int) -> float:
    """Seed ``n`` tasks and run one cycle of the executor; returns its wall time in seconds."""
    await _seed(store, n)
    async with store.transaction() as conn:
        await conn.execute("UPDATE leases SET expires_at = now() WHERE name = 'job:bench'")
        lease = await acquire(conn, "job:bench", deps.instance_id, 60)
    assert lease is not None
    ctx = RoutineContext(deps=deps, job="bench", run_id=0, attempt=1, lease=lease, concurrency=concurrency)
    report = await TaskExecutor(ctx, default_actions(), concurrency=concurrency).run()
    if report.done != n:
        raise RuntimeError(f"benchmark cycle finished {report.done}/{n} tasks: {report.errors}")
    return report.elapsed_s


async def _lag(store: Store, seconds: float) -> list[float]:
    """Due → start lag (seconds) of runs of five `every 1s` jobs on one instance."""
    async def routine(ctx: RoutineContext) -> None:
        return None

    jobs = {f"lag{i}": JobSection(schedule="every 1s") for i in range(5)}
    svc = JobService(store=store, metrics=Metrics(), jobs=jobs, instance_id="bench", publish=_noop_publish,
                     health_probe=dict, routines=dict.fromkeys(jobs, routine), poll_interval_s=0.5)
    await svc.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await svc.stop()
    rows = await store.fetch(
        "SELECT EXTRACT(EPOCH FROM started_at - run_after)::float8 AS lag FROM job_runs "
        "WHERE job LIKE 'lag%' AND attempts = 1 AND started_at IS NOT NULL")
    return sorted(r["lag"] for r in rows)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def _run(quick: bool) -> dict[str, Any]:
    from tests.support.db import temporary_database  # a throwaway database on the configured PostgreSQL

    async with temporary_database(prefix="kitt_bench") as dsn:
        store = Store(dsn=dsn, metrics=Metrics(), pool_min=4, pool_max=32)
        await store.start()
        try:
            deps = JobDeps(store=store, metrics=Metrics(), publish=_noop_publish, health_probe=dict,
                           instance_id="bench")
            await _cycle(store, deps, CONCURRENCY, CONCURRENCY)  # warm the pool and the plans
            runs = [await _cycle(store, deps, TASKS, CONCURRENCY) for _ in range(1 if quick else 3)]
            seq_n = 10 if quick else TASKS
            seq_measured = await _cycle(store, deps, seq_n, 1)
            sequential = seq_measured * TASKS / seq_n
            lags = await _lag(store, 3.0 if quick else 10.0)
        finally:
            await store.stop()
    concurrent = statistics.median(runs)
    return {
        "figures": {
            "tasks": TASKS, "task_io_s": TASK_IO_S, "concurrency": CONCURRENCY,
            "concurrent_cycle_s": round(concurrent, 4), "concurrent_cycle_runs_s": [round(r, 4) for r in runs],
            "due_to_start_lag_p50_ms": round(_pct(lags, 50) * 1000, 2),
            "due_to_start_lag_p99_ms": round(_pct(lags, 99) * 1000, 2),
            "lag_samples": len(lags),
        },
        "baseline": {
            "sequential_cycle_s": round(sequential, 4),
            "sequential_tasks_measured": seq_n,
            "sequential_extrapolated": seq_n != TASKS,
        },
        "ratio": {"speedup": round(sequential / concurrent, 2)},
        "target": {"concurrent_cycle_s_max": TARGET_S, "met": concurrent <= TARGET_S},
    }


def run(quick: bool) -> dict[str, Any]:
    result = asyncio.run(_run(quick))
    f, b = result["figures"], result["baseline"]
    seq_note = f" (measured on {b['sequential_tasks_measured']} tasks, extrapolated)" if b["sequential_extrapolated"] \
        else ""
    print(f"tasks: {f['tasks']} x {f['task_io_s'] * 1000:.0f} ms I/O")
    print(f"  {'concurrent (20), real executor + DB':<40} {f['concurrent_cycle_s']:>8.3f} s   "
          f"target <= {TARGET_S} s: {'met' if result['target']['met'] else 'MISSED'}")
    print(f"  {'sequential baseline':<40} {b['sequential_cycle_s']:>8.3f} s{seq_note}")
    print(f"  {'speedup':<40} {result['ratio']['speedup']:>8.1f} x")
    print(f"  {'due -> start lag P50 / P99':<40} {f['due_to_start_lag_p50_ms']:>8.1f} / "
          f"{f['due_to_start_lag_p99_ms']:.1f} ms ({f['lag_samples']} runs)")
    return result


if __name__ == "__main__":
    run(quick=True)
