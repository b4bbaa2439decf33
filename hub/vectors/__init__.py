"""Vector memory: one small interface (:class:`VectorStore`), an embedded and a server backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hub.vectors.base import Hit, Payload, PointId, UpsertBuffer, VectorPoint, VectorStore, VectorStoreError
from hub.vectors.edge import EdgeVectorStore
from hub.vectors.memory import CACHE, MEMORY, MemoryStore, Row, rebuild_vectors
from hub.vectors.server import QdrantServerStore

__all__ = [
    "CACHE",
    "MEMORY",
    "EdgeVectorStore",
    "Hit",
    "MemoryStore",
    "Payload",
    "PointId",
    "QdrantServerStore",
    "Row",
    "UpsertBuffer",
    "VectorPoint",
    "VectorStore",
    "VectorStoreError",
    "open_vector_store",
    "rebuild_vectors",
]


def open_vector_store(*, url: str, api_key: str | None, state_dir: str | Path,
                      idle: Callable[[], bool] | None = None) -> VectorStore:
    """``vectors.url`` empty → embedded Qdrant Edge in ``state_dir/vectors``; else a Qdrant server.

    ``idle`` (the spine's "quiet for a while"): embedded index builds wait for it.
    """
    if url:
        return QdrantServerStore(url=url, api_key=api_key)
    return EdgeVectorStore(path=Path(state_dir) / "vectors", idle=idle)
