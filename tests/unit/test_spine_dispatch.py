"""Dispatch rules of the spine without I/O: routes that keep no inbox row (``durable=False``), messages fed
straight into ``Spine._on_message`` the way gmqtt calls it; the return value is what gmqtt would turn into
PUBACK/PUBREC (a coroutine that has not returned has not been acknowledged).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hub.errors import InputRejected
from hub.metrics import Metrics
from hub.spine import Inbound, Route, Spine
from hub.spine.spine import SLOTS_PER_WINDOW
from hub.store import Store
from tests.support.config import make_config


class Body(BaseModel):
    k: str
    n: int


@pytest.fixture
async def spine(tmp_path: Path) -> AsyncIterator[Spine]:
    cfg = make_config(dsn="postgresql://nobody@127.0.0.1:1/none", state_dir=tmp_path, mqtt={"receive_maximum": 2})
    metrics = Metrics()
    sp = Spine(config=cfg, store=Store(dsn=cfg.database.url, metrics=metrics), metrics=metrics)
    yield sp
    for task in list(sp._tasks):
        task.cancel()
    await asyncio.gather(*sp._tasks, return_exceptions=True)


def _sample(sp: Spine, name: str, **labels: str) -> float:
    return sp._metrics.registry.get_sample_value(name, labels) or 0.0


async def _settle(sp: Spine) -> None:
    while sp._tasks:
        await asyncio.gather(*list(sp._tasks), return_exceptions=True)


def _msg(k: str, n: int) -> bytes:
    return json.dumps({"k": k, "n": n}).encode()


async def test_per_key_ordering_holds_while_keys_run_in_parallel(spine: Spine) -> None:
    seen: dict[str, list[int]] = {}
    running: set[str] = set()
    overlap = {"max": 0}

    async def handler(msg: Inbound) -> None:
        running.add(msg.data.k)
        overlap["max"] = max(overlap["max"], len(running))
        await asyncio.sleep(random.uniform(0, 0.003))
        seen.setdefault(msg.data.k, []).append(msg.data.n)
        running.discard(msg.data.k)

    spine.add_route(Route(filter="t/+", handler=handler, name="ordered", model=Body, durable=False,
                          ordering_key=lambda m: m.data.k, concurrency=8))
    for n in range(40):
        for k in ("a", "b", "c"):
            assert await spine._on_message(f"t/{k}", _msg(k, n), 1, {}) == 0
    await _settle(spine)
    assert seen == {k: list(range(40)) for k in ("a", "b", "c")}
    assert overlap["max"] > 1  # different keys did run side by side


async def test_route_concurrency_limit_is_respected(spine: Spine) -> None:
    gate = asyncio.Event()
    state = {"now": 0, "max": 0, "done": 0}

    async def handler(msg: Inbound) -> None:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await gate.wait()
        state["now"] -= 1
        state["done"] += 1

    spine.add_route(Route(filter="c", handler=handler, name="limited", durable=False, concurrency=3))
    for i in range(8):  # within the processing slots (SLOTS_PER_WINDOW × receive_maximum)
        await spine._on_message("c", str(i).encode(), 1, {})
    await asyncio.sleep(0.05)
    assert state["max"] == 3
    gate.set()
    await _settle(spine)
    assert state == {"now": 0, "max": 3, "done": 8}


async def test_a_handler_exception_never_stops_the_spine(spine: Spine) -> None:
    handled: list[int] = []

    async def handler(msg: Inbound) -> None:
        if msg.data.n % 3 == 0:
            raise RuntimeError(f"bug on {msg.data.n}")
        handled.append(msg.data.n)

    spine.add_route(Route(filter="e", handler=handler, name="buggy", model=Body, durable=False))
    for n in range(9):
        assert await spine._on_message("e", _msg("x", n), 2, {}) == 0
    await _settle(spine)
    assert sorted(handled) == [1, 2, 4, 5, 7, 8]
    assert _sample(spine, "kitt_handler_errors_total", handler="buggy") == 3


async def test_rejections_are_counted_by_reason_and_acknowledged(spine: Spine) -> None:
    called: list[Any] = []

    async def handler(msg: Inbound) -> None:
        if msg.data.n == 99:
            raise InputRejected("unknown_site", "no such site")
        called.append(msg.data)

    spine.add_route(Route(filter="cmd", handler=handler, name="cmd", model=Body, durable=False,
                          accept_retained=False))
    cases = [
        (b"garbage", {}, "invalid_json"),
        (b'{"k": "a"}', {}, "invalid_payload"),
        (b'{"k": "a", "n": "x"}', {}, "invalid_payload"),
        (b"\xff\xfe", {}, "invalid_json"),
        (_msg("a", 1), {"retain": 1}, "retained_command"),
        (_msg("a", 99), {}, "unknown_site"),
    ]
    for payload, props, _reason in cases:
        # Acknowledged (0): a bad message is answered with an error, never left for redelivery.
        assert await spine._on_message("cmd", payload, 1, props) == 0
    await _settle(spine)
    assert called == []
    for reason, count in {"invalid_json": 2, "invalid_payload": 2, "retained_command": 1, "unknown_site": 1}.items():
        assert _sample(spine, "kitt_messages_rejected_total", reason=reason) == count, reason


async def test_processing_slots_bound_what_is_acknowledged(spine: Spine) -> None:
    """Back-pressure: past the slots, a QoS 1/2 message is not acknowledged (so the broker window fills)
    and a QoS 0 message is shed."""
    gate = asyncio.Event()

    async def handler(msg: Inbound) -> None:
        await gate.wait()

    slots = SLOTS_PER_WINDOW * 2  # receive_maximum = 2 in the fixture
    spine.add_route(Route(filter="f", handler=handler, name="flood", durable=False, concurrency=100))
    receipts = [asyncio.create_task(spine._on_message("f", b"x", 1, {})) for _ in range(slots + 5)]
    await asyncio.sleep(0.05)
    assert sum(r.done() for r in receipts) == slots
    assert await spine._on_message("f", b"x", 0, {}) == 0
    assert _sample(spine, "kitt_messages_rejected_total", reason="overloaded") == 1
    gate.set()
    assert await asyncio.gather(*receipts) == [0] * (slots + 5)
    await _settle(spine)
