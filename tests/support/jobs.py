"""Shared fixtures of the jobs tests: one database per module, emptied before each test; a publish recorder.

Import the fixtures into a test module (``from tests.support.jobs import dsn, store``) to use them there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hub.metrics import Metrics
from hub.store import Store
from tests.support.db import temp_database_sync

JOB_TABLES = "schedules, job_runs, leases, goals, projects, tasks, goal_outcomes, events"


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with temp_database_sync() as url:
        yield url


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    s = Store(dsn=dsn, metrics=Metrics(), pool_min=1, pool_max=30)
    await s.start()
    await s.write(f"TRUNCATE {JOB_TABLES} CASCADE")
    try:
        yield s
    finally:
        await s.stop()


class Published:
    """A ``publish`` callable that records what a routine would send over MQTT."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, topic: str, payload: dict[str, Any]) -> None:
        self.messages.append((topic, payload))
