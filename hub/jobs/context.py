"""What a routine is given: a small typed context, not the hub.

``JobDeps`` holds the collaborators shared by every run (built once by ``JobService``); ``RoutineContext`` adds
the run's identity and its lease. Routines write through ``ctx.fenced()`` so a paused former holder cannot
write after another instance took the job over.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from hub.jobs.leases import LeaseHandle, fenced_transaction
from hub.metrics import Metrics
from hub.store import Store

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]
# Subsystem (or "device:<name>") -> True / "ok" when fine, else a reason (str) or {"ok": bool, "reason": str}.
HealthProbe = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
Frontier = Callable[[str], Awaitable[str | None]]
# Opens a pending confirmation for a hazardous task elsewhere and returns its id.
HazardGate = Callable[["TaskInfo"], Awaitable[str]]


@dataclass(frozen=True)
class TaskInfo:
    """A task as the executor, its actions and the hazard gate see it."""

    id: int
    project_id: int
    goal_id: int
    title: str
    action: str
    params: Mapping[str, Any]
    hazardous: bool
    attempts: int
    max_attempts: int
    timeout_s: float


# A task action: does the work of one task; returns a JSON-able result. Raising fails the attempt.
TaskAction = Callable[[TaskInfo, "RoutineContext"], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True)
class JobDeps:
    store: Store
    metrics: Metrics
    publish: Publish
    health_probe: HealthProbe
    hub_id: str = "kitt"
    instance_id: str = "kitt"
    frontier: Frontier | None = None
    hazard_gate: HazardGate | None = None
    task_actions: Mapping[str, TaskAction] = field(default_factory=dict)
    task_retry_base_s: float = 1.0
    task_retry_cap_s: float = 30.0

    async def probe(self) -> Mapping[str, Any]:
        result = self.health_probe()
        if inspect.isawaitable(result):
            result = await result
        return result


@dataclass(frozen=True)
class RoutineContext:
    deps: JobDeps
    job: str
    run_id: int
    attempt: int
    lease: LeaseHandle
    nominal_at: datetime | None = None
    concurrency: int = 4

    @property
    def store(self) -> Store:
        return self.deps.store

    @property
    def metrics(self) -> Metrics:
        return self.deps.metrics

    @property
    def token(self) -> int:
        return self.lease.token

    def topic(self, *parts: str) -> str:
        return "/".join(("kitt", self.deps.hub_id, "jobs", self.job, *parts))

    @asynccontextmanager
    async def fenced(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that commits only while this run's lease term is current (else ``StaleLeaseError``)."""
        async with fenced_transaction(self.deps.store, self.lease) as conn:
            yield conn

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.deps.publish(topic, payload)


Routine = Callable[[RoutineContext], Awaitable[Mapping[str, Any] | None]]
