"""Conversation memory: each turn is a row in PostgreSQL (the truth) and a point in the vector ``memory``
collection (derived: ``kitt-hub vectors rebuild`` re-creates it from the rows)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from hub.store import Store
from hub.vectors import MemoryStore, VectorStore, rebuild_vectors
from hub.vectors.base import Hit

_INSERT_SQL = "INSERT INTO memories (id, text, site, username) VALUES ($1, $2, $3, $4) RETURNING extract(epoch FROM at)"
# $1 id, $2 text, $3 site, $4 user


class Memory:
    """``services.memory``: the same ``remember``/``recall`` as the vector-only MemoryStore, written through."""

    def __init__(self, *, store: Store, vectors: MemoryStore) -> None:
        self._store = store
        self._vectors = vectors

    async def remember(self, text: str, vector: np.ndarray, *, site: str, user: str | None = None) -> str:
        point_id = str(uuid.uuid4())
        # A turn lost in a crash of PostgreSQL itself is acceptable (memory is best effort); a flush wait is not.
        row = await self._store.write_returning(_INSERT_SQL, uuid.UUID(point_id), text, site, user,
                                                 flush=False)
        assert row is not None
        await self._vectors.remember(text, vector, site=site, user=user, at=float(row[0]), point_id=point_id)
        return point_id

    async def recall(self, vector: np.ndarray, *, site: str | None = None, user: str | None = None,
                     limit: int = 5) -> list[Hit]:
        return await self._vectors.recall(vector, site=site, user=user, limit=limit)


async def memory_rows(store: Store, batch: int = 500) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """Every stored turn as (id, text, payload), in time order, a page at a time."""
    after = None
    while True:
        rows = await store.fetch(
            """SELECT id, text, site, username, extract(epoch FROM at) AS t FROM memories
               WHERE $1::uuid IS NULL OR (at, id) > ((SELECT at FROM memories WHERE id = $1), $1)
               ORDER BY at, id LIMIT $2""", after, batch)  # $1 last id seen, $2 page size
        if not rows:
            return
        for r in rows:
            yield str(r["id"]), r["text"], {"site": r["site"], "user": r["username"] or "", "time": float(r["t"])}
        after = rows[-1]["id"]


async def rebuild_memory(store: Store, vectors: VectorStore, embed: Any, dim: int = 384) -> int:
    """Drop and re-create the vector ``memory`` collection from the ``memories`` table."""
    return await rebuild_vectors(vectors, memory_rows(store), embed=embed, dim=dim)
