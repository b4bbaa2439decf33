"""Redis backend: a hash per entry, one sorted set for LRU order, one set per tag — every key with a TTL.

Layout under ``prefix`` (default ``kitt:cache:``):
  ``<p>e:<id>``  HASH key, text, answer, tags (JSON), created_at, expires_at; expires at ``expires_at``
  ``<p>lru``     ZSET id → last access (unix s); expiry pushed out to the latest entry's
  ``<p>t:<tag>`` SET of ids; expiry pushed out to the latest tagged entry's
Writes and evictions are Lua scripts, so a put, its tag updates and the LRU trim are one atomic step
and one round trip. (Keys are derived inside the scripts: fine for one Redis, not for Redis Cluster.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hub.cache.backend import CacheBackendError, CacheEntry, PutResult

# drop an id from the tag sets named in its hash, then the hash and its LRU member
_DROP = """
local function drop(p, id)
  local ek = p .. 'e:' .. id
  local tags = redis.call('HGET', ek, 'tags')
  if tags then
    for _, t in ipairs(cjson.decode(tags)) do redis.call('SREM', p .. 't:' .. t, id) end
  end
  redis.call('ZREM', p .. 'lru', id)
  return redis.call('DEL', ek)
end
local function expire_at_least(k, ms)
  redis.call('PEXPIREAT', k, ms, 'NX')
  redis.call('PEXPIREAT', k, ms, 'GT')
end
"""

# ARGV: prefix, id, key, text, answer, tags_json, created_at, expires_ms, now, max_entries, max_ttl_s, tags…
_PUT = _DROP + """
local p, id = ARGV[1], ARGV[2]
local exp_ms, now = tonumber(ARGV[8]), tonumber(ARGV[9])
local maxn, max_ttl = tonumber(ARGV[10]), tonumber(ARGV[11])
local lru = p .. 'lru'
drop(p, id)
local ek = p .. 'e:' .. id
redis.call('HSET', ek, 'key', ARGV[3], 'text', ARGV[4], 'answer', ARGV[5], 'tags', ARGV[6],
           'created_at', ARGV[7], 'expires_at', tostring(exp_ms / 1000))
redis.call('PEXPIREAT', ek, exp_ms)
-- members idle longer than the longest TTL belong to entries that expired: forget them
redis.call('ZREMRANGEBYSCORE', lru, '-inf', '(' .. tostring(now - max_ttl))
redis.call('ZADD', lru, now, id)
expire_at_least(lru, exp_ms)
for i = 12, #ARGV do
  local tk = p .. 't:' .. ARGV[i]
  redis.call('SADD', tk, id)
  expire_at_least(tk, exp_ms)
end
local evicted = {}
local n = redis.call('ZCARD', lru)
if n > maxn then
  local victims = redis.call('ZPOPMIN', lru, n - maxn)
  for i = 1, #victims, 2 do
    if drop(p, victims[i]) == 1 then table.insert(evicted, victims[i]) end
  end
end
return {evicted, redis.call('ZCARD', lru)}
"""

# ARGV: prefix, id, now → the hash as a flat list, or {} (and the stale LRU member removed)
_GET = """
local p, id = ARGV[1], ARGV[2]
local h = redis.call('HGETALL', p .. 'e:' .. id)
if #h == 0 then
  redis.call('ZREM', p .. 'lru', id)
  return {}
end
redis.call('ZADD', p .. 'lru', 'XX', ARGV[3], id)
return h
"""

# ARGV: prefix, id… → number deleted
_DELETE = _DROP + """
local n = 0
for i = 2, #ARGV do n = n + drop(ARGV[1], ARGV[i]) end
return n
"""

# ARGV: prefix, tag → ids that carried the tag
_TAG = _DROP + """
local p = ARGV[1]
local tk = p .. 't:' .. ARGV[2]
local ids = redis.call('SMEMBERS', tk)
for _, id in ipairs(ids) do drop(p, id) end
redis.call('DEL', tk)
return ids
"""

_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (*_ERRORS, redis.exceptions.RedisError)


class RedisBackend:
    def __init__(
        self,
        *,
        url: str,
        max_entries: int,
        max_ttl_s: float,
        prefix: str = "kitt:cache:",
        timeout_s: float = 0.25,
    ) -> None:
        self._url = url
        self._max = max_entries
        self._max_ttl = max_ttl_s
        self._prefix = prefix
        self._timeout = timeout_s
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._errors = _redis_errors()

    @property
    def prefix(self) -> str:
        return self._prefix

    async def start(self) -> None:
        """Builds the client only; a Redis that is down now is a degraded cache, not a failed start."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client = aioredis.Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),  # the cache degrades to a miss; never stall a request retrying
        )
        self._scripts = {
            name: self._client.register_script(src)
            for name, src in (("put", _PUT), ("get", _GET), ("delete", _DELETE), ("tag", _TAG))
        }

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, script: str, args: list[Any]) -> Any:
        if self._client is None:
            raise CacheBackendError("redis cache backend not started")
        try:
            return await self._scripts[script](keys=[], args=[self._prefix, *args])
        except self._errors as exc:
            raise CacheBackendError(f"redis {script}: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except self._errors as exc:
            raise CacheBackendError(f"redis ping: {exc}") from exc

    async def get(self, entry_id: str, now: float) -> CacheEntry | None:
        flat = await self._call("get", [entry_id, repr(now)])
        if not flat:
            return None
        h = dict(zip(flat[::2], flat[1::2], strict=True))
        expires_at = float(h["expires_at"])
        if expires_at <= now:
            return None
        return CacheEntry(
            id=entry_id, key=h["key"], text=h["text"], answer=h["answer"], tags=tuple(json.loads(h["tags"])),
            created_at=float(h["created_at"]), expires_at=expires_at,
        )

    async def put(self, entry: CacheEntry, now: float) -> PutResult:
        expires_ms = int(entry.expires_at * 1000)
        evicted, entries = await self._call("put", [
            entry.id, entry.key, entry.text, entry.answer, json.dumps(list(entry.tags)),
            repr(entry.created_at), expires_ms, repr(now), self._max, self._max_ttl, *entry.tags,
        ])
        return PutResult(tuple(evicted), int(entries))

    async def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return int(await self._call("delete", list(ids)))

    async def invalidate_tag(self, tag: str) -> list[str]:
        return list(await self._call("tag", [tag]))

    async def clear(self) -> int:
        if self._client is None:
            raise CacheBackendError("redis cache backend not started")
        n = 0
        try:
            batch: list[str] = []
            async for key in self._client.scan_iter(match=f"{self._prefix}*", count=500):
                batch.append(key)
                n += key.startswith(f"{self._prefix}e:")
                if len(batch) >= 500:
                    await self._client.unlink(*batch)
                    batch = []
            if batch:
                await self._client.unlink(*batch)
        except self._errors as exc:
            raise CacheBackendError(f"redis clear: {exc}") from exc
        return n

    async def count(self) -> int:
        if self._client is None:
            raise CacheBackendError("redis cache backend not started")
        try:
            return int(await self._client.zcard(f"{self._prefix}lru"))
        except self._errors as exc:
            raise CacheBackendError(f"redis count: {exc}") from exc
