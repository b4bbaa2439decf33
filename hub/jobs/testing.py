"""Helpers for tests and benchmarks: a throwaway database on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def dsn_for(admin_dsn: str, database: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def create_database(admin_dsn: str = DEFAULT_ADMIN_DSN, prefix: str = "kitt_test") -> str:
    """Create ``<prefix>_<uuid>``; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return dsn_for(admin_dsn, name)


async def drop_database(dsn: str, admin_dsn: str = DEFAULT_ADMIN_DSN) -> None:
    """Drop the database of ``dsn`` even if connections linger."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def temp_database(admin_dsn: str = DEFAULT_ADMIN_DSN, prefix: str = "kitt_test") -> AsyncIterator[str]:
    dsn = await create_database(admin_dsn, prefix)
    try:
        yield dsn
    finally:
        await drop_database(dsn, admin_dsn)


@contextmanager
def temp_database_sync(admin_dsn: str = DEFAULT_ADMIN_DSN, prefix: str = "kitt_test") -> Iterator[str]:
    """The same for synchronous (module-scoped) fixtures: each step runs on its own short event loop."""
    dsn = asyncio.run(create_database(admin_dsn, prefix))
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(dsn, admin_dsn))
