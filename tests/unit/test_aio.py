"""``wait_event``: an event wait with a timeout that never loses a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from hub.aio import wait_event


async def test_returns_true_when_set_and_false_on_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True


@pytest.mark.parametrize("delay_steps", range(4))
async def test_a_cancel_arriving_as_the_event_fires_stops_the_loop(delay_steps: int) -> None:
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    for _ in range(3):
        await asyncio.sleep(0)  # the loop waits on the event
    event.set()
    for _ in range(delay_steps):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
