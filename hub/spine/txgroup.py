"""Group commit for handler transactions: many ``Spine.handling()`` blocks share one database transaction.

One transaction per message costs BEGIN, COMMIT and the pool's reset query on top of the handler's own
statements, and one WAL flush each. Under load the spine instead runs blocks one after another on a *lane*
(a connection it keeps, with an open transaction):

    BEGIN
    …block 1's statements (outbox row, audit event)…
    …block 2's statements…
    UPDATE inbox SET state = 'done' … WHERE id = ANY('{17,18}') AND state = 'pending' RETURNING id
    COMMIT                                   -- when no block waits for the lane, or the group is full

Each message's effects and its ``done`` mark are in one transaction (the group's), so they commit or roll
back together. The marks go in one statement at the end of the group; if a row was no longer pending (a
redelivery handled elsewhere meanwhile), the group rolls back: that block gets ``Finished`` (its message was
handled already) and the others ``GroupAborted``. Blocks have no savepoint of their own either (that would
add statements per message): when a block raises, the whole group rolls back and every other block of it
gets ``GroupAborted``. The spine runs those handlers again (their rows are still pending, so that is safe).
A block's ``handling()`` returns only after the COMMIT, so nothing is published or acknowledged before it is
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
from typing import Any

import asyncpg
import structlog

from hub.errors import KittError, StoreWriteError
from hub.store import Store

log = structlog.get_logger("kitt.spine.txgroup")

MAX_BLOCKS = 64
_DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

_FINISH_SQL = """UPDATE inbox SET state = 'done', finished_at = now(), attempts = attempts + 1
                 WHERE id = ANY($1::bigint[]) AND state = 'pending' RETURNING id"""  # $1 inbox ids


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


class _Lane:
    """One connection with an open transaction, serving blocks one at a time."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self.name = name
        self.lock = asyncio.Lock()
        self.waiting = 0
        self._conn: Any = None
        self._tx: asyncpg.transaction.Transaction | None = None
        self._blocks: list[tuple[int | None, asyncio.Future[None]]] = []

    async def open_block(self) -> asyncpg.Connection:
        if self._conn is None:
            # Kept across groups: no pool round trip (and no reset query) per transaction.
            self._conn = await self._store.pool.acquire()
        if self._tx is None:
            self._tx = self._conn.transaction()
            await self._tx.start()
        return self._conn

    def block_done(self, inbox_id: int | None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._blocks.append((inbox_id, fut))
        return fut

    @property
    def full(self) -> bool:
        return len(self._blocks) >= MAX_BLOCKS

    async def commit(self) -> None:
        """Mark the group's rows done and COMMIT (roll back when it has no block to keep)."""
        blocks, self._blocks = self._blocks, []
        tx, self._tx = self._tx, None
        if tx is None:
            return
        try:
            if not blocks:
                await tx.rollback()
                return
            ids = [row for row, _ in blocks if row is not None]
            marked = {r["id"] for r in await self._conn.fetch(_FINISH_SQL, ids)} if ids else set()
            if len(marked) != len(ids):
                # A row was no longer pending (or came twice): its effects must not commit, so none do.
                await tx.rollback()
                self._fail_stale(blocks, marked)
                return
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
        tx, self._tx = self._tx, None
        if tx is not None:
            try:
                await tx.rollback()
            except _DRIVER_ERRORS as exc:
                log.warning("rollback failed; dropping the lane's connection", lane=self.name, error=str(exc))
                await self._drop_connection()
        self._fail([fut for _, fut in blocks], reason)

    @staticmethod
    def _fail(blocks: list[asyncio.Future[None]], reason: str) -> None:
        for fut in blocks:
            if not fut.done():
                fut.set_exception(GroupAborted(reason))

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
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
        conn, self._conn = self._conn, None
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
        # A free lane if there is one (rotating, so all lanes warm up), else the one with the shortest queue.
        start = next(self._rr)
        ordered = self._lanes[start:] + self._lanes[:start]
        for lane in ordered:
            if not lane.lock.locked():
                return lane
        return min(ordered, key=lambda lane: lane.waiting)

    @asynccontextmanager
    async def block(self, inbox_id: int | None) -> AsyncIterator[asyncpg.Connection]:
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
            done = lane.block_done(inbox_id)
        finally:
            # The group ends when nobody waits for this lane (or it is full): whoever leaves last commits.
            try:
                if lane.waiting == 0 or lane.full:
                    await lane.commit()
            finally:
                lane.lock.release()
        await done

    async def close(self) -> None:
        for lane in self._lanes:
            async with lane.lock:
                await lane.close()
