"""The voice plugin: Hermes routes on the spine, the site allow-list, the restart gate and recovery.

Routes are QoS 1 and durable: a message is in the inbox before the broker gets its PUBACK, and a QoS 1
redelivery (same session, same step, same bytes) is deduplicated there. Retained hermes messages are never
acted on. The spine subscribes with no_local, so our own hermes/intent/… and nlu/… publications never come
back to us.

On the first connect, nothing is handled until the dialogues that hold a confirmation are rebuilt from the
database: an answer the broker queued while the hub was down then finds its session and is taken; for the
rest the question is asked again ("Sorry, I was interrupted. …") on the same site and session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from pydantic import BaseModel

from handlers.voice import topics as T
from handlers.voice.durable import VoiceSessions
from handlers.voice.manager import REASK_GRACE_S, DialogueManager, VoiceDeps
from handlers.voice.messages import (
    Configure,
    ContinueSession,
    EndSession,
    HotwordDetected,
    NluQuery,
    SayFinished,
    StartSession,
    TextCaptured,
)
from hub.errors import StoreError
from hub.plugins import PluginContext
from hub.spine import Inbound, Route


class VoicePlugin:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._cfg = ctx.config.voice
        self._allowed = set(self._cfg.sites)
        self._ready = asyncio.Event()
        self._recovery: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], Any] | None = None
        self.dm = DialogueManager(config=self._cfg, deps=VoiceDeps(
            publish=self._publish,
            transaction=self._transaction,
            record_event=ctx.store.record_event,
            sessions=VoiceSessions(ctx.store),
            services=ctx.services,
            count_rejected=lambda reason: ctx.metrics.messages_rejected.labels(reason=reason).inc(),
        ))

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._ctx.services.voice = self
        for topic, name, model, handler in (
            (T.HOTWORD_DETECTED, "hotword", HotwordDetected, self._on_hotword),
            (T.TEXT_CAPTURED, "text", TextCaptured, self._on_text),
            (T.START_SESSION, "start", StartSession, self._on_start),
            (T.CONTINUE_SESSION, "continue", ContinueSession, self._on_continue),
            (T.END_SESSION, "end", EndSession, self._on_end),
            (T.CONFIGURE, "configure", Configure, self._on_configure),
            (T.SAY_FINISHED, "say_finished", SayFinished, self._on_say_finished),
            (T.NLU_QUERY, "nlu_query", NluQuery, self._on_nlu_query),
        ):
            self._ctx.route(Route(filter=topic, handler=handler, name=f"voice.{name}", model=model, qos=1,
                                  accept_retained=False, dedupe_key=self._dedupe_key,
                                  ordering_key=self._ordering_key))
        if (service := self._ctx.services.confirmations) is not None:
            self._unsubscribe = service.subscribe(self.dm.on_confirmation)
        self._ctx.spine.on_connect(self._on_connect)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        await self.dm.close()
        if self._ctx.services.voice is self:
            self._ctx.services.voice = None

    def _on_connect(self, session_present: bool) -> None:
        if self._recovery is None:
            self._recovery = asyncio.create_task(self._recover(), name="kitt[voice].recover")

    async def _recover(self) -> None:
        reask = []
        try:
            rows = await VoiceSessions(self._ctx.store).open_sessions()
            if self._unsubscribe is None and (service := self._ctx.services.confirmations) is not None:
                self._unsubscribe = service.subscribe(self.dm.on_confirmation)
            reask = await self.dm.recover(rows, self._allowed)
            if rows:
                self._ctx.log.info("voice dialogues recovered", open=len(rows), reask=len(reask))
        except StoreError as exc:
            self._ctx.log.error("voice recovery failed; confirmations stay pending until they expire",
                                error=str(exc))
        finally:
            self._ready.set()
        if reask:
            await asyncio.sleep(REASK_GRACE_S)
            await self.dm.reask(reask)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # --- spine glue ----------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: dict[str, Any], *, wait: bool = False) -> None:
        # Hermes chatter: QoS 1, never retained, direct (a lost prompt is re-asked by design).
        await self._ctx.spine.publish(topic, payload, qos=1, retain=False, wait=wait)

    @contextlib.asynccontextmanager
    async def _transaction(self, inbound: Inbound | None) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(inbound, Inbound):
            async with self._ctx.spine.handling(inbound) as conn:
                yield conn
        else:
            async with self._ctx.spine.transaction() as conn:
                yield conn

    def _dedupe_key(self, msg: Inbound) -> str | None:
        """sessionId + step + payload digest: a QoS 1 redelivery is a duplicate; a new turn is not.

        Without a sessionId there is nothing to tie a message to (a wake word sends the same bytes every
        time), so the spine's fallback applies (a payload id, else never merged).
        """
        data = msg.data
        session_id = getattr(data, "session_id", None)
        if not session_id:
            return None
        step = self.dm.step_of(session_id)
        digest = hashlib.blake2b(msg.payload, digest_size=10).hexdigest()
        return f"{session_id}|{'-' if step is None else step}|{digest}"

    def _ordering_key(self, msg: Inbound) -> str | None:
        site = getattr(msg.data, "site_id", None)
        if site is None:
            session = self.dm.session(getattr(msg.data, "session_id", None))
            site = session.site if session is not None else None
        return site

    def _site_allowed(self, site: str | None) -> bool:
        if site is None or site in self._allowed:
            return True
        # Rhasspy's rule: a siteId that is not ours is discarded (and here counted).
        self._ctx.metrics.messages_rejected.labels(reason="voice_unknown_site").inc()
        return False

    def _handler(self, fn: Callable[[Any, Inbound], Awaitable[None]]) -> Callable[[Inbound], Awaitable[None]]:
        async def handle(msg: Inbound) -> None:
            await self._ready.wait()
            data: BaseModel = msg.data
            if not self._site_allowed(getattr(data, "site_id", None)):
                return
            await fn(data, msg)

        return handle

    # --- handlers ------------------------------------------------------------------------------------

    async def _on_hotword(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_hotword(d, T.wakeword_of(m.topic)))(msg)

    async def _on_text(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_text(d, m))(msg)

    async def _on_start(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_start_session(d))(msg)

    async def _on_continue(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_continue(d))(msg)

    async def _on_end(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_end(d))(msg)

    async def _on_configure(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_configure(d))(msg)

    async def _on_say_finished(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_say_finished(d))(msg)

    async def _on_nlu_query(self, msg: Inbound) -> None:
        await self._handler(lambda d, m: self.dm.on_nlu_query(d))(msg)
