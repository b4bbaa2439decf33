"""Native text requests on ``kitt/<hub_id>/ask``: answered on the MQTT 5 Response Topic with the Correlation
Data, else on ``kitt/<hub_id>/reply/<site>``.

The reply and the audit event commit in the same transaction that marks the request done, so a request
redelivered after a crash has exactly one reply and one event.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hub.plugins import PluginContext
from hub.spine import Inbound, Route
from hub.tracing import bind_correlation, span


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=2000)
    site: str = Field(default="default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    user: str | None = Field(default=None, max_length=64)


class AskHandler:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    async def start(self) -> None:
        self._ctx.route(Route(
            filter=self._ctx.spine.topics.ask,
            handler=self.handle,
            name="ask",
            model=AskRequest,
            shared=True,
            dedupe_key=lambda m: m.data.id,
        ))

    async def stop(self) -> None:
        return None

    async def handle(self, msg: Inbound) -> None:
        req: AskRequest = msg.data
        # Every log line and span of this request carries its id (request → understand → act → reply).
        with bind_correlation(req.id), span("request", route="ask", site=req.site):
            await self._handle(msg, req)

    async def _handle(self, msg: Inbound, req: AskRequest) -> None:
        started = time.perf_counter()
        understanding = self._ctx.services.understanding
        if understanding is None:
            result: dict[str, Any] = {"text": f"You said: {req.text}", "route": "echo"}
        else:
            u = await understanding.understand(req.text, site=req.site)
            respond = functools.partial(understanding.respond, u, site=req.site, user=req.user,
                                        request_id=req.id, actor="ask", started=started)
            if understanding.acts_locally(u):
                # Commands, audit events, reply and done mark in one transaction (one commit, not three).
                async with self._ctx.spine.handling(msg) as conn:
                    result = await respond(conn=conn)
                    with span("reply"):
                        await self._reply(conn, msg, req, result, started)
                return
            result = await respond()  # may wait on the language model: outside the inbox transaction
        with span("reply"):
            async with self._ctx.spine.handling(msg) as conn:
                await self._reply(conn, msg, req, result, started)

    async def _reply(self, conn: Any, msg: Inbound, req: AskRequest, result: dict[str, Any], started: float) -> None:
        spine = self._ctx.spine
        topic, props = spine.reply_target(msg, req.site)
        reply = {"id": req.id, "site": req.site, **result}
        await spine.enqueue(conn, topic=topic, payload=reply, key=f"reply:{msg.dedupe_key}",
                            properties=props, correlation_id=req.id)
        await self._ctx.store.record_event(
            "ask.answered", actor="ask", subject=req.site, correlation_id=req.id, conn=conn,
            body={"text": req.text, "route": result.get("route"),
                  "ms": round((time.perf_counter() - started) * 1000, 2)},
        )


def create(ctx: PluginContext) -> AskHandler:
    return AskHandler(ctx)
