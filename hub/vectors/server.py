"""Server backend: ``qdrant-client``'s ``AsyncQdrantClient`` against a Qdrant server or cluster.

Never pointed at qdrant-client's local mode in production: that is a brute-force NumPy scan with a
Python payload filter (see ``bench/vectors.py``). Tests may pass a local-mode client to exercise this
code without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hub.vectors.base import (
    Hit,
    Payload,
    PointId,
    UpsertBuffer,
    VectorPoint,
    VectorStoreError,
    as_list,
    check_id,
    hit_id,
)


def server_filter(filter: Payload | None) -> Any:
    if not filter:
        return None
    from qdrant_client import models

    return models.Filter(must=[
        models.FieldCondition(key=key, match=models.MatchValue(value=value)) for key, value in filter.items()
    ])


class QdrantServerStore:
    """Same interface as the embedded store; every write is ``wait=True`` so a flush means durable."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        flush_interval_s: float = 0.2,
        flush_points: int = 128,
        client: Any = None,
    ) -> None:
        self._url = url
        self._api_key = api_key or None
        self._timeout = timeout_s
        self._client = client
        self._owns_client = client is None
        self._dims: dict[str, int] = {}
        self._buffer = UpsertBuffer(
            self._write, name="vectors.server", interval_s=flush_interval_s, max_points=flush_points
        )

    async def start(self) -> None:
        if self._client is None:
            from qdrant_client import AsyncQdrantClient

            self._client = AsyncQdrantClient(url=self._url, api_key=self._api_key, timeout=int(self._timeout))
        self._buffer.start()

    async def stop(self) -> None:
        try:
            await self._buffer.stop()
        finally:
            if self._client is not None and self._owns_client:
                await self._client.close()
                self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise VectorStoreError("vector store not started")
        return self._client

    async def ensure_collection(self, name: str, dim: int, *, keyword_fields: Sequence[str] = ()) -> None:
        from qdrant_client import models

        try:
            if not await self.client.collection_exists(name):
                await self.client.create_collection(
                    name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
                )
            else:
                info = await self.client.get_collection(name)
                have = info.config.params.vectors
                size = getattr(have, "size", None)
                if size is not None and size != dim:
                    raise VectorStoreError(f"collection {name!r} has dim {size}, not {dim}")
            for key in keyword_fields:
                await self.client.create_payload_index(
                    name, field_name=key, field_schema=models.PayloadSchemaType.KEYWORD
                )
        except VectorStoreError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"qdrant {self._url}: ensure {name!r}: {exc}") from exc
        self._dims[name] = dim

    async def drop_collection(self, name: str) -> None:
        self._buffer.discard(name)
        self._dims.pop(name, None)
        try:
            await self.client.delete_collection(name)
        except Exception as exc:
            raise VectorStoreError(f"qdrant {self._url}: drop {name!r}: {exc}") from exc

    async def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        dim = self._dims.get(collection)
        if dim is None:
            raise VectorStoreError(f"collection {collection!r} not opened (call ensure_collection)")
        for p in points:
            check_id(p.id)
            if len(p.vector) != dim:
                raise VectorStoreError(f"{collection}: vector of {len(p.vector)} dims, expected {dim}")
        self._buffer.add(collection, points)

    async def _write(self, collection: str, points: list[VectorPoint]) -> None:
        from qdrant_client import models

        await self.client.upsert(
            collection,
            points=[models.PointStruct(id=check_id(p.id), vector=as_list(p.vector), payload=p.payload)
                    for p in points],
            wait=True,
        )

    async def flush(self) -> None:
        await self._buffer.flush()

    async def search(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        limit: int = 5,
        filter: Payload | None = None,
    ) -> list[Hit]:
        try:
            res = await self.client.query_points(
                collection, query=as_list(vector), limit=limit, query_filter=server_filter(filter),
                with_payload=True,
            )
        except Exception as exc:
            raise VectorStoreError(f"qdrant {self._url}: search {collection!r}: {exc}") from exc
        return [Hit(hit_id(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    async def delete(self, collection: str, ids: Sequence[PointId]) -> None:
        if not ids:
            return
        from qdrant_client import models

        ids = [check_id(i) for i in ids]
        self._buffer.discard(collection, ids)
        try:
            await self.client.delete(collection, points_selector=models.PointIdsList(points=ids), wait=True)
        except Exception as exc:
            raise VectorStoreError(f"qdrant {self._url}: delete from {collection!r}: {exc}") from exc

    async def delete_below(self, collection: str, field: str, value: float) -> None:
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key=field, range=models.Range(lt=value))])
        try:
            await self.client.delete(collection, points_selector=models.FilterSelector(filter=flt), wait=True)
        except Exception as exc:
            raise VectorStoreError(f"qdrant {self._url}: delete_below in {collection!r}: {exc}") from exc

    async def count(self, collection: str) -> int:
        try:
            return int((await self.client.count(collection, exact=True)).count)
        except Exception as exc:
            raise VectorStoreError(f"qdrant {self._url}: count {collection!r}: {exc}") from exc
