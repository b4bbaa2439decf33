"""Shared fixtures: a throwaway database on the real PostgreSQL, a state folder, test configs.

Layers: tests/unit (no I/O, seconds), tests/integration (real PostgreSQL, Redis, Mosquitto), tests/fault
(own service instances, kills), tests/browser (Chromium), bench smoke. Select with ``-m``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from tests.support.db import temporary_database
from tests.support.mosquitto import Mosquitto


@pytest.fixture
async def db_dsn() -> AsyncIterator[str]:
    async with temporary_database() as dsn:
        yield dsn


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A private Mosquitto for the test (its own port and persistence folder), which it may stop and restart."""
    with Mosquitto() as b:
        yield b


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """A test that runs a CLI command in-process configures logging; the next test starts from the defaults."""
    yield
    structlog.reset_defaults()
