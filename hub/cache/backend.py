"""Cache entries and the storage interface the semantic cache sits on (Redis or in-process)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hub.errors import KittError

_NS = uuid.UUID("6f3c1e0a-4b1d-5c52-9a57-6b1d2f0c4e11")


class CacheBackendError(KittError):
    """The cache backend is unreachable or failed; the cache turns this into a miss."""


def entry_id(key: str) -> str:
    """Stable id of a normalised key: the Redis key suffix and the vector point id (a UUID)."""
    return str(uuid.uuid5(_NS, key))


@dataclass(frozen=True, slots=True)
class CacheEntry:
    id: str
    key: str  # the normalised request text
    text: str  # the request as first asked
    answer: str
    tags: tuple[str, ...]
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class PutResult:
    evicted: tuple[str, ...]  # ids evicted by LRU to stay within max_entries
    entries: int


class CacheBackend(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def get(self, entry_id: str, now: float) -> CacheEntry | None:
        """The live entry (touching its LRU position), or None."""
        ...
    async def put(self, entry: CacheEntry, now: float) -> PutResult: ...
    async def delete(self, ids: Sequence[str]) -> int: ...
    async def invalidate_tag(self, tag: str) -> list[str]:
        """Delete every entry carrying ``tag``; returns their ids."""
        ...
    async def clear(self) -> int: ...
    async def count(self) -> int: ...
