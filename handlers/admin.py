"""Administrative topics: ``kitt/<hub_id>/cache/invalidate`` with JSON ``{"key"|"tag"|"all": …}``.

The result (how many entries went) is published on ``kitt/<hub_id>/cache/invalidated``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.errors import InputRejected
from hub.plugins import PluginContext
from hub.spine import Inbound, Route


class InvalidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(default=None, min_length=1, max_length=2000)
    tag: str | None = Field(default=None, min_length=1, max_length=200)
    all: bool | None = None
    id: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _exactly_one(self) -> InvalidateRequest:
        chosen = [k for k in ("key", "tag") if getattr(self, k)] + (["all"] if self.all else [])
        if len(chosen) != 1:
            raise ValueError('give exactly one of "key", "tag" or "all": true')
        return self


class AdminHandler:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    async def start(self) -> None:
        self._ctx.route(Route(filter=self._ctx.spine.topics.cache_invalidate, handler=self.invalidate,
                              name="cache-invalidate", model=InvalidateRequest, qos=1, accept_retained=False))

    async def stop(self) -> None:
        return None

    async def invalidate(self, msg: Inbound) -> None:
        req: InvalidateRequest = msg.data
        cache = self._ctx.services.cache
        if cache is None:
            raise InputRejected("unavailable", "the semantic cache is not running")
        if req.all:
            removed = await cache.invalidate_all()
        elif req.tag:
            removed = await cache.invalidate_tag(req.tag)
        else:
            removed = await cache.invalidate_key(req.key)
        await self._ctx.store.record_event("cache.invalidated", actor="mqtt", correlation_id=req.id,
                                           body={"key": req.key, "tag": req.tag, "all": bool(req.all),
                                                 "removed": removed})
        await self._ctx.spine.publish(f"{self._ctx.spine.topics.base}/cache/invalidated",
                                      {"id": req.id, "removed": removed}, qos=1)


def create(ctx: PluginContext) -> AdminHandler:
    return AdminHandler(ctx)
