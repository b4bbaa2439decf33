"""A plugin for lifecycle tests: ``kitt/<hub_id>/slow`` requests take a while, then get one reply each.

Loaded by the hub from ``config.plugins`` like any handler (the test hub runs with the repository as cwd).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from hub.plugins import PluginContext
from hub.spine import Inbound, Route


class SlowRequest(BaseModel):
    id: str
    seconds: float = 0.3


class SlowHandler:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    async def start(self) -> None:
        self._ctx.route(Route(filter=f"{self._ctx.spine.topics.base}/slow", handler=self.handle, name="slow",
                              model=SlowRequest, concurrency=5, dedupe_key=lambda m: m.data.id))

    async def stop(self) -> None:
        return None

    async def handle(self, msg: Inbound) -> None:
        await asyncio.sleep(msg.data.seconds)
        spine = self._ctx.spine
        async with spine.handling(msg) as conn:
            await spine.enqueue(conn, topic=f"{spine.topics.base}/slow/reply", payload={"id": msg.data.id},
                                key=f"slow-reply:{msg.data.id}")
            await self._ctx.store.record_event("slow.answered", actor="slow", correlation_id=msg.data.id, conn=conn)


def create(ctx: PluginContext) -> SlowHandler:
    return SlowHandler(ctx)
