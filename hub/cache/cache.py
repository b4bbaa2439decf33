"""The semantic cache: exact hit on the normalised text in O(1), else the nearest cached request above
``threshold`` whose polarity signature matches. Only for answers that do not depend on live house state.

Entries (answer, tags, TTL, LRU order) live in a :class:`CacheBackend` (Redis, or in-process); their
vectors live in the vector store's ``cache`` collection, so the neighbour search is an HNSW walk
(sublinear, ~0.5 ms at 100k) instead of a scan, is shared by every hub on a Qdrant server, and costs
no Python heap. The backend is the source of truth: a vector whose entry expired or was evicted is
a miss and is deleted when met; a sweep drops vectors past their ``expires_at``.

The cache never embeds: callers pass the vector they already computed for the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from hub.cache.backend import CacheBackend, CacheBackendError, CacheEntry, entry_id
from hub.cache.polarity import compatible
from hub.embeddings import normalise_text
from hub.vectors.base import VectorPoint, VectorStore, VectorStoreError

if TYPE_CHECKING:
    from hub.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: str
    kind: Literal["exact", "semantic"]
    score: float  # cosine to the cached request (1.0 for exact)
    key: str  # the cached request's normalised text
    tags: tuple[str, ...]


class SemanticCache:
    def __init__(
        self,
        *,
        backend: CacheBackend,
        vectors: VectorStore,
        metrics: Metrics | None = None,
        threshold: float = 0.9,
        ttl_s: float = 86_400.0,
        dim: int = 384,
        collection: str = "cache",
        candidates: int = 4,
        retry_after_s: float = 1.0,
        sweep_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._vectors = vectors
        self._metrics = metrics
        self.threshold = threshold
        self._ttl = ttl_s
        self._dim = dim
        self._collection = collection
        self._candidates = candidates
        self._retry_after = retry_after_s
        self._sweep_interval = sweep_interval_s
        self._clock = clock
        self._degraded_until: float | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._backend.start()
        await self._vectors.ensure_collection(self._collection, self._dim)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="kitt[cache].sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self._backend.stop()

    @property
    def degraded(self) -> bool:
        """True while the backend is failing and calls are skipped (misses; stores dropped)."""
        return self._degraded_until is not None

    # the guard: a failing backend is a miss, logged once per outage ---------------------------------

    async def _guard(self, op: str, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        now = time.monotonic()
        if self._degraded_until is not None and now < self._degraded_until:
            return False, None
        try:
            result = await call()
        except (CacheBackendError, VectorStoreError) as exc:
            if self._metrics is not None:
                self._metrics.cache_errors.inc()
            if self._degraded_until is None:
                log.warning("semantic cache degraded to misses (%s failed: %s)", op, exc)
            self._degraded_until = now + self._retry_after
            return False, None
        if self._degraded_until is not None:
            log.info("semantic cache backend recovered")
            self._degraded_until = None
        return True, result

    # lookups and stores ---------------------------------------------------------------------------

    async def lookup(self, text: str, vector: np.ndarray) -> CacheHit | None:
        key = normalise_text(text)
        now = self._clock()
        ok, entry = await self._guard("get", lambda: self._backend.get(entry_id(key), now))
        if ok and entry is not None:
            return self._hit(CacheHit(entry.answer, "exact", 1.0, entry.key, entry.tags))
        if ok:
            hit = await self._nearest(key, vector, now)
            if hit is not None:
                return self._hit(hit)
        self.misses += 1
        if self._metrics is not None:
            self._metrics.cache_misses.inc()
        return None

    async def _nearest(self, key: str, vector: np.ndarray, now: float) -> CacheHit | None:
        ok, found = await self._guard(
            "search", lambda: self._vectors.search(self._collection, vector, limit=self._candidates)
        )
        for cand in found or ():
            if cand.score < self.threshold:
                break
            if cand.payload.get("expires_at", 0.0) <= now or not compatible(key, cand.payload.get("key", "")):
                continue
            ok, entry = await self._guard("get", lambda cid=str(cand.id): self._backend.get(cid, now))
            if not ok:
                return None
            if entry is None:  # expired or evicted: forget its vector too
                await self._guard("delete", lambda cid=cand.id: self._vectors.delete(self._collection, [cid]))
                continue
            return CacheHit(entry.answer, "semantic", cand.score, entry.key, entry.tags)
        return None

    def _hit(self, hit: CacheHit) -> CacheHit:
        self.hits += 1
        if self._metrics is not None:
            self._metrics.cache_hits.labels(kind=hit.kind).inc()
        return hit

    async def store(
        self,
        text: str,
        vector: np.ndarray,
        answer: str,
        tags: Sequence[str] = (),
        ttl_s: float | None = None,
    ) -> bool:
        """Cache ``answer`` for ``text``; False when skipped because the backend is down."""
        key = normalise_text(text)
        now = self._clock()
        ttl = self._ttl if ttl_s is None else ttl_s
        if ttl <= 0:
            raise ValueError("ttl_s must be > 0: every cache entry expires")
        entry = CacheEntry(entry_id(key), key, text, answer, tuple(dict.fromkeys(tags)), now, now + ttl)
        ok, put = await self._guard("put", lambda: self._backend.put(entry, now))
        if not ok or put is None:
            return False
        point = VectorPoint(entry.id, vector, {"key": key, "expires_at": entry.expires_at})
        await self._guard("upsert", lambda: self._vectors.upsert(self._collection, [point]))
        if put.evicted:
            self.evictions += len(put.evicted)
            if self._metrics is not None:
                self._metrics.cache_evictions.inc(len(put.evicted))
            await self._forget_vectors(put.evicted)
        self._set_entries(put.entries)
        return True

    # invalidation ---------------------------------------------------------------------------------

    async def invalidate_key(self, text: str) -> int:
        """Drop the entry for ``text`` (normalised like a lookup); returns how many were dropped."""
        eid = entry_id(normalise_text(text))
        ok, n = await self._guard("delete", lambda: self._backend.delete([eid]))
        await self._forget_vectors([eid])
        await self._refresh_entries()
        return int(n or 0) if ok else 0

    async def invalidate_tag(self, tag: str) -> int:
        """Drop every entry tagged ``tag`` (an entity id or topic whose state changed)."""
        ok, ids = await self._guard("invalidate_tag", lambda: self._backend.invalidate_tag(tag))
        if ok and ids:
            await self._forget_vectors(ids)
        await self._refresh_entries()
        return len(ids or ())

    async def invalidate_all(self) -> int:
        ok, n = await self._guard("clear", self._backend.clear)
        if ok:
            async def reset() -> None:
                await self._vectors.drop_collection(self._collection)
                await self._vectors.ensure_collection(self._collection, self._dim)

            await self._guard("reset vectors", reset)
        await self._refresh_entries()
        return int(n or 0)

    async def _forget_vectors(self, ids: Sequence[str]) -> None:
        await self._guard("delete vectors", lambda: self._vectors.delete(self._collection, list(ids)))

    # numbers --------------------------------------------------------------------------------------

    def _set_entries(self, n: int) -> None:
        if self._metrics is not None:
            self._metrics.cache_entries.set(n)

    async def _refresh_entries(self) -> int | None:
        ok, n = await self._guard("count", self._backend.count)
        if ok and n is not None:
            self._set_entries(n)
        return n

    async def stats(self) -> dict[str, Any]:
        """Entries (None while the backend is down), hits, misses, hit_ratio and evictions since start."""
        entries = await self._refresh_entries()
        looked = self.hits + self.misses
        return {
            "entries": entries,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": (self.hits / looked) if looked else 0.0,
            "evictions": self.evictions,
            "degraded": self.degraded,
        }

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            await self.sweep()

    async def sweep(self) -> None:
        """Delete vectors whose entry has passed its ``expires_at`` (the backend expires on its own)."""
        now = self._clock()
        await self._guard(
            "sweep", lambda: self._vectors.delete_below(self._collection, "expires_at", now)
        )
