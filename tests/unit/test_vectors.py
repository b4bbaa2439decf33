"""Vector stores: the embedded Qdrant Edge backend in a tmp dir, the buffer, memory, rebuild."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from hub.vectors import (
    EdgeVectorStore,
    MemoryStore,
    QdrantServerStore,
    UpsertBuffer,
    VectorPoint,
    VectorStore,
    VectorStoreError,
    rebuild_vectors,
)

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
async def edge(tmp_path: Path):
    store = EdgeVectorStore(path=tmp_path / "vectors", flush_interval_s=60)
    await store.start()
    yield store
    await store.stop()


def test_backends_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(EdgeVectorStore(path=tmp_path), VectorStore)
    assert isinstance(QdrantServerStore(url="http://127.0.0.1:6333"), VectorStore)


async def test_filtered_search_and_flush(edge: EdgeVectorStore) -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 40)
    await edge.ensure_collection("memory", DIM, keyword_fields=("site",))
    await edge.upsert("memory", [
        VectorPoint(i, vecs[i], {"site": "kitchen" if i % 2 else "office", "n": i}) for i in range(40)
    ])
    assert await edge.count("memory") == 0  # buffered until the interval or a flush
    await edge.flush()
    assert await edge.count("memory") == 40
    hits = await edge.search("memory", vecs[7], limit=3, filter={"site": "kitchen"})
    assert hits[0].id == 7 and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(h.payload["site"] == "kitchen" for h in hits) and len(hits) == 3
    office = await edge.search("memory", vecs[7], limit=5, filter={"site": "office"})
    assert 7 not in {h.id for h in office}
    await edge.delete("memory", [7])
    assert 7 not in {h.id for h in await edge.search("memory", vecs[7], limit=3)}
    await edge.delete_below("memory", "n", 10)
    assert await edge.count("memory") == 30  # 40 - #7 - the other nine below 10


async def test_buffer_flushes_at_max_points(tmp_path: Path) -> None:
    store = EdgeVectorStore(path=tmp_path, flush_interval_s=60, flush_points=8)
    await store.start()
    try:
        await store.ensure_collection("c", DIM)
        await store.upsert("c", [VectorPoint(i, unit(np.random.default_rng(i), 1)[0]) for i in range(8)])
        for _ in range(100):  # the flusher task runs on the next loop turns
            if await store.count("c") == 8:
                break
            await asyncio.sleep(0.01)
        assert await store.count("c") == 8
    finally:
        await store.stop()


async def test_persists_across_reopen_and_stop_flushes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 10)
    ids = [str(uuid.uuid4()) for _ in range(10)]
    store = EdgeVectorStore(path=tmp_path, flush_interval_s=60)
    await store.start()
    await store.ensure_collection("memory", DIM)
    await store.upsert("memory", [VectorPoint(ids[i], vecs[i], {"text": f"t{i}"}) for i in range(10)])
    await store.stop()  # must write the buffer
    again = EdgeVectorStore(path=tmp_path)
    await again.start()
    try:
        await again.ensure_collection("memory", DIM)
        assert await again.count("memory") == 10
        hit = (await again.search("memory", vecs[3], limit=1))[0]
        assert hit.id == ids[3] and hit.payload == {"text": "t3"}
        with pytest.raises(VectorStoreError):
            await again.ensure_collection("memory", DIM + 1)
    finally:
        await again.stop()


async def test_bad_ids_and_dims_are_refused(edge: EdgeVectorStore) -> None:
    await edge.ensure_collection("c", DIM)
    with pytest.raises(VectorStoreError, match="UUID"):
        await edge.upsert("c", [VectorPoint("not-a-uuid", np.zeros(DIM))])
    with pytest.raises(VectorStoreError, match="dims"):
        await edge.upsert("c", [VectorPoint(1, np.zeros(DIM + 1))])
    with pytest.raises(VectorStoreError, match="not opened"):
        await edge.search("nope", np.zeros(DIM))


async def test_failed_write_keeps_points_and_reports() -> None:
    calls: list[int] = []

    async def write(collection: str, points: list[VectorPoint]) -> None:
        calls.append(len(points))
        if len(calls) == 1:
            raise OSError("disk full")

    buf = UpsertBuffer(write, name="t", interval_s=60, max_points=4)
    buf.add("c", [VectorPoint(i, [0.0]) for i in range(3)])
    with pytest.raises(VectorStoreError, match="disk full"):
        await buf.flush()
    assert buf.pending == 3 and isinstance(buf.last_error, OSError)
    await buf.flush()
    assert buf.pending == 0 and calls == [3, 3] and buf.last_error is None


async def test_memory_store_remember_recall(edge: EdgeVectorStore) -> None:
    rng = np.random.default_rng(3)
    vecs = unit(rng, 6)
    memory = MemoryStore(store=edge, dim=DIM)
    await memory.start()
    for i, v in enumerate(vecs):
        await memory.remember(f"turn {i}", v, site="kitchen" if i < 3 else "office", user="ann", at=1000.0 + i)
    await edge.flush()
    hits = await memory.recall(vecs[4], limit=2)
    assert hits[0].payload == {"site": "office", "user": "ann", "time": 1004.0, "text": "turn 4"}
    hits = await memory.recall(vecs[4], site="kitchen", limit=5)
    assert {h.payload["text"] for h in hits} == {"turn 0", "turn 1", "turn 2"}


async def test_rebuild_from_rows(edge: EdgeVectorStore) -> None:
    rng = np.random.default_rng(4)
    table = {f"row {i}": unit(rng, 1)[0] for i in range(5)}

    async def rows() -> AsyncIterator[tuple[int, str, dict]]:
        for i, text in enumerate(table):
            yield i + 1, text, {"site": "hall", "user": "", "time": float(i)}

    async def embed(text: str) -> np.ndarray:
        return table[text]

    await edge.ensure_collection("memory", DIM)
    await edge.upsert("memory", [VectorPoint(99, unit(rng, 1)[0])])
    await edge.flush()
    assert await rebuild_vectors(edge, rows(), embed=embed, dim=DIM) == 5
    assert await edge.count("memory") == 5  # the stale point went with the old collection
    hit = (await edge.search("memory", table["row 2"], limit=1, filter={"site": "hall"}))[0]
    assert hit.id == 3 and hit.payload["text"] == "row 2"


async def test_server_backend_code_path() -> None:
    # qdrant-client's local mode stands in for a server here only (never as the hub's store)
    from qdrant_client import AsyncQdrantClient

    store = QdrantServerStore(url="test", client=AsyncQdrantClient(location=":memory:"), flush_interval_s=60)
    await store.start()
    try:
        rng = np.random.default_rng(5)
        vecs = unit(rng, 8)
        await store.ensure_collection("memory", DIM)
        await store.upsert("memory", [VectorPoint(i, vecs[i], {"site": "a" if i < 4 else "b"}) for i in range(8)])
        await store.flush()
        assert await store.count("memory") == 8
        hits = await store.search("memory", vecs[5], limit=2, filter={"site": "b"})
        assert hits[0].id == 5 and all(h.payload["site"] == "b" for h in hits)
        await store.delete("memory", [5])
        assert await store.count("memory") == 7
    finally:
        await store.stop()


async def test_index_builds_wait_for_an_idle_moment(tmp_path: Path) -> None:
    quiet = False
    store = EdgeVectorStore(path=tmp_path / "v", indexing_threshold_kb=1, idle=lambda: quiet, idle_check_s=0.05)
    await store.start()
    try:
        await store.ensure_collection("memory", 384)
        rng = np.random.default_rng(7)
        points = [VectorPoint(i + 1, (v / np.linalg.norm(v)).astype(np.float32), {"site": "k"})
                  for i, v in enumerate(rng.normal(size=(400, 384)))]
        await store.upsert("memory", points)
        await store.flush()
        await asyncio.sleep(0.3)
        info = store._shard("memory").info()
        assert info.indexed_vectors_count < info.points_count  # busy: no build inside the write path
        quiet = True
        for _ in range(100):
            info = store._shard("memory").info()
            if info.indexed_vectors_count >= info.points_count:
                break
            await asyncio.sleep(0.05)
        assert info.indexed_vectors_count == info.points_count
        hits = await store.search("memory", points[5].vector, limit=1)
        assert hits[0].id == 6
    finally:
        await store.stop()
