"""Versioned SQL migrations applied once, under a transaction-scoped advisory lock.

Two hubs starting together both wait on the same lock; the second finds every file applied and does
nothing. Files are ``NNNN_name.sql`` in ``hub/store/migrations``, applied in order, each in the same
transaction as its bookkeeping row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger("kitt.store.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# An arbitrary constant: the advisory-lock key that serialises migrations across hubs.
MIGRATION_LOCK_KEY = 0x4B495454_0001


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        head, _, rest = path.stem.partition("_")
        if not head.isdigit():
            continue
        found.append(Migration(int(head), rest, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration versions in {directory}")
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing; returns the versions applied by this call."""
    migrations = discover() if migrations is None else migrations
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {r["version"]: r["checksum"] for r in rows}
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    log.warning("migration changed after it was applied", version=m.version, name=m.name)
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version, m.name, m.checksum,
            )
            applied_now.append(m.version)
            log.info("migration applied", version=m.version, name=m.name)
    return applied_now
