"""Throwaway databases on the machine's real PostgreSQL (one per test or module), dropped afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_DSN = os.environ.get("KITT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(database: str, admin_dsn: str = ADMIN_DSN) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def create_database(admin_dsn: str = ADMIN_DSN, prefix: str = "kitt_test") -> str:
    """Create ``<prefix>_<uuid>``; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_for(name, admin_dsn)


async def drop_database(dsn: str, admin_dsn: str = ADMIN_DSN) -> None:
    """Drop the database of ``dsn`` even if connections linger."""
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def temporary_database(prefix: str = "kitt_test") -> AsyncIterator[str]:
    """Yield the DSN of a new, empty database; drop it on exit."""
    dsn = await create_database(prefix=prefix)
    try:
        yield dsn
    finally:
        await drop_database(dsn)


@contextmanager
def temp_database_sync(prefix: str = "kitt_test") -> Iterator[str]:
    """The same for synchronous (module-scoped) fixtures: each step runs on its own short event loop."""
    dsn = asyncio.run(create_database(prefix=prefix))
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(dsn))


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a connection of its own (the test's view of the database, outside the hub's pool)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()
