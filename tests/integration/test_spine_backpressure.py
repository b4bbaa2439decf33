"""Receive Maximum: a flood the handlers cannot keep up with waits at the broker, not in the hub's memory.

The hub asks the broker for at most ``mqtt.receive_maximum`` unacknowledged messages, and acknowledges a
message only once it has a processing slot (``SLOTS_PER_WINDOW`` × receive maximum). With the handler stuck,
what the hub takes in stops at that bound however much is published; the rest stays queued at the broker
and arrives, exactly once each, when the handler moves again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from hub.spine import Inbound, Route
from hub.spine.spine import SLOTS_PER_WINDOW
from tests.support.config import make_config
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient, running_spine

pytestmark = pytest.mark.integration

RECEIVE_MAXIMUM = 5
FLOOD = 600


async def test_a_flood_is_held_at_the_broker_and_then_delivered_once(broker: Mosquitto, db_dsn: str,
                                                                     state_dir: Path) -> None:
    cfg = make_config(dsn=db_dsn, state_dir=state_dir, mqtt_port=broker.port,
                      mqtt={"receive_maximum": RECEIVE_MAXIMUM})
    gate = asyncio.Event()
    handled: list[bytes] = []

    async def handler(msg: Inbound) -> None:
        await gate.wait()
        handled.append(msg.payload)

    route = Route(filter=f"test/{cfg.hub.id}/flood", handler=handler, name="flood", concurrency=1000, qos=1)
    bound = SLOTS_PER_WINDOW * RECEIVE_MAXIMUM + RECEIVE_MAXIMUM
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        for i in range(FLOOD):
            await c.publish(route.filter, str(i).encode(), qos=1, wait=False,
                            user_properties=[("id", str(i))])
        await c.flush()  # every message is with the broker now

        async def received() -> float:
            return env.sample("kitt_messages_received_total", topic_class="flood")

        # Let the hub take in all it will; it must stop at the bound.
        last, still = -1.0, 0
        while still < 5:
            await asyncio.sleep(0.1)
            now = await received()
            still = still + 1 if now == last else 0
            last = now
        assert SLOTS_PER_WINDOW * RECEIVE_MAXIMUM <= last <= bound
        assert len(env.spine._tasks) <= bound
        conn = await asyncpg.connect(db_dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM inbox") <= bound

            gate.set()
            for _ in range(600):
                if len(handled) >= FLOOD:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert sorted(int(p) for p in handled) == list(range(FLOOD))
            assert await conn.fetchval("SELECT count(*) FROM inbox WHERE state = 'done'") == FLOOD
        finally:
            await conn.close()
