"""The semantic cache: numbers, and invalidation by key, by tag, or all."""

from __future__ import annotations

from hub.web.api.errors import require
from hub.web.api.models import ByAll, ByKey, CacheStatsOut, InvalidateBody, InvalidateOut
from hub.web.api.routing import Call, Reply, RouteTable

routes = RouteTable(tag="cache")


@routes.get("/cache/stats", summary="Entries, hits, misses, hit ratio, evictions",
            responses={200: ("the numbers", CacheStatsOut)}, errors=(503,))
async def cache_stats(call: Call) -> Reply:
    cache = require(call.deps.services, "cache")
    return Reply(CacheStatsOut.model_validate(await cache.stats()))


@routes.post("/cache/invalidate", summary="Drop cached answers", body=InvalidateBody,
             description='Exactly one of {"key": "the question"}, {"tag": "light.kitchen"} or {"all": true}.',
             responses={200: ("how many entries were dropped", InvalidateOut)}, errors=(503,))
async def cache_invalidate(call: Call) -> Reply:
    cache = require(call.deps.services, "cache")
    target = call.body.root
    if isinstance(target, ByKey):
        return Reply(InvalidateOut(scope="key", removed=await cache.invalidate_key(target.key)))
    if isinstance(target, ByAll):
        return Reply(InvalidateOut(scope="all", removed=await cache.invalidate_all()))
    return Reply(InvalidateOut(scope="tag", removed=await cache.invalidate_tag(target.tag)))
