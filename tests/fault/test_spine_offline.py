"""Offline: requests published while the hub is stopped wait in its persistent session at the broker and are
processed exactly once when it starts again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.config import make_config_dict
from tests.support.hubproc import HubProcess, db_value, event_counts
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient, check_replies

pytestmark = pytest.mark.fault

REQUESTS = 200


async def test_requests_sent_while_the_hub_is_down_are_processed_once(broker: Mosquitto, db_dsn: str,
                                                                      tmp_path: Path) -> None:
    cfg = make_config_dict(dsn=db_dsn, state_dir=tmp_path / "state", mqtt_port=broker.port, plugins=("handlers.ask",))
    hub_id = cfg["hub"]["id"]
    ids = {f"off-{i:03d}" for i in range(REQUESTS)}
    hub = HubProcess(cfg, tmp_path)
    hub.start()  # the first run makes the broker session and its subscriptions
    assert hub.stop() == 0
    try:
        async with TestClient(broker.port, clean_start=False, session_expiry_s=3600) as collector, \
                TestClient(broker.port) as publisher:
            replies = await collector.collect(f"kitt/{hub_id}/reply/#")
            status = await collector.collect(f"kitt/{hub_id}/status", qos=1)
            for rid in sorted(ids):
                await publisher.publish(f"kitt/{hub_id}/ask", {"id": rid, "text": "hi", "site": "porch"}, qos=2,
                                        wait=False)
            await publisher.flush(30)
            assert [m.payload for m in await status.wait_for(1, 5)] == [b"offline"]  # retained, from the stop
            assert replies.messages == []
            assert await db_value(db_dsn, "SELECT count(*) FROM inbox") == 0

            hub.start()
            await replies.wait_for(REQUESTS, 60)
            await replies.settle(0.5)
            raw_duplicates = check_replies(replies.messages, ids)
            assert raw_duplicates == 0  # no crash here, so no copy either
            assert b"online" in [m.payload for m in status.messages]
        assert hub.stop() == 0
    finally:
        hub.kill()
    answered = await event_counts(db_dsn, "ask.answered")
    assert set(answered) == ids and set(answered.values()) == {1}
    assert await db_value(db_dsn, "SELECT count(*) FROM inbox WHERE state = 'done'") == REQUESTS
