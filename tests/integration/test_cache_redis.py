"""The Redis backend on the machine's real Redis (127.0.0.1:6379), plus a private redis-server that we
stop and restart to check degrade-to-miss and recovery. Each test uses its own key prefix."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from hub.cache import RedisBackend, SemanticCache
from hub.metrics import Metrics
from hub.vectors import EdgeVectorStore

pytestmark = pytest.mark.integration
REDIS = "redis://127.0.0.1:6379/0"
DIM = 8


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = f"kitt-test-{uuid.uuid4()}:"
    yield p
    client = aioredis.Redis.from_url(REDIS)
    keys = [k async for k in client.scan_iter(match=f"{p}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def make(tmp_path: Path, url: str, prefix: str, *, max_entries: int = 100, ttl_s: float = 3600,
               clock: Clock | None = None, retry_after_s: float = 1.0):
    store = EdgeVectorStore(path=tmp_path / uuid.uuid4().hex, flush_interval_s=60)
    await store.start()
    metrics = Metrics()
    cache = SemanticCache(
        backend=RedisBackend(url=url, max_entries=max_entries, max_ttl_s=ttl_s, prefix=prefix),
        vectors=store, metrics=metrics, dim=DIM, ttl_s=ttl_s, clock=clock or Clock(), retry_after_s=retry_after_s,
    )
    await cache.start()
    return cache, store, metrics


async def close(cache: SemanticCache, store: EdgeVectorStore) -> None:
    await cache.stop()
    await store.stop()


async def keys_and_ttls(prefix: str, url: str = REDIS) -> dict[str, int]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return {k: await client.pttl(k) async for k in client.scan_iter(match=f"{prefix}*")}
    finally:
        await client.aclose()


async def test_every_key_has_a_ttl(tmp_path: Path, prefix: str) -> None:
    cache, store, _ = await make(tmp_path, REDIS, prefix, max_entries=5)
    try:
        for i in range(8):
            await cache.store(f"question {i}", vec(i), f"answer {i}", tags=[f"light.l{i % 3}", "weather"])
        await cache.lookup("question 7", vec(7))
        await cache.invalidate_tag("light.l1")
        ttls = await keys_and_ttls(prefix)
        assert any(k.endswith("lru") for k in ttls) and any(":t:" in k for k in ttls)
        assert sum(":e:" in k for k in ttls) <= 5
        assert all(ttl > 0 for ttl in ttls.values()), {k: t for k, t in ttls.items() if t <= 0}
    finally:
        await close(cache, store)


async def test_ttl_expiry(tmp_path: Path, prefix: str) -> None:
    cache, store, _ = await make(tmp_path, REDIS, prefix)
    try:
        await cache.store("short lived", vec(1), "soon gone", ttl_s=1)
        await cache.store("long lived", vec(2), "still here", ttl_s=600)
        assert (await cache.lookup("short lived", vec(1))).answer == "soon gone"
        client = aioredis.Redis.from_url(REDIS, decode_responses=True)
        key = next(k for k, t in (await keys_and_ttls(prefix)).items() if ":e:" in k and 0 < t <= 1000)
        for _ in range(40):  # Redis expires the hash on its own clock
            if not await client.exists(key):
                break
            await asyncio.sleep(0.1)
        await client.aclose()
        assert await cache.lookup("short lived", vec(1)) is None
        assert (await cache.lookup("long lived", vec(2))).answer == "still here"
    finally:
        await close(cache, store)


async def test_lru_eviction_at_max_entries(tmp_path: Path, prefix: str) -> None:
    clock = Clock()
    cache, store, metrics = await make(tmp_path, REDIS, prefix, max_entries=3, clock=clock)
    try:
        for i in range(3):
            clock.now += 1
            await cache.store(f"q{i}", vec(i), f"a{i}")
        clock.now += 1
        assert await cache.lookup("q0", vec(0)) is not None  # q1 is now the least recently used
        clock.now += 1
        await cache.store("q3", vec(3), "a3")
        assert await cache.lookup("q1", vec(1)) is None
        assert all([await cache.lookup(f"q{i}", vec(i)) for i in (0, 2, 3)])
        stats = await cache.stats()
        assert stats["entries"] == 3 and stats["evictions"] == 1
        assert metrics.registry.get_sample_value("kitt_cache_evictions_total") == 1
        assert sum(":e:" in k for k in await keys_and_ttls(prefix)) == 3
    finally:
        await close(cache, store)


async def test_tag_invalidation(tmp_path: Path, prefix: str) -> None:
    cache, store, _ = await make(tmp_path, REDIS, prefix)
    try:
        await cache.store("is the garden wet", vec(1), "yes", tags=["sensor.rain", "garden"])
        await cache.store("what is the capital of australia", vec(2), "Canberra", tags=["geo"])
        # a device state message for sensor.rain → the handler calls invalidate_tag("sensor.rain")
        assert await cache.invalidate_tag("sensor.rain") == 1
        assert await cache.lookup("is the garden wet", vec(1)) is None
        assert (await cache.lookup("what is the capital of australia", vec(2))).answer == "Canberra"
        assert not any(k.endswith("t:sensor.rain") for k in await keys_and_ttls(prefix))
        assert await cache.invalidate_all() == 1
        assert await keys_and_ttls(prefix) == {}
    finally:
        await close(cache, store)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_redis(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = spawn_redis(port)
    client = aioredis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                if await client.ping():
                    return proc
            except (ConnectionError, OSError, aioredis.ConnectionError):
                await asyncio.sleep(0.05)
        raise RuntimeError(f"redis-server on {port} did not come up")
    finally:
        await client.aclose()


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=10)


async def test_redis_down_degrades_to_miss_then_recovers(tmp_path: Path, caplog) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = await start_redis(port)
    cache, store, metrics = await make(tmp_path, url, "kitt-test-fault:", retry_after_s=0.2)
    try:
        assert await cache.store("hello", vec(1), "hi there")
        assert (await cache.lookup("hello", vec(1))).answer == "hi there"
        kill(proc)
        with caplog.at_level(logging.WARNING, logger="hub.cache.cache"):
            for _ in range(5):
                assert await cache.lookup("hello", vec(1)) is None
                assert await cache.store("bye", vec(2), "ciao") is False
                await asyncio.sleep(0.25)  # past retry_after_s: each round tries Redis again
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "degraded" in warnings[0].getMessage()
        assert cache.degraded and (await cache.stats())["entries"] is None
        errors = metrics.registry.get_sample_value("kitt_cache_backend_errors_total")
        assert errors is not None and errors >= 2
        assert metrics.registry.get_sample_value("kitt_cache_misses_total") >= 5
        proc = await start_redis(port)  # empty: --save "" means nothing survived
        stored = False
        for _ in range(50):
            stored = await cache.store("hello", vec(1), "hi again")
            if stored:
                break
            await asyncio.sleep(0.1)
        assert stored and not cache.degraded
        assert (await cache.lookup("hello", vec(1))).answer == "hi again"
    finally:
        await close(cache, store)
        kill(proc)
