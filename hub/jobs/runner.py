"""Claiming, executing and finishing runs; heartbeats and the reaper.

A claim is one transaction: pick a ready run (``FOR UPDATE SKIP LOCKED``) whose job is not running anywhere,
take the job's lease (its token rises on every takeover) and mark the run ``running`` with that token and a
lease expiry. The run executes under ``asyncio.timeout``; its outcome is written with a guard on
``lease_token`` and ``status = 'running'``, and success additionally passes the lease fence. Failures retry
after a jittered exponential backoff until ``max_attempts``, then go ``dead``. While a run executes the
heartbeat extends its lease; if the instance dies, the reaper of any instance finds the expired lease and
sends the run back for another attempt (at-least-once: routines must be idempotent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from hub.errors import StaleLeaseError, StoreError
from hub.jobs.backoff import backoff_delay
from hub.jobs.context import JobDeps, Routine, RoutineContext
from hub.jobs.leases import LeaseHandle, acquire, fence, job_lease_name, release, renew

log = structlog.get_logger("kitt.jobs.runner")

# Errors that mean "the database is unreachable right now": retried, never fatal for a loop. asyncpg raises
# InternalClientError when a connection dies mid-protocol (seen during a server restart); Store passes it through.
DB_ERRORS: tuple[type[BaseException], ...] = (
    StoreError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)

# $1 runnable jobs[], $2 jobs already tried in this claim[]. One ready run of a job that is not running.
_CANDIDATE_SQL = """
SELECT r.id, r.job FROM job_runs r JOIN schedules s ON s.name = r.job
 WHERE r.status IN ('scheduled', 'failed', 'timed_out') AND r.run_after <= now()
   AND (s.enabled OR r.trigger = 'manual')
   AND r.job = ANY($1::text[]) AND NOT r.job = ANY($2::text[])
   AND NOT EXISTS (SELECT 1 FROM job_runs o WHERE o.job = r.job AND o.status = 'running')
   AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'job:' || r.job AND l.expires_at > now())
 ORDER BY r.run_after, r.id
 LIMIT 1
   FOR UPDATE OF r SKIP LOCKED"""

# $1 run id, $2 owner, $3 token, $4 lease ttl seconds
_START_SQL = """
UPDATE job_runs r SET status = 'running', attempts = r.attempts + 1, lease_owner = $2, lease_token = $3,
       lease_expires_at = now() + make_interval(secs => $4), heartbeat_at = now(), started_at = now(),
       finished_at = NULL, duration_ms = NULL
  FROM schedules s
 WHERE r.id = $1 AND s.name = r.job
RETURNING r.id, r.job, r.nominal_at, r.attempts, r.max_attempts, r.timeout_s, s.concurrency,
          EXTRACT(EPOCH FROM r.started_at - r.run_after)::float8 AS lag_s"""

# $1 run id, $2 token, $3 result
_SUCCEED_SQL = """
UPDATE job_runs SET status = 'succeeded', finished_at = now(), result = $3::jsonb, lease_expires_at = NULL,
       duration_ms = (EXTRACT(EPOCH FROM now() - started_at) * 1000)::int
 WHERE id = $1 AND lease_token = $2 AND status = 'running'
RETURNING EXTRACT(EPOCH FROM finished_at)::float8 AS finished_epoch"""

# $1 run id, $2 token, $3 status when a retry remains ('failed' | 'timed_out'), $4 error text,
# $5 retry delay seconds, $6 error kind
_FAIL_SQL = """
UPDATE job_runs SET
       status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE $3 END,
       run_after = now() + make_interval(secs => $5),
       finished_at = now(), duration_ms = (EXTRACT(EPOCH FROM now() - started_at) * 1000)::int,
       last_error = $4, lease_expires_at = NULL,
       errors = errors || jsonb_build_array(jsonb_build_object(
           'attempt', attempts, 'at', now(), 'owner', lease_owner, 'kind', $6::text, 'error', $4::text))
 WHERE id = $1 AND lease_token = $2 AND status = 'running'
RETURNING status"""

# $1 run id, $2 token. Shutdown: hand the run back without using up an attempt.
_INTERRUPT_SQL = """
UPDATE job_runs SET status = 'scheduled', attempts = attempts - 1, run_after = now(), lease_expires_at = NULL,
       errors = errors || jsonb_build_array(jsonb_build_object(
           'attempt', attempts, 'at', now(), 'owner', lease_owner, 'kind', 'interrupted',
           'error', 'instance shut down during the run'))
 WHERE id = $1 AND lease_token = $2 AND status = 'running'"""

# $1 run ids[], $2 tokens[], $3 owner, $4 ttl seconds
_HEARTBEAT_SQL = """
UPDATE job_runs r SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $4)
  FROM unnest($1::bigint[], $2::bigint[]) AS h(id, token)
 WHERE r.id = h.id AND r.lease_token = h.token AND r.lease_owner = $3 AND r.status = 'running'
RETURNING r.id"""

# $1 retry base seconds, $2 retry cap seconds, $3 batch
_REAP_SQL = """
WITH x AS (SELECT id FROM job_runs WHERE status = 'running' AND lease_expires_at < now()
            ORDER BY lease_expires_at LIMIT $3 FOR UPDATE SKIP LOCKED)
UPDATE job_runs r SET
       status = CASE WHEN r.attempts >= r.max_attempts THEN 'dead' ELSE 'failed' END,
       run_after = now() + make_interval(secs => LEAST($2, $1 * 2 ^ GREATEST(r.attempts - 1, 0))
                                                 * (0.5 + random() / 2)),
       finished_at = now(), duration_ms = (EXTRACT(EPOCH FROM now() - r.started_at) * 1000)::int,
       last_error = 'lease expired: the instance running it stopped heartbeating',
       errors = r.errors || jsonb_build_array(jsonb_build_object(
           'attempt', r.attempts, 'at', now(), 'owner', r.lease_owner, 'kind', 'lease_expired',
           'error', 'lease expired: the instance running it stopped heartbeating')),
       lease_expires_at = NULL
  FROM x WHERE r.id = x.id
RETURNING r.id, r.job, r.status, r.attempts, r.lease_owner"""


@dataclass
class ClaimedRun:
    id: int
    job: str
    nominal_at: datetime | None
    attempt: int
    max_attempts: int
    timeout_s: float
    concurrency: int
    lag_s: float
    lease: LeaseHandle


@dataclass(frozen=True)
class RunnerSettings:
    lease_ttl_s: float = 30.0
    retry_base_s: float = 10.0
    retry_cap_s: float = 3600.0
    finish_retry_s: float = 60.0  # how long an outcome write keeps retrying through a database outage


async def claim(
    deps: JobDeps, jobs: list[str], settings: RunnerSettings, *, tries: int = 4
) -> ClaimedRun | None:
    """Claim one ready run of one of ``jobs`` (a job is claimable only when nobody holds its lease)."""
    store, me = deps.store, deps.instance_id
    tried: list[str] = []
    async with store.transaction() as conn:
        # A takeover blocked by a holder's fenced transaction gives up quickly; the worker tries again later.
        await conn.execute("SET LOCAL lock_timeout = '2s'")
        for _ in range(tries):
            cand = await conn.fetchrow(_CANDIDATE_SQL, jobs, tried)
            if cand is None:
                return None
            lease = await acquire(conn, job_lease_name(cand["job"]), me, settings.lease_ttl_s)
            if lease is None:  # another instance took this job between our read and the lease upsert
                tried.append(cand["job"])
                continue
            row = await conn.fetchrow(_START_SQL, cand["id"], me, lease.token, float(settings.lease_ttl_s))
            return ClaimedRun(
                id=row["id"], job=row["job"], nominal_at=row["nominal_at"], attempt=row["attempts"],
                max_attempts=row["max_attempts"], timeout_s=row["timeout_s"], concurrency=row["concurrency"],
                lag_s=max(0.0, row["lag_s"] or 0.0), lease=lease,
            )
    return None


async def execute(
    deps: JobDeps, run: ClaimedRun, routine: Routine | None, settings: RunnerSettings
) -> str:
    """Run one claimed run to an outcome and record it; returns the status written (or 'fenced')."""
    ctx = RoutineContext(
        deps=deps, job=run.job, run_id=run.id, attempt=run.attempt, lease=run.lease,
        nominal_at=run.nominal_at, concurrency=run.concurrency,
    )
    log.info("run started", job=run.job, run_id=run.id, attempt=run.attempt, token=run.lease.token)
    deadline: asyncio.Timeout | None = None
    try:
        if routine is None:
            raise LookupError(f"no routine is registered for job {run.job!r}")
        async with asyncio.timeout(run.timeout_s) as deadline:
            result = await routine(ctx)
    except asyncio.CancelledError:
        await _interrupt(deps, run)
        raise
    except StaleLeaseError as exc:
        return await _refused(deps, run, str(exc))
    except TimeoutError as exc:
        if deadline is not None and deadline.expired():
            return await _fail(deps, run, settings, "timed_out", f"timed out after {run.timeout_s:g} s")
        return await _fail(deps, run, settings, "failed", f"TimeoutError: {exc}")
    except Exception as exc:  # a routine's failure is recorded on its run and retried, never lost
        log.warning("run failed", job=run.job, run_id=run.id, error=repr(exc))
        return await _fail(deps, run, settings, "failed", f"{type(exc).__name__}: {exc}")
    return await _succeed(deps, run, dict(result or {}), settings)


async def _retrying(what: str, run: ClaimedRun, settings: RunnerSettings, op: Any) -> Any:
    """Retry an outcome write through a database outage; the reaper covers us if it never comes back."""
    give_up = time.monotonic() + settings.finish_retry_s
    delay = 0.2
    while True:
        try:
            return await op()
        except StaleLeaseError:
            raise
        except DB_ERRORS as exc:
            if time.monotonic() >= give_up:
                log.error("could not record run outcome", job=run.job, run_id=run.id, what=what, error=str(exc))
                raise
            log.warning("retrying run outcome write", job=run.job, run_id=run.id, what=what, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _succeed(deps: JobDeps, run: ClaimedRun, result: dict[str, Any], settings: RunnerSettings) -> str:
    async def op() -> float:
        async with deps.store.transaction() as conn:
            await fence(conn, run.lease)
            finished = await conn.fetchval(_SUCCEED_SQL, run.id, run.lease.token, result)
            if finished is None:
                raise StaleLeaseError(f"run {run.id} is no longer held with token {run.lease.token}")
            await release(conn, run.lease)
            return float(finished)

    try:
        finished = await _retrying("succeeded", run, settings, op)
    except StaleLeaseError as exc:
        return await _refused(deps, run, str(exc))
    deps.metrics.job_runs.labels(job=run.job, status="succeeded").inc()
    deps.metrics.job_last_success.labels(job=run.job).set(finished)
    log.info("run succeeded", job=run.job, run_id=run.id, attempt=run.attempt)
    return "succeeded"


async def _fail(deps: JobDeps, run: ClaimedRun, settings: RunnerSettings, status: str, error: str) -> str:
    delay = backoff_delay(run.attempt, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)

    async def op() -> str | None:
        async with deps.store.transaction() as conn:
            written = await conn.fetchval(_FAIL_SQL, run.id, run.lease.token, status, error, delay, status)
            if written is not None:
                await release(conn, run.lease)
            return written

    written = await _retrying(status, run, settings, op)
    if written is None:
        return await _refused(deps, run, f"run {run.id} is no longer held with token {run.lease.token}")
    deps.metrics.job_runs.labels(job=run.job, status=written).inc()
    await deps.store.record_event(
        f"job.run.{written}", actor=deps.instance_id, subject=run.job,
        body={"run_id": run.id, "attempt": run.attempt, "error": error, "retry_in_s": round(delay, 3)},
    )
    return written


async def _refused(deps: JobDeps, run: ClaimedRun, error: str) -> str:
    """A stale holder's write was refused by the fence: record it where people look."""
    run.lease.lost = True
    deps.metrics.job_runs.labels(job=run.job, status="fenced").inc()
    log.warning("write refused by fencing", job=run.job, run_id=run.id, token=run.lease.token, error=error)
    await deps.store.record_event(
        "job.write_refused", actor=deps.instance_id, subject=run.job,
        body={"run_id": run.id, "attempt": run.attempt, "token": run.lease.token, "error": error},
    )
    return "fenced"


async def _interrupt(deps: JobDeps, run: ClaimedRun) -> None:
    try:
        async with asyncio.timeout(5):
            async with deps.store.transaction() as conn:
                if await conn.execute(_INTERRUPT_SQL, run.id, run.lease.token) != "UPDATE 0":
                    await release(conn, run.lease)
    except DB_ERRORS as exc:  # the reaper will hand it back once the lease expires
        log.warning("could not hand back an interrupted run", job=run.job, run_id=run.id, error=str(exc))


async def heartbeat(deps: JobDeps, runs: Mapping[int, ClaimedRun], settings: RunnerSettings) -> list[int]:
    """Extend the leases of ``runs``; returns the ids whose lease was lost (they are marked ``lease.lost``)."""
    # A run whose term is known lost is not kept alive: the reaper hands it back once its lease expires.
    items = [r for r in runs.values() if not r.lease.lost]
    if not items:
        return []
    async with deps.store.transaction() as conn:
        held = await renew(conn, [r.lease for r in items], deps.instance_id, settings.lease_ttl_s)
        alive = await conn.fetch(
            _HEARTBEAT_SQL, [r.id for r in items], [r.lease.token for r in items], deps.instance_id,
            float(settings.lease_ttl_s),
        )
    alive_ids = {r["id"] for r in alive}
    lost = [r.id for r in items if r.id not in alive_ids or r.lease.name not in held]
    for run in items:
        if run.id in lost:
            run.lease.lost = True
            log.warning("lease lost", job=run.job, run_id=run.id, token=run.lease.token)
    return lost


async def reap(deps: JobDeps, settings: RunnerSettings, *, batch: int = 100) -> list[dict[str, Any]]:
    """Send runs whose lease expired back for another attempt (or to dead); returns what it did."""
    rows = await deps.store.write_fetch(_REAP_SQL, settings.retry_base_s, settings.retry_cap_s, batch)
    reaped = [dict(r) for r in rows]
    for r in reaped:
        deps.metrics.job_runs.labels(job=r["job"], status="lease_expired").inc()
        log.warning("run lease expired", job=r["job"], run_id=r["id"], owner=r["lease_owner"], now=r["status"])
        await deps.store.record_event(
            "job.run.lease_expired", actor=deps.instance_id, subject=r["job"],
            body={"run_id": r["id"], "attempt": r["attempts"], "owner": r["lease_owner"], "status": r["status"]},
        )
    return reaped
