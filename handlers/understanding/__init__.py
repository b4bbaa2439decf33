"""Understanding: what a sentence means and what to do about it. Provides ``services.understanding``.

Templates (hassil + Home Assistant's English sentences + KITT's own) first; when none matches and the
embedder is ready, an exemplar match with guards; then local action, a state answer, a confirmation, or the
frontier (semantic cache in front). See docs/understanding.md.
"""

from __future__ import annotations

import asyncio
import contextlib

from devices.registry import Registry
from handlers.understanding.fallback import ExemplarMatcher
from handlers.understanding.pipeline import Pipeline
from handlers.understanding.recognizer import TemplateRecognizer
from handlers.understanding.service import Understander
from hub.frontier import FrontierClient
from hub.plugins import PluginContext


class UnderstandingPlugin:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self.service: Understander | None = None
        self._frontier: FrontierClient | None = None
        self._exemplars: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ctx = self._ctx
        registry = Registry.from_config(ctx.config.devices)
        recognizer = TemplateRecognizer(registry, language=ctx.config.voice.language,
                                        extra_areas=ctx.config.voice.sites)
        # hassil compiles its regexes here (~50 ms): off the event loop.
        await asyncio.to_thread(recognizer.compile)
        matcher = ExemplarMatcher(registry)
        if ctx.config.frontier.enabled:
            self._frontier = FrontierClient(ctx.config.frontier)
            await self._frontier.start()
            ctx.services.frontier = self._frontier
        self.service = Understander(ctx, Pipeline(registry, recognizer, matcher), self._frontier)
        ctx.services.understanding = self.service
        self._exemplars = asyncio.create_task(self._load_exemplars(matcher), name="kitt[understanding].exemplars")

    async def _load_exemplars(self, matcher: ExemplarMatcher) -> None:
        """Embed the exemplars once the embedder is up; until then, templates alone."""
        while True:
            embedder = self._ctx.services.embedder
            if embedder is not None:
                try:
                    await embedder.wait_ready()
                    matcher.load(await embedder.embed_many(matcher.texts))
                    self._ctx.log.info("embedding fallback ready", exemplars=len(matcher.texts))
                except Exception as exc:  # the fallback is optional; say why it is off
                    self._ctx.log.warning("embedding fallback unavailable", error=str(exc))
                return
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.drain()
        if self._exemplars is not None:
            self._exemplars.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._exemplars
        if self._ctx.services.understanding is self.service:
            self._ctx.services.understanding = None
        if self._frontier is not None:
            if self._ctx.services.frontier is self._frontier:
                self._ctx.services.frontier = None
            await self._frontier.stop()


def create(ctx: PluginContext) -> UnderstandingPlugin:
    return UnderstandingPlugin(ctx)
