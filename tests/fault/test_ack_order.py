"""Persist before acknowledge, by killing: the hub dies after it received a request and before the inbox row
committed. Had it acknowledged on receipt (as paho/aiomqtt 2.x do), the broker would consider the message
delivered and it would be lost. Because the PUBREC waits for the commit, the broker delivers it again after
the restart and it is answered exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.support.config import make_config_dict
from tests.support.hubproc import HubProcess, event_counts
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = pytest.mark.fault


async def test_killed_between_receive_and_commit_the_broker_redelivers(broker: Mosquitto, db_dsn: str,
                                                                      tmp_path: Path) -> None:
    cfg = make_config_dict(dsn=db_dsn, state_dir=tmp_path / "state", mqtt_port=broker.port, plugins=("handlers.ask",))
    hub_id = cfg["hub"]["id"]
    hub = HubProcess(cfg, tmp_path)
    hub.start()
    admin = await asyncpg.connect(db_dsn)
    try:
        async with TestClient(broker.port, clean_start=False, session_expiry_s=3600) as client:
            replies = await client.collect(f"kitt/{hub_id}/reply/#")
            tx = admin.transaction()
            await tx.start()
            await admin.execute("LOCK TABLE inbox IN EXCLUSIVE MODE")
            await client.publish(f"kitt/{hub_id}/ask", {"id": "the-one", "text": "are you there?", "site": "den"})

            for _ in range(500):  # until the hub's INSERT of it waits on our lock
                # pg_locks, not pg_stat_activity's query text: a statement the connection prepared before runs
                # without updating that text, so the waiting INSERT can show as the connection's last query.
                waiting = await admin.fetch("""SELECT pid FROM pg_locks WHERE relation = 'inbox'::regclass
                                                 AND NOT granted AND pid <> pg_backend_pid()""")
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting, "the hub never tried to commit the request"

            await asyncio.to_thread(hub.kill)
            # The killed process's session would still finish its INSERT once the lock goes: end it first,
            # so the only copy left is the broker's.
            for row in waiting:
                await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])
            await tx.rollback()
            assert await admin.fetchval("SELECT count(*) FROM inbox") == 0
            assert replies.messages == []

            await asyncio.to_thread(hub.start)
            [reply] = await replies.wait_for(1, 30)
            assert reply.json()["id"] == "the-one"
            await replies.settle(0.5)
            assert len(replies.messages) == 1
        assert hub.stop() == 0
    finally:
        hub.kill()
        await admin.close()
    assert await event_counts(db_dsn, "ask.answered") == {"the-one": 1}
