"""Conversation memory on top of a VectorStore: remember a turn, recall the nearest ones."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable

import numpy as np

from hub.vectors.base import Hit, Payload, PointId, VectorPoint, VectorStore

MEMORY = "memory"
CACHE = "cache"
MEMORY_FIELDS = ("site", "user")

# what `kitt-hub vectors rebuild` feeds in: one stored turn per row
Row = tuple[PointId, str, Payload]
Embed = Callable[[str], Awaitable[np.ndarray]]


class MemoryStore:
    """The ``memory`` collection: payload ``site``, ``user``, ``time`` (unix seconds), ``text``."""

    def __init__(self, *, store: VectorStore, dim: int = 384, collection: str = MEMORY) -> None:
        self._store = store
        self._dim = dim
        self._collection = collection

    async def start(self) -> None:
        await self._store.ensure_collection(self._collection, self._dim, keyword_fields=MEMORY_FIELDS)

    async def remember(
        self,
        text: str,
        vector: np.ndarray,
        *,
        site: str,
        user: str | None = None,
        at: float | None = None,
        point_id: PointId | None = None,
    ) -> PointId:
        """Buffer one turn (written within the store's flush interval); returns its id."""
        pid = point_id if point_id is not None else str(uuid.uuid4())
        payload: Payload = {"site": site, "user": user or "", "time": time.time() if at is None else at,
                            "text": text}
        await self._store.upsert(self._collection, [VectorPoint(pid, vector, payload)])
        return pid

    async def recall(
        self, vector: np.ndarray, *, site: str | None = None, user: str | None = None, limit: int = 5
    ) -> list[Hit]:
        flt: Payload = {}
        if site is not None:
            flt["site"] = site
        if user is not None:
            flt["user"] = user
        return await self._store.search(self._collection, vector, limit=limit, filter=flt or None)


async def rebuild_vectors(
    store: VectorStore,
    rows: AsyncIterable[Row],
    *,
    embed: Embed,
    collection: str = MEMORY,
    dim: int = 384,
    keyword_fields: tuple[str, ...] = MEMORY_FIELDS,
) -> int:
    """Drop ``collection`` and re-create it from ``rows`` (id, text, payload), embedding each text.

    The payload gets ``text`` added. Returns the number of points written; flushed before returning.
    """
    await store.drop_collection(collection)
    await store.ensure_collection(collection, dim, keyword_fields=keyword_fields)
    n = 0
    async for point_id, text, payload in rows:
        vector = await embed(text)
        await store.upsert(collection, [VectorPoint(point_id, vector, {**payload, "text": text})])
        n += 1
    await store.flush()
    return n
