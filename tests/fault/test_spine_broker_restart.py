"""Broker restart mid-stream (persistence on): the hub reconnects by itself (back-off with jitter), loses
nothing it acknowledged, and the outbox delivers every row."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.config import make_config_dict
from tests.support.hubproc import HubProcess, db_value, event_counts
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient, check_replies

pytestmark = pytest.mark.fault

REQUESTS = 600


@pytest.mark.parametrize("down_s", [0.0, 2.5])
async def test_broker_restart_mid_stream(broker: Mosquitto, db_dsn: str, tmp_path: Path, down_s: float) -> None:
    cfg = make_config_dict(dsn=db_dsn, state_dir=tmp_path / "state", mqtt_port=broker.port, plugins=("handlers.ask",))
    hub_id = cfg["hub"]["id"]
    ask = f"kitt/{hub_id}/ask"
    ids = [f"br-{i:04d}" for i in range(REQUESTS)]
    with HubProcess(cfg, tmp_path) as hub:
        # Both test clients keep sessions too, so neither loses what the broker queued for it meanwhile.
        async with TestClient(broker.port, clean_start=False, session_expiry_s=3600) as collector, \
                TestClient(broker.port, clean_start=False, session_expiry_s=3600) as publisher:
            replies = await collector.collect(f"kitt/{hub_id}/reply/#")
            half = REQUESTS // 2
            for rid in ids[:half]:
                await publisher.publish(ask, {"id": rid, "text": "first half", "site": "lab"}, wait=False)
            await publisher.flush(30)
            # Restart while the hub is still working through the first half.
            answered_before = len(replies.messages)
            await asyncio.to_thread(broker.restart, down_s=down_s)
            assert answered_before < half, "the restart came too late to be mid-stream"
            for rid in ids[half:]:
                await publisher.publish(ask, {"id": rid, "text": "second half", "site": "lab"}, wait=False,
                                        timeout=60)
            await publisher.flush(60)
            await replies.wait_for(REQUESTS, 90)
            await replies.settle(0.5)
            check_replies(replies.messages, set(ids))
            metrics = hub.metrics()
            assert metrics.get("kitt_mqtt_reconnects_total", 0) >= 1
            assert metrics.get("kitt_mqtt_connected") == 1
            status, _ = hub.get("/readyz")
            assert status == 200
        assert hub.stop() == 0
    answered = await event_counts(db_dsn, "ask.answered")
    assert set(answered) == set(ids) and set(answered.values()) == {1}
    assert await db_value(db_dsn, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    assert await db_value(db_dsn, "SELECT count(*) FROM outbox") == REQUESTS
    assert await db_value(db_dsn, "SELECT count(*) FROM inbox WHERE state <> 'done'") == 0
