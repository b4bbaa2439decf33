"""The bounded semantic cache (exact + nearest neighbour with a polarity guard), Redis or in-process."""

from __future__ import annotations

from hub.cache.backend import CacheBackend, CacheBackendError, CacheEntry, PutResult, entry_id
from hub.cache.cache import CacheHit, SemanticCache
from hub.cache.memory_backend import MemoryBackend
from hub.cache.polarity import compatible, signature
from hub.cache.redis_backend import RedisBackend

__all__ = [
    "CacheBackend",
    "CacheBackendError",
    "CacheEntry",
    "CacheHit",
    "MemoryBackend",
    "PutResult",
    "RedisBackend",
    "SemanticCache",
    "compatible",
    "entry_id",
    "make_backend",
    "signature",
]


def make_backend(*, redis_url: str, max_entries: int, ttl_s: float, prefix: str = "kitt:cache:") -> CacheBackend:
    """``redis.url`` empty → in-process LRU; else Redis (``ttl_s`` bounds how long LRU members linger)."""
    if redis_url:
        return RedisBackend(url=redis_url, max_entries=max_entries, max_ttl_s=ttl_s, prefix=prefix)
    return MemoryBackend(max_entries=max_entries)
