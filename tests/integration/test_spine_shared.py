"""Two hubs, one shared group: ``$share/<group>/kitt/<hub>/ask`` splits the requests between two processes
(different MQTT client ids, one database); 1,000 requests get 1,000 replies and none is handled twice."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.support.config import free_port, make_config_dict
from tests.support.hubproc import HubProcess, event_counts
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient, check_replies

pytestmark = pytest.mark.integration

REQUESTS = 1000


async def test_two_hubs_split_the_load_and_handle_each_request_once(broker: Mosquitto, db_dsn: str,
                                                                    tmp_path: Path) -> None:
    base = make_config_dict(dsn=db_dsn, state_dir=tmp_path / "state", mqtt_port=broker.port,
                            plugins=("handlers.ask", "tests.support.spine_routes"))
    hub_id = base["hub"]["id"]
    hubs = []
    for name in ("hub-a", "hub-b"):
        cfg = {**base, "mqtt": {**base["mqtt"], "client_id": f"{hub_id}-{name}", "shared_group": "kitt-hubs"},
               "web": {**base["web"], "listen": f"127.0.0.1:{free_port()}"},
               "hub": {**base["hub"], "state_dir": str(tmp_path / name)}}
        hubs.append(HubProcess(cfg, tmp_path, name=name))
    ids = {f"sh-{i:04d}" for i in range(REQUESTS)}
    with hubs[0], hubs[1]:
        async with TestClient(broker.port) as c:
            replies = await c.collect(f"kitt/{hub_id}/reply/#")
            echoes = await c.collect("test/echo/replies")
            for rid in sorted(ids):
                await c.publish(f"kitt/{hub_id}/ask", {"id": rid, "text": "who answers?", "site": "lab"}, wait=False)
            # A second shared route, answered on a Response Topic.
            for i in range(100):
                await c.publish(f"kitt/{hub_id}/test/echo", {"id": f"e{i}", "n": i}, wait=False,
                                response_topic="test/echo/replies")
            await c.flush(60)
            await replies.wait_for(REQUESTS, 90)
            await echoes.wait_for(100, 30)
            await replies.settle(0.5)
            assert check_replies(replies.messages, ids) == 0
            assert sorted(m.json()["n"] for m in echoes.messages) == list(range(100))
        assert hubs[0].stop() == 0 and hubs[1].stop() == 0

    answered = await event_counts(db_dsn, "ask.answered")
    assert set(answered) == ids and set(answered.values()) == {1}
    conn = await asyncpg.connect(db_dsn)
    try:
        per_hub = dict(await conn.fetch("SELECT claimed_by, count(*) FROM inbox WHERE topic LIKE '%/ask' GROUP BY 1"))
    finally:
        await conn.close()
    # Each request has one inbox row, and both instances took a share of them.
    assert sum(per_hub.values()) == REQUESTS
    assert set(per_hub) == {f"{hub_id}-hub-a", f"{hub_id}-hub-b"}
    assert min(per_hub.values()) > REQUESTS // 10, per_hub
