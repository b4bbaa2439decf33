"""Durable schedules: upsert from config, and the tick that turns due schedules into runs.

Any instance may tick. One transaction locks the due schedule rows (``FOR UPDATE SKIP LOCKED``, so instances
share the work without waiting on each other), inserts the chosen runs (``ON CONFLICT (job, nominal_at) DO
NOTHING``: a tick processed twice inserts nothing) and advances ``next_run_at``. Either all of that commits or
none of it does, so a crash between "insert the run" and "advance the tick" cannot happen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from hub.config import JobSection
from hub.jobs.schedule import Schedule, ScheduleError, parse_schedule, plan_ticks
from hub.store import Store

log = structlog.get_logger("kitt.jobs.scheduler")

# $1 name, $2 expr, $3 kind, $4 interval_ms, $5 cron, $6 timezone, $7 enabled, $8 misfire, $9 catch_up_cap,
# $10 timeout_s, $11 max_attempts, $12 concurrency, $13 next_run_at (used only for a new row or a changed spec)
_UPSERT_SQL = """
INSERT INTO schedules AS s (name, expr, kind, interval_ms, cron, timezone, enabled, misfire, catch_up_cap,
                            timeout_s, max_attempts, concurrency, next_run_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (name) DO UPDATE SET
    -- A new expression or zone starts afresh; so does re-enabling (a disabled job owes no catch-up).
    next_run_at  = CASE WHEN (s.expr, s.timezone) IS DISTINCT FROM (EXCLUDED.expr, EXCLUDED.timezone)
                          OR (NOT s.enabled AND EXCLUDED.enabled)
                        THEN EXCLUDED.next_run_at ELSE s.next_run_at END,
    expr = EXCLUDED.expr, kind = EXCLUDED.kind, interval_ms = EXCLUDED.interval_ms, cron = EXCLUDED.cron,
    timezone = EXCLUDED.timezone, enabled = EXCLUDED.enabled, misfire = EXCLUDED.misfire,
    catch_up_cap = EXCLUDED.catch_up_cap, timeout_s = EXCLUDED.timeout_s, max_attempts = EXCLUDED.max_attempts,
    concurrency = EXCLUDED.concurrency, updated_at = now()
RETURNING name, next_run_at"""

# $1 batch size. Due schedules, locked for this transaction; other instances skip them.
_DUE_SQL = """
SELECT name, expr, timezone, misfire, catch_up_cap, timeout_s, max_attempts, next_run_at, now() AS db_now
  FROM schedules
 WHERE enabled AND next_run_at <= now()
 ORDER BY next_run_at
 LIMIT $1
   FOR UPDATE SKIP LOCKED"""

# $1 job, $2 nominal times[], $3 max_attempts, $4 timeout_s. run_after = the tick itself (lag is measured from it).
_INSERT_RUNS_SQL = """
INSERT INTO job_runs (job, nominal_at, trigger, status, max_attempts, timeout_s, run_after)
SELECT $1, t, 'schedule', 'scheduled', $3, $4, t FROM unnest($2::timestamptz[]) AS t
ON CONFLICT (job, nominal_at) DO NOTHING
RETURNING id"""

# $1 name, $2 next_run_at, $3 last nominal (or NULL), $4 missed ticks
_ADVANCE_SQL = """
UPDATE schedules SET next_run_at = $2, last_nominal_at = COALESCE($3, last_nominal_at),
       missed_count = missed_count + $4, updated_at = now()
 WHERE name = $1"""

# The earliest enabled next tick, in seconds from the database's now (negative: overdue).
_NEXT_DUE_SQL = "SELECT EXTRACT(EPOCH FROM min(next_run_at) - now())::float8 FROM schedules WHERE enabled"


@dataclass(frozen=True)
class TickResult:
    inserted: int  # runs created
    missed: int  # ticks counted as missed
    schedules: int  # schedules processed


async def sync_schedules(store: Store, jobs: Mapping[str, JobSection]) -> dict[str, datetime]:
    """Upsert every configured job. Keeps ``next_run_at`` unless the schedule expression or zone changed.

    Jobs no longer in the configuration are left as they are (their history stays); disable them to stop them.
    Returns each job's next nominal run. Raises ``ScheduleError`` before writing anything if one is invalid.
    """
    parsed: dict[str, Schedule] = {}
    for name, job in jobs.items():
        try:
            parsed[name] = parse_schedule(job.schedule, job.timezone)
        except ScheduleError as exc:
            raise ScheduleError(f"jobs.{name}.schedule: {exc}") from exc
    now: datetime = await store.fetchval("SELECT now()")
    out: dict[str, datetime] = {}
    async with store.transaction() as conn:
        for name, job in jobs.items():
            sched = parsed[name]
            row = await conn.fetchrow(
                _UPSERT_SQL, name, sched.expr, sched.kind, sched.interval_ms, sched.cron, sched.timezone,
                job.enabled, job.misfire, job.catch_up_cap, float(job.timeout_s), job.max_attempts,
                job.concurrency, sched.next_after(now),
            )
            out[name] = row["next_run_at"]
    return out


async def tick(store: Store, *, misfire_grace_s: float = 60.0, batch: int = 100) -> TickResult:
    """Process due schedules once; returns what was done. Safe to call from any number of instances."""
    inserted = missed = processed = 0
    async with store.transaction() as conn:
        for row in await conn.fetch(_DUE_SQL, batch):
            sched = parse_schedule(row["expr"], row["timezone"])
            now: datetime = row["db_now"]
            # The grace for 'skip' never exceeds one period: a tick late by a whole period is a missed tick.
            grace = min(timedelta(seconds=misfire_grace_s), sched.period(now))
            plan = plan_ticks(
                sched, next_run_at=row["next_run_at"], now=now, policy=row["misfire"],
                catch_up_cap=row["catch_up_cap"], grace=grace,
            )
            ids = []
            if plan.run:
                ids = await conn.fetch(
                    _INSERT_RUNS_SQL, row["name"], plan.run, row["max_attempts"], row["timeout_s"]
                )
            await conn.execute(
                _ADVANCE_SQL, row["name"], plan.next_run_at, plan.run[-1] if plan.run else None, plan.missed
            )
            if plan.missed:
                log.warning("ticks missed", job=row["name"], missed=plan.missed, policy=row["misfire"])
            inserted += len(ids)
            missed += plan.missed
            processed += 1
    return TickResult(inserted=inserted, missed=missed, schedules=processed)


async def seconds_until_due(store: Store) -> float | None:
    """Seconds until the earliest enabled tick on the database clock; None when nothing is scheduled."""
    value = await store.fetchval(_NEXT_DUE_SQL)
    return None if value is None else float(value)
