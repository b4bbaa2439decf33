"""A test plugin (load it with ``plugins = ["tests.support.spine_routes"]``): strict routes on wildcard
filters, so tests can aim hostile input at more than the ask topic.

- ``kitt/<hub>/test/cmd/+``: a command with a strict model, ordered per device (the last level);
- ``kitt/<hub>/test/deep/#``: a nested model;
- ``kitt/<hub>/test/echo``: echoes ``{"id", "n"}`` through the outbox (like ask, with an ordering key);
- ``kitt/<hub>/test/fanout``: ``{"id", "count"}`` writes ``count`` QoS 2 commands to the outbox in one handler
  transaction, on ``kitt/<hub>/test/out/<id>/<i>`` with key ``cmd:<id>:<i>`` (keeps the relay busy).
Every handled message records the audit event ``test.handled``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from hub.plugins import PluginContext
from hub.spine import Inbound, Route


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    action: str = Field(pattern=r"^(on|off|toggle)$")
    level: int = Field(default=0, ge=0, le=100)


class Inner(BaseModel):
    value: float
    unit: str = Field(max_length=8)


class Deep(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    items: list[Inner] = Field(min_length=1, max_length=8)


class Echo(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    n: int


class Fanout(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    count: int = Field(ge=1, le=200)


class SpineRoutes:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    @property
    def base(self) -> str:
        return f"{self._ctx.spine.topics.base}/test"

    async def start(self) -> None:
        self._ctx.route(Route(filter=f"{self.base}/cmd/+", handler=self._handle, name="test.cmd", model=Command,
                              ordering_key=lambda m: m.topic.rsplit("/", 1)[-1], accept_retained=False))
        self._ctx.route(Route(filter=f"{self.base}/deep/#", handler=self._handle, name="test.deep", model=Deep))
        self._ctx.route(Route(filter=f"{self.base}/echo", handler=self._echo, name="test.echo", model=Echo,
                              shared=True, dedupe_key=lambda m: m.data.id))
        self._ctx.route(Route(filter=f"{self.base}/fanout", handler=self._fanout, name="test.fanout", model=Fanout,
                              dedupe_key=lambda m: m.data.id))

    async def stop(self) -> None:
        return None

    async def _handle(self, msg: Inbound) -> None:
        async with self._ctx.spine.handling(msg) as conn:
            await self._ctx.store.record_event("test.handled", actor="test", subject=msg.topic,
                                               correlation_id=msg.data.id, conn=conn)

    async def _echo(self, msg: Inbound) -> None:
        spine = self._ctx.spine
        topic, props = spine.reply_target(msg, "echo")
        async with spine.handling(msg) as conn:
            await spine.enqueue(conn, topic=topic, payload={"id": msg.data.id, "n": msg.data.n},
                                key=f"echo:{msg.dedupe_key}", properties=props, correlation_id=msg.data.id)
            await self._ctx.store.record_event("test.handled", actor="test", subject=msg.topic,
                                               correlation_id=msg.data.id, conn=conn)


    async def _fanout(self, msg: Inbound) -> None:
        spine = self._ctx.spine
        async with spine.handling(msg) as conn:
            for i in range(msg.data.count):
                key = f"cmd:{msg.data.id}:{i}"
                await spine.enqueue(conn, topic=f"{self.base}/out/{msg.data.id}/{i}", payload={"id": key, "on": True},
                                    key=key, correlation_id=msg.data.id)


def create(ctx: PluginContext) -> SpineRoutes:
    return SpineRoutes(ctx)
