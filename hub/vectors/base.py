"""The vector store interface, its value types and the upsert buffer every backend owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hub.aio import wait_event
from hub.errors import KittError

log = logging.getLogger(__name__)

PointId = int | str
Payload = dict[str, Any]


class VectorStoreError(KittError):
    """A vector backend call failed (wrapped driver error) or the store was misused."""


@dataclass(frozen=True, slots=True)
class VectorPoint:
    id: PointId
    vector: np.ndarray | Sequence[float]
    payload: Payload = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    id: PointId
    score: float
    payload: Payload


def check_id(point_id: PointId) -> PointId:
    """Qdrant accepts unsigned ints and UUIDs only; say so at the call site, not deep in the driver."""
    if isinstance(point_id, int) and not isinstance(point_id, bool) and point_id >= 0:
        return point_id
    if isinstance(point_id, str):
        with contextlib.suppress(ValueError):  # not a UUID: refused below with the reason
            return str(uuid.UUID(point_id))
    raise VectorStoreError(f"point id must be an unsigned int or a UUID string, got {point_id!r}")


def hit_id(raw: object) -> PointId:
    """Drivers hand back ``uuid.UUID`` objects; callers compare with the strings they stored."""
    return raw if isinstance(raw, int) else str(raw)


def as_list(vector: np.ndarray | Sequence[float]) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


@runtime_checkable
class VectorStore(Protocol):
    """Collections of fixed-dimension cosine vectors with a JSON payload. Writes are buffered."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ensure_collection(self, name: str, dim: int, *, keyword_fields: Sequence[str] = ()) -> None: ...
    async def drop_collection(self, name: str) -> None: ...
    async def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None: ...
    async def search(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        limit: int = 5,
        filter: Payload | None = None,
    ) -> list[Hit]: ...
    async def delete(self, collection: str, ids: Sequence[PointId]) -> None: ...
    async def delete_below(self, collection: str, field: str, value: float) -> None: ...
    async def count(self, collection: str) -> int: ...
    async def flush(self) -> None: ...


WriteFn = Callable[[str, list[VectorPoint]], Awaitable[None]]


class UpsertBuffer:
    """Collects upserts per collection; writes them every ``interval_s`` or at ``max_points``.

    A failed write is logged and its points go back to the front of the buffer (so nothing is lost
    silently); once ``max_pending`` points are waiting, ``add`` raises instead of growing without bound.
    """

    def __init__(
        self, write: WriteFn, *, name: str, interval_s: float = 0.2, max_points: int = 128,
        max_pending: int = 100_000,
    ) -> None:
        self._write = write
        self._name = name
        self._interval = interval_s
        self._max_points = max_points
        self._max_pending = max_pending
        self._pending: dict[str, list[VectorPoint]] = {}
        self._lock = asyncio.Lock()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"kitt[{self._name}].upsert-flusher")

    async def stop(self) -> None:
        """Cancel the timer and write what is left (raises if that last write fails)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    def add(self, collection: str, points: Sequence[VectorPoint]) -> None:
        if self.pending + len(points) > self._max_pending:
            raise VectorStoreError(
                f"{self._name}: {self.pending} points waiting to be written "
                f"(last error: {self.last_error!r}); refusing more"
            )
        self._pending.setdefault(collection, []).extend(points)
        if self.pending >= self._max_points:
            self._full.set()

    def discard(self, collection: str, ids: Sequence[PointId] | None = None) -> None:
        """Forget buffered points (a delete or drop must not be undone by a later flush)."""
        if ids is None:
            self._pending.pop(collection, None)
            return
        gone = set(ids)
        if collection in self._pending:
            self._pending[collection] = [p for p in self._pending[collection] if p.id not in gone]

    async def flush(self) -> None:
        async with self._lock:
            batches, self._pending = self._pending, {}
            self._full.clear()
            failure: tuple[str, BaseException] | None = None
            for collection, points in batches.items():
                written = 0
                if failure is None:
                    try:
                        while written < len(points):
                            chunk = points[written : written + self._max_points]
                            await self._write(collection, chunk)
                            written += len(chunk)
                    except Exception as exc:
                        failure = (collection, exc)
                # unwritten points go back in front of anything added meanwhile
                self._pending.setdefault(collection, [])[:0] = points[written:]
                if not self._pending[collection]:
                    del self._pending[collection]
            if failure is not None:
                self.last_error = failure[1]
                raise VectorStoreError(
                    f"{self._name}: upsert to {failure[0]!r} failed: {failure[1]}"
                ) from failure[1]
            self.last_error = None

    async def _loop(self) -> None:
        while True:
            await wait_event(self._full, self._interval)
            if not self._pending:
                continue
            try:
                await self.flush()
            except VectorStoreError as exc:
                log.error("%s; %d points kept for the next try", exc, self.pending)
