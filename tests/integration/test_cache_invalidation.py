"""A device's state change invalidates the semantic-cache entries tagged with it (real Redis, real bridge)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.hubs import devices_config, devices_hub

pytestmark = pytest.mark.integration
REDIS = "redis://127.0.0.1:6379/0"


async def test_a_device_state_message_invalidates_its_tagged_answers(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir, redis={"url": REDIS})
    async with devices_hub(config) as run:
        while run.hub.services.cache is None:
            await asyncio.sleep(0.05)
        cache, embedder = run.hub.services.cache, run.hub.services.embedder
        await asyncio.wait_for(embedder.wait_ready(), 60)
        about_light = f"how bright does the kitchen light get {uuid.uuid4().hex[:6]}"
        about_weather = f"what is the capital of france {uuid.uuid4().hex[:6]}"
        assert await cache.store(about_light, await embedder.embed(about_light), "up to 800 lumen",
                                 tags=("kitchen_light",))
        assert await cache.store(about_weather, await embedder.embed(about_weather), "Paris", tags=("frontier",))
        assert (await cache.lookup(about_light, await embedder.embed(about_light))).answer == "up to 800 lumen"

        run.sim.set_state("kitchen_light", state="ON", brightness=200)  # as Zigbee2MQTT reports a change
        for _ in range(100):
            if await cache.lookup(about_light, await embedder.embed(about_light)) is None:
                break
            await asyncio.sleep(0.05)
        assert await cache.lookup(about_light, await embedder.embed(about_light)) is None
        assert (await cache.lookup(about_weather, await embedder.embed(about_weather))).answer == "Paris"

        # Every key the hub wrote in Redis has a TTL.
        client = aioredis.from_url(REDIS)
        try:
            keys = [k async for k in client.scan_iter(match=f"kitt:{config.hub.id}:cache:*")]
            assert keys
            ttls = [await client.ttl(k) for k in keys]
            assert all(t > 0 for t in ttls), ttls
            await client.delete(*keys)
        finally:
            await client.aclose()
