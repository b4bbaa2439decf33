"""Group commit: callers queue a row and await its commit; one writer task writes whatever queued meanwhile
in one statement. Used by the inbox (persist before acknowledge) and the spine's own audit events.
``RetryingBatches`` is the same without a caller waiting: what it queues is written until it is written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import structlog

from hub.errors import StoreError

log = structlog.get_logger("kitt.spine.batching")
T = TypeVar("T")
RETRY_AFTER_S = 1.0

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


class RetryingBatches(Generic[T]):
    """Items queued while a write runs go into the next write (one statement per batch, no timer); after a
    ``StoreError`` the batch goes back in front and is written again a second later, so nothing is dropped.
    ``after(batch)`` runs once a batch is written. ``run()`` is the writer task's body."""

    def __init__(self, what: str, write: Callable[[list[T]], Awaitable[Any]],
                 after: Callable[[list[T]], None]) -> None:
        self._what = what
        self._write = write
        self._after = after
        self.queued: list[T] = []
        self.writing: list[T] = []
        self._event = asyncio.Event()

    def add(self, items: Iterable[T]) -> None:
        self.queued.extend(items)
        self._event.set()

    def clear(self) -> None:
        self.queued = []
        self.writing = []

    def __bool__(self) -> bool:
        return bool(self.queued or self.writing)

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            batch, self.queued = self.queued, []
            if not batch:
                continue
            self.writing = batch
            try:
                await self._write(batch)
            except StoreError as exc:
                log.error(f"cannot {self._what}; retrying", error=str(exc), items=len(batch))
                self.queued = batch + self.queued
                self.writing = []
                await asyncio.sleep(RETRY_AFTER_S)
                self._event.set()
                continue
            self.writing = []
            self._after(batch)
