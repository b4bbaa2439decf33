"""The PostgreSQL store: one asyncpg pool, awaited writes, the audit trail.

Every write goes through ``write()``/``transaction()``: a failure raises ``StoreWriteError`` to the caller and
counts in ``kitt_db_write_errors_total``. Nothing here swallows an exception.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from hub.errors import StoreDataError, StoreError, StoreWriteError
from hub.metrics import Metrics
from hub.store.appends import IdReserve, appends_for
from hub.store.migrate import migrate

log = structlog.get_logger("kitt.store")

# What a driver call can raise when the database is away or refuses: wrapped into StoreError at this boundary.
# InternalClientError shows up while PostgreSQL restarts ("cannot switch to state …").
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
             asyncpg.exceptions.InternalClientError)

# Connections of the pool for writes committed without waiting for the WAL flush (``write(…, flush=False)``).
UNFLUSHED_POOL_MAX = 4

_EVENT_SQL = """INSERT INTO events (actor, kind, subject, correlation_id, body)
                VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id"""  # $1 actor, $2 kind, $3 subject, $4 corr, $5 body


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """Skip the reset query on every release (one round trip per call saved).

    Safe because nothing here leaves session state on a pooled connection: settings are ``SET LOCAL`` /
    ``set_config(…, true)``, advisory locks are transaction-scoped, LISTEN runs on its own connection. asyncpg
    still rolls back an open transaction and drops listeners before this is called.
    """


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # asyncpg looks up array types it has no built-in codec for on their first use, once per connection (a
    # catalogue query of a few ms): done here, at connect, rather than in the first burst of requests.
    await conn.prepare("SELECT $1::bigint[], $2::int[], $3::smallint[], $4::boolean[], $5::bytea[], $6::uuid[]")


class Store:
    """Owns the pool. ``start()`` connects and migrates; ``stop()`` closes."""

    def __init__(
        self,
        *,
        dsn: str,
        metrics: Metrics,
        pool_min: int = 4,
        pool_max: int = 32,
        command_timeout_s: float = 10.0,
        slow_query_ms: float = 200.0,
        apply_migrations: bool = True,
    ) -> None:
        self._dsn = dsn
        self._metrics = metrics
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._timeout = command_timeout_s
        self._slow_s = slow_query_ms / 1000
        self._apply_migrations = apply_migrations
        self._pool: asyncpg.Pool | None = None
        self._unflushed: asyncpg.Pool | None = None
        self._event_ids = IdReserve(self, "events_id_seq")

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not started")
        return self._pool

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                command_timeout=self._timeout,
                init=self._init_connection,
                reset=_no_session_reset,
            )
            # Its own pool: the setting is the session's, and pooled connections are not reset (see above).
            self._unflushed = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=UNFLUSHED_POOL_MAX,
                command_timeout=self._timeout,
                init=self._init_connection,
                reset=_no_session_reset,
                server_settings={"synchronous_commit": "off"},
            )
        except (OSError, asyncpg.PostgresError) as exc:
            await self.stop()
            raise StoreError(f"cannot connect to the database: {exc}") from exc
        if self._apply_migrations:
            await self.migrate()

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if self._slow_s > 0:
            conn.add_query_logger(self._log_slow_query)

    def _log_slow_query(self, record: Any) -> None:
        if record.elapsed >= self._slow_s:
            self._metrics.db_slow_queries.inc()
            log.warning("slow query", elapsed_ms=round(record.elapsed * 1000, 1), query=record.query[:200])

    async def migrate(self) -> list[int]:
        async with self.pool.acquire() as conn:
            return await migrate(conn)

    async def stop(self) -> None:
        for pool in (self._pool, self._unflushed):
            if pool is not None:
                await pool.close()
        self._pool = self._unflushed = None

    async def ping(self) -> bool:
        """Readiness probe: True when a trivial query round-trips."""
        try:
            async with self.pool.acquire(timeout=2) as conn:
                return await conn.fetchval("SELECT 1", timeout=2) == 1
        except (OSError, asyncpg.PostgresError, StoreError, TimeoutError):
            return False

    # --- reads ---------------------------------------------------------------------------------------

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            return await self.pool.fetch(query, *args)
        except DB_ERRORS as exc:
            raise StoreError(str(exc)) from exc

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        try:
            return await self.pool.fetchrow(query, *args)
        except DB_ERRORS as exc:
            raise StoreError(str(exc)) from exc

    async def fetchval(self, query: str, *args: Any) -> Any:
        try:
            return await self.pool.fetchval(query, *args)
        except DB_ERRORS as exc:
            raise StoreError(str(exc)) from exc

    # --- writes --------------------------------------------------------------------------------------

    def _write_failed(self, exc: BaseException) -> StoreWriteError:
        self._metrics.db_write_errors.inc()
        log.error("database write failed", error=str(exc))
        if isinstance(exc, asyncpg.DataError):
            return StoreDataError(str(exc))
        return StoreWriteError(str(exc) or type(exc).__name__)

    async def write(self, query: str, *args: Any, flush: bool = True) -> str:
        """Execute one statement in its own transaction; raises ``StoreWriteError`` if it did not commit.

        ``flush=False``: committed without waiting for the WAL flush. Back from a hub crash like any commit (it is
        committed when this returns), lost only in a crash of PostgreSQL or the machine within the WAL writer's
        delay. Only for writes whose loss can at worst cause a duplicate delivery or drop derived data: the
        outbox's packet-id stamps and PUBREC marks, memory turns. Never for an inbox row or a state transition.
        """
        try:
            return await self._pool_for(flush).execute(query, *args)
        except DB_ERRORS as exc:
            raise self._write_failed(exc) from exc

    async def write_returning(self, query: str, *args: Any, flush: bool = True) -> asyncpg.Record | None:
        try:
            return await self._pool_for(flush).fetchrow(query, *args)
        except DB_ERRORS as exc:
            raise self._write_failed(exc) from exc

    def _pool_for(self, flush: bool) -> asyncpg.Pool:
        if flush:
            return self.pool
        if self._unflushed is None:
            raise StoreError("store is not started")
        return self._unflushed

    async def write_fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """A write that returns rows (``… RETURNING``)."""
        try:
            return await self.pool.fetch(query, *args)
        except DB_ERRORS as exc:
            raise self._write_failed(exc) from exc

    @asynccontextmanager
    async def transaction(self, *, isolation: str = "read_committed") -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction; a failed commit raises ``StoreWriteError``.

        Domain errors raised by the body (``KittError``) roll back and propagate unchanged.
        """
        try:
            async with self.pool.acquire() as conn, conn.transaction(isolation=isolation):
                yield conn
        except DB_ERRORS as exc:
            raise self._write_failed(exc) from exc

    # --- audit trail ---------------------------------------------------------------------------------

    async def record_event(
        self,
        kind: str,
        *,
        actor: str = "hub",
        subject: str | None = None,
        correlation_id: str | None = None,
        body: Mapping[str, Any] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> int:
        """Append to the audit trail, inside ``conn``'s transaction when given.

        In a grouped spine block (``hub.store.appends``) the row is written with its group, just before the
        COMMIT; the id returned is the one it gets.
        """
        args = (actor, kind, subject, correlation_id, dict(body or {}))
        if conn is not None and (appends := appends_for(conn)) is not None:
            event_id = await self._event_ids.take()
            appends.events.append((event_id, actor, kind, subject, correlation_id, json.dumps(args[4])))
            return event_id
        if conn is not None:
            return await conn.fetchval(_EVENT_SQL, *args)
        row = await self.write_returning(_EVENT_SQL, *args)
        assert row is not None
        return row["id"]

    async def events(
        self,
        *,
        limit: int = 50,
        before_id: int | None = None,
        kind: str | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
    ) -> list[dict[str, Any]]:
        rows = await self.fetch(
            """SELECT id, at, actor, kind, subject, correlation_id, body FROM events
               WHERE ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR kind = $2)
                 AND ($3::text IS NULL OR subject = $3) AND ($4::text IS NULL OR correlation_id = $4)
               ORDER BY id DESC LIMIT $5""",  # $1 before_id, $2 kind, $3 subject, $4 correlation, $5 limit
            before_id, kind, subject, correlation_id, limit,
        )
        return [dict(r) for r in rows]
