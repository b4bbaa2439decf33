"""Audit events the spine writes itself (rejections, handler failures), group-committed.

A flood of bad input must not turn into one transaction per message: concurrent events go into one
multi-row INSERT. Each caller still awaits its own commit (a failed write raises ``StoreError``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hub.errors import StoreError
from hub.store import Store

_INSERT_SQL = """
INSERT INTO events (actor, kind, subject, correlation_id, body)
SELECT a, k, s, c, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(a, k, s, c, b)
"""  # $1 actors, $2 kinds, $3 subjects, $4 correlation ids, $5 bodies (json text)

_Item = tuple[str, str, str | None, str | None, str, "asyncio.Future[None]"]


class AuditWriter:
    def __init__(self, *, store: Store, max_batch: int = 512) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._writer(), name="kitt[spine].audit-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while not self._queue.empty():
            *_, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreError("audit writer stopped before commit"))

    async def record(self, kind: str, *, actor: str, subject: str | None = None, correlation_id: str | None = None,
                     body: dict[str, Any] | None = None) -> None:
        if self._task is None:
            raise StoreError("audit writer is not running")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((actor, kind, subject, correlation_id, json.dumps(body or {}), fut))
        await fut

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._store.write(_INSERT_SQL, *([item[i] for item in batch] for i in range(5)))
            except StoreError as exc:
                for item in batch:
                    if not item[5].done():
                        item[5].set_exception(exc)
                continue
            for item in batch:
                if not item[5].done():
                    item[5].set_result(None)
