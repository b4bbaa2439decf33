"""``RetryingBatches``: what queues during a write goes into the next one; a failed write is retried, never
dropped, and ``after`` sees each item once, in order."""

from __future__ import annotations

import asyncio

import pytest

from hub.errors import StoreError
from hub.spine import batching
from hub.spine.batching import RetryingBatches


async def test_a_failed_batch_is_written_again_before_what_queued_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "RETRY_AFTER_S", 0.01)
    writes: list[list[int]] = []
    written: list[list[int]] = []
    gate = asyncio.Event()

    async def write(batch: list[int]) -> None:
        writes.append(list(batch))
        if len(writes) == 1:
            await gate.wait()
            raise StoreError("database away")

    batches = RetryingBatches("write numbers", write, written.append)
    task = asyncio.create_task(batches.run())
    try:
        batches.add([1, 2])
        for _ in range(100):
            if writes:
                break
            await asyncio.sleep(0.001)
        assert batches.writing == [1, 2] and batches
        batches.add([3])  # arrives while the first write runs (and then fails)
        gate.set()
        for _ in range(200):
            if sum(map(len, written)) == 3:
                break
            await asyncio.sleep(0.005)
        assert writes == [[1, 2], [1, 2, 3]]
        assert written == [[1, 2, 3]]
        assert not batches
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
