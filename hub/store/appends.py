"""Appends deferred to the end of a shared transaction, and ids known before their rows are written.

A spine handler block that shares its transaction with other messages' blocks (``hub.spine.txgroup``) does not
send its audit events and outbox rows one INSERT at a time: they are kept in a ``PendingAppends`` and written
for the whole group in one statement just before its COMMIT. The caller still gets the row's id at once,
because ids come from the table's own sequence, reserved a block at a time (``IdReserve``).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.store.store import Store

# (id, idempotency key, topic, payload, qos, retain, properties json, correlation id, claimed by, packet id,
#  packet session): the packet id when the writer chose it already (``Spine.appending``), else None
OutboxAppend = tuple[int, str, str, bytes, int, bool, str, str | None, str | None, int | None, str | None]
# (id, actor, kind, subject, correlation id, body json)
EventAppend = tuple[int, str, str, str | None, str | None, str]


class PendingAppends:
    """Rows to write at the end of ``conn``'s transaction rather than now."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.outbox: list[OutboxAppend] = []
        self.events: list[EventAppend] = []
        # Set at commit: outbox ids that were not written (their idempotency key existed already).
        self.skipped: frozenset[int] = frozenset()


# The appends of the block running in this task (None: write at once).
pending_appends: contextvars.ContextVar[PendingAppends | None] = contextvars.ContextVar(
    "kitt_pending_appends", default=None)


def appends_for(conn: Any) -> PendingAppends | None:
    """The pending appends of this task's block if it runs on ``conn``, else None."""
    appends = pending_appends.get()
    return appends if appends is not None and appends.conn is conn else None


class IdReserve:
    """Ids from a sequence, fetched ``block`` at a time (gaps after a restart or rollback are harmless)."""

    def __init__(self, store: Store, sequence: str, *, block: int = 512) -> None:
        self._store = store
        self._sequence = sequence
        self._block = block
        self._ids: list[int] = []
        self._lock = asyncio.Lock()

    async def take(self) -> int:
        if not self._ids:
            async with self._lock:
                if not self._ids:
                    rows = await self._store.write_fetch(
                        "SELECT nextval($1::regclass) AS id FROM generate_series(1, $2)", self._sequence,
                        self._block)
                    # Handed out in ascending order (popped from the end).
                    self._ids = sorted((r["id"] for r in rows), reverse=True)
        return self._ids.pop()
