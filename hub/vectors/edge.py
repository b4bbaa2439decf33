"""Embedded backend: one Qdrant Edge shard (in-process Rust HNSW, on disk) per collection.

Every shard call runs on one writer thread (writes, flushes, index builds) or the default executor
(searches), never on the event loop. Found while building this: ``EdgeShard.optimize()`` (the HNSW
build) holds the GIL for its whole run (about 0.2 s per 2k new points on the dev box, several
seconds for a 20k-point bulk load), so small ``indexing_threshold_kb`` keeps each build short; bulk
rebuilds belong to `kitt-hub vectors rebuild`, not the serving process.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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

log = logging.getLogger(__name__)


def _edge() -> Any:
    import qdrant_edge

    return qdrant_edge


def edge_filter(filter: Payload | None) -> Any:
    """Payload equality → a Qdrant Edge ``Filter`` (``None`` when empty)."""
    if not filter:
        return None
    qe = _edge()
    return qe.Filter(must=[qe.FieldCondition(key, match=qe.MatchValue(value)) for key, value in filter.items()])


class EdgeVectorStore:
    """Collections under ``path/<name>/``; HNSW built in the background once enough points are new."""

    def __init__(
        self,
        *,
        path: str | Path,
        flush_interval_s: float = 0.2,
        flush_points: int = 128,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        full_scan_threshold_kb: int = 1000,
        indexing_threshold_kb: int = 2000,
        max_segment_size_kb: int = 64_000,
        search_threads: int = 1,
        hnsw_ef: int | None = None,
        auto_optimize: bool = True,
        idle: Callable[[], bool] | None = None,
        idle_check_s: float = 2.0,
    ) -> None:
        self._path = Path(path)
        self._hnsw = (hnsw_m, hnsw_ef_construct, full_scan_threshold_kb)
        self._optim = (indexing_threshold_kb, max_segment_size_kb)
        self._search_threads = search_threads
        self._hnsw_ef = hnsw_ef
        self._auto_optimize = auto_optimize  # off for bulk loads that call optimize() once at the end
        # With ``idle``, index builds (which hold the GIL, stalling the event loop) wait for a quiet moment
        # instead of running inside the write that crossed the threshold; searches scan the few unindexed
        # points meanwhile.
        self._idle = idle
        self._idle_check_s = idle_check_s
        self._idle_task: asyncio.Task[None] | None = None
        self._shards: dict[str, Any] = {}
        self._dims: dict[str, int] = {}
        self._unindexed: dict[str, int] = {}
        self._writer: ThreadPoolExecutor | None = None
        self._buffer = UpsertBuffer(
            self._write, name="vectors.edge", interval_s=flush_interval_s, max_points=flush_points
        )
        # ~points per indexing_threshold: below it a plain scan is as fast as a graph walk
        self._optimize_every = max(256, indexing_threshold_kb * 1024 // (384 * 4))

    async def start(self) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kitt-vectors")
        self._buffer.start()
        if self._auto_optimize and self._idle is not None:
            self._idle_task = asyncio.create_task(self._optimize_when_idle(), name="kitt[vectors].optimize")

    async def _optimize_when_idle(self) -> None:
        assert self._idle is not None
        while True:
            await asyncio.sleep(self._idle_check_s)
            due = [c for c, n in self._unindexed.items() if n >= self._optimize_every]
            if due and self._idle():
                for collection in due:
                    await self._run(self._optimize_sync, collection)

    async def stop(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            await asyncio.gather(self._idle_task, return_exceptions=True)
            self._idle_task = None
        try:
            await self._buffer.stop()
            for name in list(self._shards):
                await self._run(self._close, name)
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._writer is None:
            raise VectorStoreError("vector store not started")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        except VectorStoreError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"qdrant-edge: {exc}") from exc

    def _shard(self, name: str) -> Any:
        shard = self._shards.get(name)
        if shard is None:
            raise VectorStoreError(f"collection {name!r} not opened (call ensure_collection)")
        return shard

    # collections ----------------------------------------------------------------------------------

    def _config(self, dim: int) -> Any:
        qe = _edge()
        m, ef, full_scan = self._hnsw
        indexing, max_segment = self._optim
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(m=m, ef_construct=ef, full_scan_threshold=full_scan),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing, max_segment_size=max_segment),
            max_search_threads=self._search_threads,
        )

    def _open(self, name: str, dim: int, keyword_fields: Sequence[str]) -> None:
        qe = _edge()
        where = self._path / name
        config = self._config(dim)
        if where.is_dir() and any(where.iterdir()):
            shard = qe.EdgeShard.load(str(where), config)
        else:
            shard = qe.EdgeShard.create(str(where), config)
        have = set(shard.info().payload_schema)
        for key in keyword_fields:
            if key not in have:
                shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
        info = shard.info()
        self._unindexed[name] = max(0, info.points_count - info.indexed_vectors_count)
        self._shards[name] = shard

    def _close(self, name: str) -> None:
        shard = self._shards.pop(name)
        shard.flush()
        shard.close()

    async def ensure_collection(self, name: str, dim: int, *, keyword_fields: Sequence[str] = ()) -> None:
        if name in self._shards:
            if self._dims[name] != dim:
                raise VectorStoreError(f"collection {name!r} has dim {self._dims[name]}, not {dim}")
            return
        await self._run(self._open, name, dim, tuple(keyword_fields))
        self._dims[name] = dim

    async def drop_collection(self, name: str) -> None:
        self._buffer.discard(name)
        if name in self._shards:
            await self._run(self._close, name)
        self._dims.pop(name, None)
        if (self._path / name).exists():
            await self._run(shutil.rmtree, self._path / name)

    # points ---------------------------------------------------------------------------------------

    async def upsert(self, collection: str, points: Sequence[VectorPoint]) -> None:
        self._shard(collection)
        dim = self._dims[collection]
        for p in points:
            check_id(p.id)
            if len(p.vector) != dim:
                raise VectorStoreError(f"{collection}: vector of {len(p.vector)} dims, expected {dim}")
        self._buffer.add(collection, points)

    async def _write(self, collection: str, points: list[VectorPoint]) -> None:
        await self._run(self._write_sync, collection, points)

    def _write_sync(self, collection: str, points: list[VectorPoint]) -> None:
        qe = _edge()
        shard = self._shard(collection)
        shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(check_id(p.id), as_list(p.vector), p.payload) for p in points]
        ))
        self._unindexed[collection] = self._unindexed.get(collection, 0) + len(points)
        if self._auto_optimize and self._idle is None and self._unindexed[collection] >= self._optimize_every:
            self._optimize_sync(collection)

    async def flush(self) -> None:
        """Write buffered points and persist every shard (searches see all earlier upserts after this)."""
        await self._buffer.flush()
        for name in list(self._shards):
            await self._run(self._shard(name).flush)

    async def optimize(self, collection: str) -> None:
        """Build the HNSW for everything written so far (bench and rebuild; blocks the GIL meanwhile)."""
        await self._buffer.flush()
        await self._run(self._optimize_sync, collection)

    def _optimize_sync(self, collection: str) -> None:
        shard = self._shard(collection)
        shard.optimize()
        info = shard.info()
        self._unindexed[collection] = max(0, info.points_count - info.indexed_vectors_count)

    async def search(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        limit: int = 5,
        filter: Payload | None = None,
    ) -> list[Hit]:
        shard = self._shard(collection)
        qe = _edge()
        params = qe.SearchParams(hnsw_ef=self._hnsw_ef) if self._hnsw_ef else None
        request = qe.QueryRequest(
            limit=limit, query=qe.Query.Nearest(as_list(vector)), filter=edge_filter(filter),
            with_payload=True, params=params,
        )
        try:
            found = await asyncio.to_thread(shard.query, request)
        except Exception as exc:
            raise VectorStoreError(f"qdrant-edge search in {collection!r}: {exc}") from exc
        return [Hit(hit_id(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def search_sync(self, collection: str, vector: np.ndarray | Sequence[float], limit: int = 5) -> list[Hit]:
        """The same search without the thread hop (bench: isolates the engine's own latency)."""
        qe = _edge()
        found = self._shard(collection).query(
            qe.QueryRequest(limit=limit, query=qe.Query.Nearest(as_list(vector)), with_payload=True)
        )
        return [Hit(hit_id(p.id), float(p.score), dict(p.payload or {})) for p in found]

    async def delete(self, collection: str, ids: Sequence[PointId]) -> None:
        if not ids:
            return
        qe = _edge()
        ids = [check_id(i) for i in ids]
        self._buffer.discard(collection, ids)
        shard = self._shard(collection)
        await self._run(shard.update, qe.UpdateOperation.delete_points(ids))

    async def delete_below(self, collection: str, field: str, value: float) -> None:
        qe = _edge()
        shard = self._shard(collection)
        flt = qe.Filter(must=[qe.FieldCondition(field, range=qe.RangeFloat(lt=value))])
        await self._run(shard.update, qe.UpdateOperation.delete_points_by_filter(flt))

    async def count(self, collection: str) -> int:
        qe = _edge()
        return int(await self._run(self._shard(collection).count, qe.CountRequest(exact=True)))
