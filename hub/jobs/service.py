"""``JobService``: the component that owns the job loops of one hub instance.

Four named tasks: the ticker turns due schedules into runs, the worker claims and executes runs (bounded), the
heartbeat keeps the leases of this instance's runs alive, and the reaper hands back runs whose instance died.
Any number of instances may run against one database; the database decides who does what.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from hub.aio import wait_event
from hub.config import JobSection
from hub.errors import KittError
from hub.jobs import history as history_q
from hub.jobs.context import Frontier, HazardGate, HealthProbe, JobDeps, Publish, Routine, TaskAction
from hub.jobs.routines import default_routines
from hub.jobs.runner import DB_ERRORS, ClaimedRun, RunnerSettings, claim, execute, heartbeat, reap
from hub.jobs.scheduler import seconds_until_due, sync_schedules, tick
from hub.metrics import Metrics
from hub.store import Store

log = structlog.get_logger("kitt.jobs")

# $1 job name. A manual run of a known job, due now.
_RUN_NOW_SQL = """
INSERT INTO job_runs (job, nominal_at, trigger, status, max_attempts, timeout_s, run_after)
SELECT name, NULL, 'manual', 'scheduled', max_attempts, timeout_s, now() FROM schedules WHERE name = $1
RETURNING id"""


class JobError(KittError):
    """A request about jobs that cannot be served (unknown job)."""


class JobService:
    """Durable schedules and runs for one instance. ``start()`` syncs schedules and starts the loops."""

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        jobs: Mapping[str, JobSection],
        instance_id: str,
        publish: Publish,
        health_probe: HealthProbe,
        frontier: Frontier | None = None,
        hazard_gate: HazardGate | None = None,
        hub_id: str = "kitt",
        routines: Mapping[str, Routine] | None = None,
        task_actions: Mapping[str, TaskAction] | None = None,
        max_concurrent_runs: int = 4,
        poll_interval_s: float = 1.0,
        lease_ttl_s: float = 30.0,
        reap_interval_s: float = 5.0,
        retry_base_s: float = 10.0,
        retry_cap_s: float = 3600.0,
        task_retry_base_s: float = 1.0,
        misfire_grace_s: float = 60.0,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        self._jobs = dict(jobs)
        self._routines = {**default_routines(), **(routines or {})}
        self._deps = JobDeps(
            store=store, metrics=metrics, publish=publish, health_probe=health_probe, hub_id=hub_id,
            instance_id=instance_id, frontier=frontier, hazard_gate=hazard_gate,
            task_actions=dict(task_actions or {}), task_retry_base_s=task_retry_base_s,
        )
        self._settings = RunnerSettings(
            lease_ttl_s=lease_ttl_s, retry_base_s=retry_base_s, retry_cap_s=retry_cap_s,
            finish_retry_s=max(lease_ttl_s, 5.0),
        )
        self._max_runs = max_concurrent_runs
        self._poll = poll_interval_s
        self._reap_every = reap_interval_s
        self._grace = misfire_grace_s
        self._shutdown_grace = shutdown_grace_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[int, ClaimedRun] = {}
        self._run_tasks: set[asyncio.Task[str]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._wake: asyncio.Event | None = None
        self._loop_failures: dict[str, str] = {}

    @property
    def instance_id(self) -> str:
        return self._deps.instance_id

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        await sync_schedules(self._deps.store, self._jobs)
        missing = sorted(set(self._jobs) - set(self._routines))
        if missing:
            log.warning("jobs without a routine on this instance are left to others", jobs=missing)
        self._slots = asyncio.Semaphore(self._max_runs)
        self._wake = asyncio.Event()
        for name, loop in (("ticker", self._ticker), ("worker", self._worker),
                           ("heartbeat", self._heartbeat), ("reaper", self._reaper)):
            task = asyncio.create_task(loop(), name=f"kitt[jobs].{name}")
            task.add_done_callback(lambda t, n=name: self._loop_done(n, t))
            self._tasks[name] = task
        log.info("job service started", instance=self.instance_id, jobs=sorted(self._jobs))

    async def stop(self) -> None:
        """Stop claiming, let in-flight runs finish for ``shutdown_grace_s``, hand back the rest."""
        for name in ("ticker", "reaper", "worker"):
            await self._cancel(name)
        if self._run_tasks:
            _, pending = await asyncio.wait(set(self._run_tasks), timeout=self._shutdown_grace)
            for task in pending:
                task.cancel()
            for task in list(pending):
                with contextlib.suppress(asyncio.CancelledError):  # we cancelled it: handed back by execute()
                    await task
        await self._cancel("heartbeat")
        log.info("job service stopped", instance=self.instance_id)

    async def _cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # the cancellation we asked for
            await task

    def _loop_done(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._loop_failures[name] = repr(exc)
            log.error("job loop died", loop=name, error=repr(exc), exc_info=exc)

    # --- the loops ---------------------------------------------------------------------------------------

    async def _guarded(self, what: str, op: Callable[[], Awaitable[Any]], backoff: list[float]) -> Any:
        """Run one database step; on an outage log, wait with growing backoff, and return None."""
        try:
            result = await op()
        except DB_ERRORS as exc:
            log.warning("job loop step failed; retrying", step=what, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(backoff[0])
            backoff[0] = min(backoff[0] * 2, 5.0)
            return None
        backoff[0] = 0.1
        return result

    async def _ticker(self) -> None:
        backoff = [0.1]
        assert self._wake is not None
        while True:
            res = await self._guarded("tick", lambda: tick(self._deps.store, misfire_grace_s=self._grace), backoff)
            if res is not None and res.inserted:
                self._wake.set()
            due = await self._guarded("next due", lambda: seconds_until_due(self._deps.store), backoff)
            # Sleep on the loop's monotonic clock until the database says the next tick is due (at most a poll).
            delay = self._poll if due is None else min(self._poll, max(due, 0.0))
            await asyncio.sleep(max(delay, 0.01))

    async def _worker(self) -> None:
        assert self._slots is not None and self._wake is not None
        backoff = [0.1]
        jobs = sorted(set(self._jobs) & set(self._routines))
        while True:
            await self._slots.acquire()
            run = await self._guarded("claim", lambda: claim(self._deps, jobs, self._settings), backoff)
            if run is None:
                self._slots.release()
                await wait_event(self._wake, self._poll)  # or the poll interval elapsed: look again
                self._wake.clear()
                continue
            self._runs[run.id] = run
            task = asyncio.create_task(self._execute(run), name=f"kitt[jobs].run:{run.job}:{run.id}")
            self._run_tasks.add(task)
            task.add_done_callback(self._run_done)

    async def _execute(self, run: ClaimedRun) -> str:
        try:
            return await execute(self._deps, run, self._routines.get(run.job), self._settings)
        except DB_ERRORS as exc:  # the outcome could not be written; the reaper retries the run
            log.error("run outcome not recorded", job=run.job, run_id=run.id, error=str(exc))
            return "unrecorded"
        finally:
            self._runs.pop(run.id, None)

    def _run_done(self, task: asyncio.Task[str]) -> None:
        self._run_tasks.discard(task)
        assert self._slots is not None and self._wake is not None
        self._slots.release()
        self._wake.set()  # a finished run may unblock the next run of the same job
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("run task crashed", task=task.get_name(), error=repr(exc), exc_info=exc)

    async def _heartbeat(self) -> None:
        backoff = [0.1]
        while True:
            await asyncio.sleep(self._settings.lease_ttl_s / 3)
            lost = await self._guarded("heartbeat", lambda: heartbeat(self._deps, dict(self._runs), self._settings),
                                       backoff)
            for run_id in lost or []:
                run = self._runs.get(run_id)
                await self._guarded("lease lost event", lambda r=run, i=run_id: self._deps.store.record_event(
                    "job.lease_lost", actor=self.instance_id, subject=r.job if r else None,
                    body={"run_id": i, "token": r.lease.token if r else None}), backoff)

    async def _reaper(self) -> None:
        backoff = [0.1]
        assert self._wake is not None
        while True:
            reaped = await self._guarded("reap", lambda: reap(self._deps, self._settings), backoff)
            if reaped:
                self._wake.set()
            await asyncio.sleep(self._reap_every)

    # --- API for the CLI, the web API and tests ----------------------------------------------------------

    async def run_now(self, name: str) -> int:
        """Queue a manual run of ``name`` (due now); returns its run id."""
        store = self._deps.store
        async with store.transaction() as conn:
            run_id = await conn.fetchval(_RUN_NOW_SQL, name)
            if run_id is None:
                raise JobError(f"unknown job {name!r}")
            await store.record_event("job.run.requested", actor=self.instance_id, subject=name,
                                     body={"run_id": run_id}, conn=conn)
        if self._wake is not None:
            self._wake.set()
        return run_id

    async def list_jobs(self) -> list[dict[str, Any]]:
        return await history_q.list_jobs(self._deps.store)

    async def history(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return await history_q.history(self._deps.store, name, limit)

    async def health(self) -> dict[str, Any]:
        """``ok`` false when a job has not succeeded within twice its period, or a loop died."""
        late = await history_q.overdue(self._deps.store)
        return {"ok": not late and not self._loop_failures, "overdue": late,
                "loops": {n: self._loop_failures.get(n, "running") for n in ("ticker", "worker", "heartbeat",
                                                                            "reaper")},
                "running": sorted(self._runs)}
