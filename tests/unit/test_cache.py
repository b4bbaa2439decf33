"""Semantic cache with the in-process backend: exact/semantic hits, polarity guard, TTL, LRU, tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hub.cache import MemoryBackend, SemanticCache, compatible, signature
from hub.embeddings import Embedder
from hub.metrics import Metrics
from hub.vectors import EdgeVectorStore

ROOT = Path(__file__).resolve().parents[2]

OPPOSITE_PAIRS = [
    ("turn on the kitchen light", "turn off the kitchen light"),
    ("switch on the heater", "switch off the heater"),
    ("open the garage door", "close the garage door"),
    ("open the blinds in the bedroom", "shut the blinds in the bedroom"),
    ("lock the front door", "unlock the front door"),
    ("is the back door locked", "is the back door unlocked"),
    ("arm the alarm", "disarm the alarm"),
    ("turn the volume up", "turn the volume down"),
    ("start the dishwasher", "stop the dishwasher"),
    ("enable guest mode", "disable guest mode"),
    ("increase the fan speed", "decrease the fan speed"),
    ("raise the kitchen shutters", "lower the kitchen shutters"),
    ("make it warmer in the living room", "make it cooler in the living room"),
    ("make the lights brighter", "make the lights dimmer"),
    ("add milk to the shopping list", "remove milk from the shopping list"),
    ("turn on the porch light tonight", "don't turn on the porch light tonight"),
    ("the heating is working", "the heating is not working"),
    ("always unlock the door for the cleaner", "never unlock the door for the cleaner"),
    ("set the thermostat to 21 degrees", "set the thermostat to 22 degrees"),
    ("what's the weather like today", "what's the weather like tomorrow"),
    ("how cold is it outside", "how cold is it inside"),
]


@pytest.fixture(scope="module")
def vectors_of() -> dict[str, np.ndarray]:
    import asyncio

    async def embed_all() -> dict[str, np.ndarray]:
        texts = {t for pair in OPPOSITE_PAIRS for t in pair} | {
            "what will the weather be like tomorrow", "who wrote pride and prejudice",
            "who is the author of pride and prejudice", "tell me a joke", "what is the capital of australia",
        }
        emb = Embedder(model_path=ROOT / "models/onnx/model_int8.onnx",
                       tokenizer_path=ROOT / "models/onnx/tokenizer.json")
        async with emb:
            return {t: np.array(await emb.embed(t)) for t in texts}

    return asyncio.run(embed_all())


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_cache(tmp_path: Path):
    made: list[tuple[SemanticCache, EdgeVectorStore]] = []

    async def make(*, max_entries: int = 100, threshold: float = 0.9, ttl_s: float = 3600.0):
        store = EdgeVectorStore(path=tmp_path / f"v{len(made)}", flush_interval_s=60)
        await store.start()
        clock, metrics = Clock(), Metrics()
        cache = SemanticCache(backend=MemoryBackend(max_entries=max_entries), vectors=store, metrics=metrics,
                              threshold=threshold, ttl_s=ttl_s, clock=clock)
        await cache.start()
        made.append((cache, store))
        return cache, store, clock, metrics

    yield make
    for cache, store in made:
        await cache.stop()
        await store.stop()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


@pytest.mark.parametrize(("a", "b"), OPPOSITE_PAIRS)
def test_signatures_differ_for_opposites(a: str, b: str) -> None:
    assert not compatible(a, b) and not compatible(b, a)
    assert signature(a) != signature(b)


@pytest.mark.parametrize(("a", "b"), [
    ("turn on the kitchen light", "switch on the kitchen light"),
    ("what's the weather like tomorrow", "what will the weather be like tomorrow"),
    ("I don't want the alarm on", "i do not want the alarm on"),
])
def test_paraphrases_stay_compatible(a: str, b: str) -> None:
    assert compatible(a, b)


@pytest.mark.parametrize(("a", "b"), OPPOSITE_PAIRS)
async def test_opposite_never_hits_either_way(make_cache, vectors_of, a: str, b: str) -> None:
    for stored, asked in ((a, b), (b, a)):
        # threshold 0: the guard alone must keep the opposite answer out
        cache, store, _, _ = await make_cache(threshold=0.0)
        await cache.store(stored, vectors_of[stored], f"answer for {stored}")
        await store.flush()
        assert (await cache.lookup(stored, vectors_of[stored])).kind == "exact"
        assert await cache.lookup(asked, vectors_of[asked]) is None, f"{asked!r} got {stored!r}'s answer"


async def test_exact_and_semantic_hits_and_metrics(make_cache, vectors_of) -> None:
    cache, store, _, metrics = await make_cache(threshold=0.85)
    q = "what's the weather like tomorrow"
    assert await cache.store(q, vectors_of[q], "sunny", tags=["weather"])
    await store.flush()
    hit = await cache.lookup("  What's the WEATHER like tomorrow?", vectors_of[q])
    assert hit is not None and hit.kind == "exact" and hit.answer == "sunny" and hit.tags == ("weather",)
    para = "what will the weather be like tomorrow"
    hit = await cache.lookup(para, vectors_of[para])
    assert hit is not None and hit.kind == "semantic" and hit.answer == "sunny" and hit.score >= 0.85
    assert await cache.lookup("tell me a joke", vectors_of["tell me a joke"]) is None
    assert sample(metrics, "kitt_cache_hits_total", kind="exact") == 1
    assert sample(metrics, "kitt_cache_hits_total", kind="semantic") == 1
    assert sample(metrics, "kitt_cache_misses_total") == 1
    stats = await cache.stats()
    assert stats == {"entries": 1, "hits": 2, "misses": 1, "hit_ratio": pytest.approx(2 / 3),
                     "evictions": 0, "degraded": False}


async def test_ttl_expiry(make_cache, vectors_of) -> None:
    cache, store, clock, _ = await make_cache(threshold=0.8, ttl_s=60)
    q, para = "who wrote pride and prejudice", "who is the author of pride and prejudice"
    await cache.store(q, vectors_of[q], "Jane Austen")
    await cache.store("tell me a joke", vectors_of["tell me a joke"], "knock knock", ttl_s=600)
    await store.flush()
    clock.now += 59
    assert await cache.lookup(q, vectors_of[q]) is not None
    assert await cache.lookup(para, vectors_of[para]) is not None
    clock.now += 2
    assert await cache.lookup(q, vectors_of[q]) is None
    assert await cache.lookup(para, vectors_of[para]) is None
    assert (await cache.lookup("tell me a joke", vectors_of["tell me a joke"])).answer == "knock knock"
    await cache.sweep()
    assert await store.count("cache") == 1  # the expired vector went too
    with pytest.raises(ValueError):
        await cache.store(q, vectors_of[q], "x", ttl_s=0)


async def test_lru_eviction_at_max_entries(make_cache, vectors_of) -> None:
    cache, store, clock, metrics = await make_cache(max_entries=3)
    texts = ["tell me a joke", "who wrote pride and prejudice", "what is the capital of australia",
             "turn on the kitchen light"]
    for t in texts[:3]:
        clock.now += 1
        await cache.store(t, vectors_of[t], t.upper())
    assert await cache.lookup(texts[0], vectors_of[texts[0]]) is not None  # now the most recent
    await cache.store(texts[3], vectors_of[texts[3]], "x")
    await store.flush()
    assert await cache.lookup(texts[1], vectors_of[texts[1]]) is None  # the least recently used
    for t in (texts[0], texts[2], texts[3]):
        assert await cache.lookup(t, vectors_of[t]) is not None
    assert (await cache.stats())["entries"] == 3 and cache.evictions == 1
    assert sample(metrics, "kitt_cache_evictions_total") == 1
    assert sample(metrics, "kitt_cache_entries") == 3
    assert await store.count("cache") == 3


async def test_invalidate_by_key_tag_and_all(make_cache, vectors_of) -> None:
    cache, store, _, _ = await make_cache(threshold=0.8)
    q, para = "what's the weather like tomorrow", "what will the weather be like tomorrow"
    await cache.store(q, vectors_of[q], "sunny", tags=["weather", "sensor.outside"])
    await cache.store("tell me a joke", vectors_of["tell me a joke"], "knock knock", tags=["fun"])
    j = "who wrote pride and prejudice"
    await cache.store(j, vectors_of[j], "Austen")
    await store.flush()
    assert await cache.invalidate_tag("sensor.outside") == 1
    assert await cache.lookup(q, vectors_of[q]) is None
    assert await cache.lookup(para, vectors_of[para]) is None
    assert await cache.invalidate_key("Tell me a JOKE!") == 1
    assert await cache.lookup("tell me a joke", vectors_of["tell me a joke"]) is None
    assert await cache.invalidate_all() == 1
    assert await cache.lookup(j, vectors_of[j]) is None
    assert (await cache.stats())["entries"] == 0 and await store.count("cache") == 0
