"""Group commit: callers queue a row and await its commit; one writer task writes whatever queued meanwhile
in one statement. Used by the inbox (persist before acknowledge) and the spine's own audit events."""

from __future__ import annotations

import asyncio
from typing import Any

from hub.errors import StoreError

# An item is a tuple of column values whose last element is the caller's future.
Item = tuple[Any, ...]


class GroupCommitter:
    """Owns the queue and the writer task; a subclass says how one batch is written (``_commit``)."""

    task_name = "kitt[spine].group-commit"
    what = "writer"

    def __init__(self, *, max_batch: int) -> None:
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._writer(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        pending = []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        self._fail(pending, StoreError(f"{self.what} stopped before commit"))

    async def _submit(self, *values: Any) -> Any:
        """Queue one row and wait until its batch committed (``StoreError`` if it did not)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((*values, fut))
        return await fut

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[Item]) -> None:
        raise NotImplementedError

    @staticmethod
    def _fail(batch: list[Item], exc: BaseException) -> None:
        for item in batch:
            if not item[-1].done():
                item[-1].set_exception(exc)

    @staticmethod
    def _resolve(item: Item, value: Any = None) -> None:
        if not item[-1].done():
            item[-1].set_result(value)
