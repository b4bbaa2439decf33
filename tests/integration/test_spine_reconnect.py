"""Starting without a broker: the spine keeps trying with back-off, is not ready meanwhile, and becomes
ready by itself once the broker is there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.config import make_config
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient, running_spine

pytestmark = pytest.mark.integration


async def test_the_spine_waits_for_the_broker_and_connects_when_it_comes(db_dsn: str, state_dir: Path) -> None:
    broker = Mosquitto()  # not started yet
    cfg = make_config(dsn=db_dsn, state_dir=state_dir, mqtt_port=broker.port, mqtt={"reconnect_max_s": 1.0})
    try:
        async with running_spine(cfg, plugins=("handlers.ask",), wait_ready=False) as env:
            for _ in range(40):  # a few attempts go by
                if env.spine.connection._attempt >= 3:
                    break
                await asyncio.sleep(0.1)
            assert env.spine.connection._attempt >= 3
            assert not env.spine.ready and not env.spine.status["connected"]
            await asyncio.to_thread(broker.start)
            await env.spine.wait_ready(15)
            async with TestClient(broker.port) as c:
                replies = await c.collect(f"kitt/{cfg.hub.id}/reply/#")
                await c.publish(f"kitt/{cfg.hub.id}/ask", {"id": "late", "text": "there now?", "site": "hall"})
                [reply] = await replies.wait_for(1, 10)
                assert reply.json()["id"] == "late"
    finally:
        broker.close()
