"""Text → ``Understanding``: templates first, then the guarded embedding fallback. No I/O besides the
embedder, so the benchmark and the tests run exactly what the hub runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from devices.registry import Registry
from handlers.understanding.fallback import ExemplarMatcher
from handlers.understanding.recognizer import TemplateRecognizer
from handlers.understanding.resolve import ACTION_INTENTS, STATE_INTENTS, resolve
from hub.contracts import Understanding

VectorFn = Callable[[str], Awaitable[np.ndarray | None]]


class Pipeline:
    def __init__(self, registry: Registry, recognizer: TemplateRecognizer, matcher: ExemplarMatcher) -> None:
        self.registry = registry
        self.recognizer = recognizer
        self.matcher = matcher

    async def understand(self, text: str, *, area: str | None, vector: VectorFn,
                         intent_filter: tuple[str, ...] | None = None) -> Understanding:
        match = self.recognizer.recognize(text, area=area, intent_filter=intent_filter)
        if match is not None:
            res = resolve(self.registry, match.intent, match.slots, area)
            slots = dict(match.slots)
            if res.problem:
                slots["problem"] = res.problem
            return Understanding(text=text, intent=match.intent, confidence=1.0 if not match.wildcards else 0.8,
                                 slots=slots, actions=res.actions, devices=res.devices, source="template")
        wanted = intent_filter is None or bool(set(intent_filter) & (ACTION_INTENTS | STATE_INTENTS))
        if self.matcher.ready and wanted:
            vec = await vector(text)
            fb = self.matcher.match(text, vec) if vec is not None else None
            if fb is not None and (intent_filter is None or fb.intent in intent_filter):
                res = resolve(self.registry, fb.intent, fb.slots, area)
                return Understanding(text=text, intent=fb.intent, confidence=fb.confidence, slots=fb.slots,
                                     actions=res.actions, devices=res.devices, source="embedding")
        return Understanding(text=text, intent="Unknown", confidence=0.0)
