"""The task executor: pending tasks run concurrently under a bound, each with its own timeout and retries.

The executor runs inside the ``task_execution_cycle`` singleton and stamps every task it claims with the
cycle's fencing token. Claiming is one fenced ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)``, so
no other writer can take the same rows; tasks left ``running`` by an older term (a crashed or paused cycle)
carry a lower token and are claimed again. Every outcome write is fenced too.

A hazardous task never runs here: the injected ``hazard_gate`` opens a pending confirmation and the task waits
in ``awaiting_confirmation`` (the confirmation service runs it, or not, once a person answered).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from hub.errors import KittError, StaleLeaseError
from hub.jobs.backoff import backoff_delay
from hub.jobs.context import RoutineContext, TaskAction, TaskInfo

log = structlog.get_logger("kitt.jobs.tasks")

_COLUMNS = "id, project_id, goal_id, title, action, params, hazardous, attempts, max_attempts, timeout_s"

# $1 fencing token, $2 batch. Runnable tasks: pending and due, or orphaned by an older term of the cycle.
_CLAIM_SQL = f"""
UPDATE tasks t SET status = 'running', fence_token = $1, started_at = now(), attempts = t.attempts + 1
 WHERE t.id IN (SELECT id FROM tasks
                 WHERE NOT hazardous
                   AND ((status = 'pending' AND run_after <= now()) OR (status = 'running' AND fence_token < $1))
                 ORDER BY run_after, id LIMIT $2
                   FOR UPDATE SKIP LOCKED)
RETURNING {_COLUMNS}"""

# $1 batch. Hazardous tasks that still need a confirmation.
_HAZARDOUS_SQL = f"""
SELECT {_COLUMNS} FROM tasks WHERE hazardous AND status = 'pending' AND run_after <= now()
 ORDER BY run_after, id LIMIT $1 FOR UPDATE SKIP LOCKED"""

# $1 id, $2 confirmation id, $3 token
_AWAIT_SQL = """
UPDATE tasks SET status = 'awaiting_confirmation', confirmation_id = $2, fence_token = $3
 WHERE id = $1 AND status = 'pending' AND hazardous"""

# $1 id, $2 token, $3 result, $4 duration ms
_DONE_SQL = """
UPDATE tasks SET status = 'done', result = $3::jsonb, finished_at = now(), duration_ms = $4, last_error = NULL
 WHERE id = $1 AND fence_token = $2 AND status = 'running'"""

# $1 id, $2 token, $3 error, $4 final (no retry left), $5 duration ms
_ATTEMPT_FAILED_SQL = """
UPDATE tasks SET last_error = $3, duration_ms = $5,
       errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', now(), 'error', $3::text)),
       status = CASE WHEN $4 THEN 'failed' ELSE status END,
       finished_at = CASE WHEN $4 THEN now() ELSE finished_at END,
       attempts = CASE WHEN $4 THEN attempts ELSE attempts + 1 END
 WHERE id = $1 AND fence_token = $2 AND status = 'running'"""


class PermanentTaskError(KittError):
    """A task that cannot succeed by retrying (unknown action, bad parameters)."""


@dataclass
class ExecutionReport:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    awaiting_confirmation: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed, "done": self.done, "failed": self.failed,
            "awaiting_confirmation": self.awaiting_confirmation, "elapsed_s": round(self.elapsed_s, 4),
            "errors": self.errors[:10],
        }


def _info(row: Mapping[str, Any]) -> TaskInfo:
    return TaskInfo(
        id=row["id"], project_id=row["project_id"], goal_id=row["goal_id"], title=row["title"],
        action=row["action"], params=row["params"] or {}, hazardous=row["hazardous"], attempts=row["attempts"],
        max_attempts=row["max_attempts"], timeout_s=row["timeout_s"],
    )


class TaskExecutor:
    """Runs the due tasks of one cycle. ``concurrency`` bounds how many actions run at once."""

    def __init__(self, ctx: RoutineContext, actions: Mapping[str, TaskAction], *, concurrency: int,
                 batch: int = 500) -> None:
        self._ctx = ctx
        self._actions = actions
        self._sem = asyncio.Semaphore(concurrency)
        self._batch = batch
        self._report = ExecutionReport()

    async def run(self) -> ExecutionReport:
        started = time.perf_counter()
        await self._gate_hazardous()
        async with self._ctx.fenced() as conn:
            rows = await conn.fetch(_CLAIM_SQL, self._ctx.token, self._batch)
        self._report.claimed = len(rows)
        try:
            async with asyncio.TaskGroup() as tg:
                for row in rows:
                    tg.create_task(self._run_task(_info(row)), name=f"kitt[jobs].task:{row['id']}")
        except* StaleLeaseError as eg:
            # The cycle lost its term: stop here; the next term re-claims whatever this one left running.
            raise eg.exceptions[0] from None
        self._report.elapsed_s = time.perf_counter() - started
        return self._report

    async def _gate_hazardous(self) -> None:
        ctx = self._ctx
        async with ctx.fenced() as conn:
            rows = await conn.fetch(_HAZARDOUS_SQL, self._batch)
        for row in rows:
            info = _info(row)
            gate = ctx.deps.hazard_gate
            # Without a gate the task still never runs: it waits with no confirmation until one is wired.
            confirmation = await gate(info) if gate is not None else None
            async with ctx.fenced() as conn:
                await conn.execute(_AWAIT_SQL, info.id, confirmation, ctx.token)
                await ctx.store.record_event(
                    "task.awaiting_confirmation", actor=ctx.deps.instance_id, subject=f"task:{info.id}",
                    correlation_id=confirmation,
                    body={"task_id": info.id, "title": info.title, "action": info.action,
                          "confirmation_id": confirmation, "gate": gate is not None},
                    conn=conn,
                )
            self._report.awaiting_confirmation += 1
            log.info("hazardous task awaits confirmation", task_id=info.id, confirmation_id=confirmation)

    async def _run_task(self, info: TaskInfo) -> None:
        attempt = info.attempts
        while True:
            began = time.perf_counter()
            try:
                if attempt > info.max_attempts:
                    raise PermanentTaskError(f"attempts exhausted ({info.max_attempts})")
                action = self._actions.get(info.action)
                if action is None:
                    raise PermanentTaskError(f"unknown task action {info.action!r}")
                async with self._sem, asyncio.timeout(info.timeout_s):
                    result = await action(info, self._ctx)
            except StaleLeaseError:
                raise
            except (Exception, TimeoutError) as exc:  # recorded on the task row, then retried or failed
                error = f"timed out after {info.timeout_s:g} s" if isinstance(exc, TimeoutError) \
                    else f"{type(exc).__name__}: {exc}"
                final = isinstance(exc, PermanentTaskError) or attempt >= info.max_attempts
                ms = int((time.perf_counter() - began) * 1000)
                async with self._ctx.fenced() as conn:
                    await conn.execute(_ATTEMPT_FAILED_SQL, info.id, self._ctx.token, error, final, ms)
                if final:
                    self._report.failed += 1
                    self._report.errors.append(f"task {info.id}: {error}")
                    log.warning("task failed", task_id=info.id, attempts=attempt, error=error)
                    return
                attempt += 1
                await asyncio.sleep(backoff_delay(
                    attempt - 1, base_s=self._ctx.deps.task_retry_base_s, cap_s=self._ctx.deps.task_retry_cap_s
                ))
                continue
            ms = int((time.perf_counter() - began) * 1000)
            async with self._ctx.fenced() as conn:
                await conn.execute(_DONE_SQL, info.id, self._ctx.token, dict(result or {}), ms)
            self._report.done += 1
            return


# --- built-in actions --------------------------------------------------------------------------------------


async def notify_action(task: TaskInfo, ctx: RoutineContext) -> dict[str, Any]:
    """Tell the house about a task (a message on ``kitt/<hub>/jobs/<job>/task/<id>``)."""
    payload = {"task_id": task.id, "goal_id": task.goal_id, "project_id": task.project_id,
               "title": task.title, "message": str(task.params.get("message", task.title))}
    await ctx.publish(ctx.topic("task", str(task.id)), payload)
    return {"published": True}


async def record_action(task: TaskInfo, ctx: RoutineContext) -> dict[str, Any]:
    """Write a note to the audit trail (fenced, so a stale cycle cannot add it)."""
    async with ctx.fenced() as conn:
        event_id = await ctx.store.record_event(
            "task.note", actor=ctx.deps.instance_id, subject=f"task:{task.id}",
            body={"title": task.title, **dict(task.params)}, conn=conn,
        )
    return {"event_id": event_id}


async def wait_action(task: TaskInfo, ctx: RoutineContext) -> dict[str, Any]:
    """Wait ``params.seconds`` (a stand-in for I/O: reminders, tests and the benchmark)."""
    seconds = float(task.params.get("seconds", 0.1))
    if not 0 <= seconds <= 3600:
        raise PermanentTaskError("seconds must be within 0..3600")
    await asyncio.sleep(seconds)
    return {"waited_s": seconds}


def default_actions() -> dict[str, TaskAction]:
    return {"notify": notify_action, "record": record_action, "wait": wait_action}
