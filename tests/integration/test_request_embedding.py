"""A request computes its embedding once and hands it on (intent fallback, cache, memory search and store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.hubs import devices_config, devices_hub

pytestmark = pytest.mark.integration


def _computed(run) -> float:
    return run.hub.metrics.embeddings_computed._value.get()


async def _settle(run) -> None:
    await run.hub.services.understanding.drain()
    await run.hub.services.vectors.flush()


async def test_one_request_one_embedding_and_none_on_a_repeat(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        await asyncio.wait_for(run.hub.services.embedder.wait_ready(), 60)
        await asyncio.wait_for(_wait_memory(run), 30)
        await asyncio.wait_for(_quiet(run), 60)  # the fallback's exemplars are embedded once at start
        before = _computed(run)
        reply = await run.ask("is the front door locked at the moment?")
        await _settle(run)
        assert reply["route"] == "state"
        assert _computed(run) == before + 1

        # The same words again: an exact LRU hit, no model run.
        await run.ask("Is the front door locked at the moment")
        await _settle(run)
        assert _computed(run) == before + 1

        # A sentence the templates miss uses the embedding fallback: still one computation.
        await run.ask("could you make the kitchen bright")
        await _settle(run)
        assert _computed(run) == before + 2

        # The turns are in vector memory, searchable by site.
        vector = await run.hub.services.embedder.embed("is the front door locked at the moment?")
        hits = await run.hub.services.memory.recall(vector, site="kitchen", limit=3)
        assert hits and "front door" in hits[0].payload["text"]
        events = await run.hub.store.fetch("SELECT body FROM events WHERE kind = 'intent.recognized'")
        assert len(events) == 3 and events[0]["body"]["route"] == "state"


async def _quiet(run) -> None:
    """Until the model has been idle for a second."""
    last = -1.0
    while (now := _computed(run)) != last:
        last = now
        await asyncio.sleep(1.0)


async def _wait_memory(run) -> None:
    while run.hub.services.memory is None:
        await asyncio.sleep(0.05)
