"""Group commit for handler transactions: many ``Spine.handling()`` blocks share one database transaction.

One transaction per message costs BEGIN, COMMIT and the pool's reset query on top of the handler's own
statements, and one WAL flush each. Under load the spine instead runs blocks one after another on a *lane*
(a connection it keeps), and ends the group with one statement:

    WITH ob AS (INSERT INTO outbox … unnest(…)), ev AS (INSERT INTO events … unnest(…)),
         fin AS (UPDATE inbox SET state = 'done' … WHERE id = ANY('{17,18}') AND state = 'pending' RETURNING id)
    SELECT … (aborts itself unless every row was still pending)

The blocks' outbox rows and audit events are appended (``hub.store.appends``) and written with the done marks
in that statement, so a typical block costs no round trip of its own, and a group whose blocks only appended
needs no BEGIN and no COMMIT either: the statement is its own transaction. A block that sends a statement
itself (``conn.fetch…``) first opens the group's transaction (BEGIN, once per group), and the group then ends
with the statement and a COMMIT. Either way each message's effects and its ``done`` mark commit or roll back
together.

If a row was no longer pending (a redelivery handled elsewhere meanwhile), the statement aborts itself and
nothing of the group commits: that block gets ``Finished`` (its message was handled already) and the others
``GroupAborted``. Blocks have no savepoint of their own either (that would add statements per message): when
a block raises, the whole group rolls back and every other block of it gets ``GroupAborted``. The spine runs
those handlers again, each in a transaction of its own (their rows are still pending, so that is safe). A
block's ``handling()`` returns only after the commit, so nothing is published or acknowledged before it is
durable. A nested ``conn.transaction()`` inside a block is a savepoint and works as usual.

Only short blocks are grouped: a block that waits on the network (an LLM call inside ``handling()``) would
hold its lane and keep the blocks before it from committing. ``GroupPolicy`` watches each route's block
times and sends a route to the lanes only while its recent blocks were all short (``Route.grouped``
overrides it); other blocks get a transaction of their own, as before.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, get_args

import asyncpg
import structlog

from hub.errors import KittError, StoreWriteError
from hub.spine.outbox import CLAIM_SECONDS as OUTBOX_CLAIM_SECONDS
from hub.store import Store
from hub.store.appends import EventAppend, OutboxAppend, PendingAppends

log = structlog.get_logger("kitt.spine.txgroup")

MAX_BLOCKS = 64
_DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

def append_ctes(first: int, *, only_if: str | None = None) -> str:
    """The CTEs ``ob`` (outbox rows, RETURNING the ids written) and ``ev`` (audit events) that write appended
    rows, their parameters numbered from ``$first`` (``APPEND_PARAMS`` of them, ``append_args``). With
    ``only_if`` (the name of a CTE of the same statement), they write only if that CTE returned a row."""
    p = [f"${first + i}" for i in range(APPEND_PARAMS)]
    cond = f" WHERE EXISTS (SELECT 1 FROM {only_if})" if only_if else ""
    return f"""ob AS (
    INSERT INTO outbox (id, idempotency_key, topic, payload, qos, retain, properties, correlation_id, claimed_by,
                        packet_id, packet_session, claimed_until)
    SELECT i, k, t, p, q, r, pr::jsonb, c, cb, pid, ps,
           CASE WHEN cb IS NULL THEN NULL ELSE now() + make_interval(secs => {p[11]}) END
    FROM unnest({p[0]}::bigint[], {p[1]}::text[], {p[2]}::text[], {p[3]}::bytea[], {p[4]}::smallint[],
                {p[5]}::boolean[], {p[6]}::text[], {p[7]}::text[], {p[8]}::text[], {p[9]}::int[], {p[10]}::text[])
         AS x(i, k, t, p, q, r, pr, c, cb, pid, ps){cond}
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id),
ev AS (
    INSERT INTO events (id, actor, kind, subject, correlation_id, body)
    SELECT i, a, k, s, c, b::jsonb
    FROM unnest({p[12]}::bigint[], {p[13]}::text[], {p[14]}::text[], {p[15]}::text[], {p[16]}::text[],
                {p[17]}::text[]) AS y(i, a, k, s, c, b){cond})"""


APPEND_PARAMS = 18  # 11 outbox columns, the claim seconds, 6 event columns

# One statement at the end of a group: its appended outbox rows and events, and the done marks.
_FLUSH_SQL = f"""
WITH {append_ctes(1)},
fin AS (
    UPDATE inbox SET state = 'done', finished_at = now(), attempts = attempts + 1
    WHERE id = ANY(${APPEND_PARAMS + 1}::bigint[]) AND state = 'pending' RETURNING id)
SELECT ARRAY(SELECT id FROM ob) AS written
WHERE CASE WHEN (SELECT count(*) FROM fin) = cardinality(${APPEND_PARAMS + 1}::bigint[]) THEN true
           ELSE kitt_abort_statement('an inbox row of the group was no longer pending') END
"""  # the appends, then the inbox ids; CASE, not OR: evaluated in order
STALE_SQLSTATE = "KT001"  # raised by kitt_abort_statement (migration 0060)
_PENDING_SQL = "SELECT id FROM inbox WHERE id = ANY($1::bigint[]) AND state = 'pending'"
# The connection methods that send a statement: a grouped block's first one opens the group's transaction.
_STATEMENTS = frozenset({"execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany", "prepare",
                         "copy_records_to_table", "copy_to_table", "copy_from_table", "copy_from_query"})


def _columns(rows: list[tuple[Any, ...]], row_type: Any) -> list[list[Any]]:
    """Rows as one array per column (for ``unnest``); as many empty arrays as the row type has fields."""
    if not rows:
        return [[] for _ in get_args(row_type)]
    return [list(col) for col in zip(*rows, strict=True)]


def append_args(appends: list[PendingAppends]) -> list[object]:
    """The ``APPEND_PARAMS`` values of ``append_ctes`` for these appends."""
    outbox = [row for a in appends for row in a.outbox]
    events = [row for a in appends for row in a.events]
    return [*_columns(outbox, OutboxAppend), float(OUTBOX_CLAIM_SECONDS), *_columns(events, EventAppend)]


def mark_skipped(appends: list[PendingAppends], written: set[int]) -> None:
    """Outbox rows not written (their idempotency key existed already): not to publish."""
    for a in appends:
        a.skipped = frozenset(row[0] for row in a.outbox if row[0] not in written)


def _flush_args(appends: list[PendingAppends], ids: list[int]) -> list[object]:
    return [*append_args(appends), ids]


async def flush_appends(conn: asyncpg.Connection, appends: PendingAppends) -> None:
    """Write one transaction's deferred appends in one statement (before its COMMIT); rows whose idempotency key
    existed already are not written, and land in ``appends.skipped`` (not to publish)."""
    if not appends.outbox and not appends.events:
        return
    mark_skipped([appends], set(await conn.fetchval(_FLUSH_SQL, *_flush_args([appends], []))))


# A route's blocks go to the lanes once this many in a row took at most SHORT_BLOCK_S each.
SHORT_BLOCK_S = 0.05
PROOF_BLOCKS = 8


class GroupPolicy:
    """Which blocks may share a transaction: by route, from how long its recent blocks took."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}

    def grouped(self, route: str | None, override: bool | None) -> bool:
        if override is not None:
            return override
        recent = self._recent.get(route) if route is not None else None
        return recent is not None and len(recent) == PROOF_BLOCKS and max(recent) <= SHORT_BLOCK_S

    def record(self, route: str | None, seconds: float) -> None:
        if route is not None:
            self._recent.setdefault(route, deque(maxlen=PROOF_BLOCKS)).append(seconds)


class Finished(KittError):
    """The inbox row was no longer pending (its message was handled elsewhere): nothing of the block committed."""


class GroupAborted(StoreWriteError):
    """Another block of the same group failed (or the commit did): nothing of this block was committed."""


class _GroupConnection:
    """The connection a grouped block sees: the lane's, with the group's BEGIN sent before its first statement."""

    __slots__ = ("_lane",)

    def __init__(self, lane: _Lane) -> None:
        self._lane = lane

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._lane.conn, name)
        if name not in _STATEMENTS:
            return target

        async def statement(*args: Any, **kwargs: Any) -> Any:
            await self._lane.begin()
            return await target(*args, **kwargs)

        return statement

    def transaction(self, **kwargs: Any) -> _Savepoint:
        return _Savepoint(self._lane, kwargs)


class _Savepoint:
    """``conn.transaction()`` inside a grouped block: a savepoint in the group's transaction."""

    def __init__(self, lane: _Lane, kwargs: dict[str, Any]) -> None:
        self._lane = lane
        self._kwargs = kwargs
        self._tx: asyncpg.transaction.Transaction | None = None

    async def __aenter__(self) -> _Savepoint:
        await self._lane.begin()
        self._tx = self._lane.conn.transaction(**self._kwargs)
        await self._tx.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._tx is not None
        await self._tx.__aexit__(*exc)


class _Lane:
    """One kept connection serving blocks one at a time; a group's transaction is begun only if needed."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self.name = name
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.collecting = False  # its last block is done and it waits one loop turn for more before committing
        self.conn: Any = None
        self._view = _GroupConnection(self)
        self._tx: asyncpg.transaction.Transaction | None = None
        self._blocks: list[tuple[int | None, asyncio.Future[None]]] = []
        self._appends: list[PendingAppends] = []

    async def open_block(self) -> Any:
        if self.conn is None:
            # Kept across groups: no pool round trip (and no reset query) per transaction.
            self.conn = await self._store.pool.acquire()
        return self._view

    async def begin(self) -> None:
        """The group's transaction, begun before the first statement a block sends itself."""
        if self._tx is None:
            tx = self.conn.transaction()
            await tx.start()
            self._tx = tx

    def block_done(self, inbox_id: int | None, appends: PendingAppends | None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._blocks.append((inbox_id, fut))
        if appends is not None and (appends.outbox or appends.events):
            self._appends.append(appends)
        return fut

    @property
    def full(self) -> bool:
        return len(self._blocks) >= MAX_BLOCKS

    async def commit(self) -> None:
        """Write the group's appends and done marks (one statement) and commit; roll back if there is no block."""
        blocks, self._blocks = self._blocks, []
        appends, self._appends = self._appends, []
        tx, self._tx = self._tx, None
        if not blocks:
            if tx is not None:
                await self._rollback(tx)
            return
        ids = [row for row, _ in blocks if row is not None]
        try:
            if ids or appends:
                try:
                    written = set(await self.conn.fetchval(_FLUSH_SQL, *_flush_args(appends, ids)))
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate != STALE_SQLSTATE:
                        raise
                    # A row was no longer pending (or came twice): its effects must not commit, so none do.
                    if tx is not None:
                        await tx.rollback()
                    pending = {r["id"] for r in await self.conn.fetch(_PENDING_SQL, ids)}
                    self._fail_stale(blocks, pending)
                    return
                mark_skipped(appends, written)
            if tx is not None:
                await tx.commit()
        except _DRIVER_ERRORS as exc:
            log.error("group commit failed; its messages stay pending and are retried", lane=self.name,
                      blocks=len(blocks), error=str(exc))
            await self._drop_connection()
            self._fail([fut for _, fut in blocks], f"group commit failed: {exc}")
            return
        for _, fut in blocks:
            if not fut.done():
                fut.set_result(None)

    async def _rollback(self, tx: asyncpg.transaction.Transaction) -> None:
        try:
            await tx.rollback()
        except _DRIVER_ERRORS as exc:
            log.warning("rollback failed; dropping the lane's connection", lane=self.name, error=str(exc))
            await self._drop_connection()

    def _fail_stale(self, blocks: list[tuple[int | None, asyncio.Future[None]]], marked: set[int]) -> None:
        seen: set[int] = set()
        for row, fut in blocks:
            if fut.done():
                continue
            if row is not None and (row not in marked or row in seen):
                fut.set_exception(Finished(f"inbox row {row} already finished"))
            else:
                fut.set_exception(GroupAborted("another message of the group was handled already"))
            if row is not None:
                seen.add(row)

    async def abort(self, reason: str) -> None:
        """Roll the group back: every block of it fails with ``GroupAborted``."""
        blocks, self._blocks = self._blocks, []
        self._appends = []
        tx, self._tx = self._tx, None
        if tx is not None:
            await self._rollback(tx)
        self._fail([fut for _, fut in blocks], reason)

    @staticmethod
    def _fail(blocks: list[asyncio.Future[None]], reason: str) -> None:
        for fut in blocks:
            if not fut.done():
                fut.set_exception(GroupAborted(reason))

    async def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        self._tx = None
        if conn is None:
            return
        try:
            # Terminated, not reused: its protocol state is unknown.
            conn.terminate()
            await self._store.pool.release(conn)
        except _DRIVER_ERRORS as exc:
            log.warning("could not return a lane connection to the pool", lane=self.name, error=str(exc))

    async def close(self) -> None:
        await self.commit()
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await self._store.pool.release(conn)
            except _DRIVER_ERRORS as exc:
                log.warning("could not return a lane connection to the pool", lane=self.name, error=str(exc))


class TransactionGroups:
    """``async with groups.block(inbox_id) as conn``: a place in a shared transaction, on the freest lane."""

    def __init__(self, *, store: Store, lanes: int = 4) -> None:
        self._store = store
        self._lanes = [_Lane(store, f"lane{i}") for i in range(max(1, lanes))]
        self._rr = itertools.cycle(range(len(self._lanes)))

    def _pick(self) -> _Lane:
        # A lane about to commit joins this block to its group; else a free lane (rotating, so all lanes warm
        # up); else the one with the shortest queue.
        for lane in self._lanes:
            if lane.collecting and not lane.full:
                return lane
        start = next(self._rr)
        ordered = self._lanes[start:] + self._lanes[:start]
        for lane in ordered:
            if not lane.lock.locked():
                return lane
        return min(ordered, key=lambda lane: lane.waiting)

    @asynccontextmanager
    async def block(self, inbox_id: int | None,
                    appends: PendingAppends | None = None) -> AsyncIterator[asyncpg.Connection]:
        lane = self._pick()
        lane.waiting += 1
        try:
            await lane.lock.acquire()
        finally:
            lane.waiting -= 1
        done: asyncio.Future[None] | None = None
        try:
            try:
                conn = await lane.open_block()
            except _DRIVER_ERRORS as exc:
                await lane.abort(f"lane failed: {exc}")
                raise StoreWriteError(str(exc) or type(exc).__name__) from exc
            try:
                yield conn
            except BaseException as exc:
                # Without a savepoint per block, this block's statements go only with the whole group.
                await lane.abort(f"another message of the group failed: {type(exc).__name__}")
                raise
            done = lane.block_done(inbox_id, appends)
        finally:
            # The group ends when nobody waits for this lane (or it is full): whoever leaves last commits.
            try:
                if lane.waiting == 0 and not lane.full:
                    # Blocks made ready in this same loop turn (one inbox batch's handlers) join the group
                    # rather than start groups of their own on other lanes.
                    lane.collecting = True
                    try:
                        await asyncio.sleep(0)
                    finally:
                        lane.collecting = False
                if lane.waiting == 0 or lane.full:
                    await lane.commit()
            finally:
                lane.lock.release()
        await done

    async def close(self) -> None:
        for lane in self._lanes:
            async with lane.lock:
                await lane.close()
