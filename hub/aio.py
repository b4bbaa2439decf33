"""asyncio helpers the standard library gets subtly wrong for long-running loops."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; True if it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives while the event fires,
    and a loop around it then never ends (seen as a hub that did not stop on SIGTERM). ``asyncio.timeout``
    keeps the cancellation.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
