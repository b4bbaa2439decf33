"""In-process backend (``redis.url`` empty): an OrderedDict in LRU order plus a tag index."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from hub.cache.backend import CacheEntry, PutResult


class MemoryBackend:
    def __init__(self, *, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._tags: dict[str, set[str]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _drop(self, entry_id: str) -> bool:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return False
        for tag in entry.tags:
            ids = self._tags.get(tag)
            if ids is not None:
                ids.discard(entry_id)
                if not ids:
                    del self._tags[tag]
        return True

    async def get(self, entry_id: str, now: float) -> CacheEntry | None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(entry_id)
            return None
        self._entries.move_to_end(entry_id)
        return entry

    async def put(self, entry: CacheEntry, now: float) -> PutResult:
        self._drop(entry.id)
        self._entries[entry.id] = entry
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(entry.id)
        # expired entries at the cold end go first and are not evictions
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now:
                break
            self._drop(oldest.id)
        evicted: list[str] = []
        while len(self._entries) > self._max:
            victim = next(iter(self._entries))
            self._drop(victim)
            evicted.append(victim)
        return PutResult(tuple(evicted), len(self._entries))

    async def delete(self, ids: Sequence[str]) -> int:
        return sum(self._drop(i) for i in ids)

    async def invalidate_tag(self, tag: str) -> list[str]:
        ids = list(self._tags.get(tag, ()))
        for i in ids:
            self._drop(i)
        return ids

    async def clear(self) -> int:
        n = len(self._entries)
        self._entries.clear()
        self._tags.clear()
        return n

    async def count(self) -> int:
        return len(self._entries)
