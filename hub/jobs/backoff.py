"""Retry delays: exponential with jitter, capped (the pg-boss / Temporal shape)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    ``min(cap, base * 2**(attempt-1))`` scaled by a factor in [0.5, 1.0): retries of runs that failed together
    spread out instead of hitting the database (or a flaky device) in lockstep, and never wait less than half
    the nominal delay.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    nominal = min(cap_s, base_s * 2 ** min(attempt - 1, 32))
    return nominal * (0.5 + rand() / 2)
