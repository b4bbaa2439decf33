"""Persist before acknowledge: the hub's PUBREC leaves only after the inbox row committed.

Acks are hop by hop (the publisher's PUBREC comes from the broker), so a tap sits between the hub and the
broker and records the hub's own packets. The test holds the inbox INSERT back with a table lock and shows
that no PUBREC goes out while the INSERT waits; once released, the PUBREC comes, and at that moment the row
is visible. A contrasting test shows why the flag matters: gmqtt with optimistic acknowledgement (like paho
and aiomqtt 2.x, see docs/spine.md) sends PUBREC while the application has not even looked at the message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import MQTTv50

from tests.support.config import make_config
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import MqttTap, Packet, TestClient, running_spine

pytestmark = pytest.mark.integration


@pytest.fixture
async def tap(broker: Mosquitto) -> AsyncIterator[MqttTap]:
    async with MqttTap(broker.port) as t:
        yield t


async def _wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_pubrec_is_sent_only_after_the_inbox_commit(broker: Mosquitto, db_dsn: str, state_dir: Path) -> None:
    checks: list[int] = []
    observer = await asyncpg.connect(db_dsn)

    async def on_packet(p: Packet) -> None:
        if p.direction == "up" and p.kind == "PUBREC":
            # Held back until we looked: the row must already be committed (visible to another session).
            checks.append(await observer.fetchval("SELECT count(*) FROM inbox WHERE topic = $1", ask_topic))

    tap = MqttTap(broker.port, on_packet=on_packet)
    await tap.start()
    cfg = make_config(dsn=db_dsn, state_dir=state_dir, mqtt={"url": f"mqtt://127.0.0.1:{tap.port}"})
    ask_topic = f"kitt/{cfg.hub.id}/ask"
    locker = await asyncpg.connect(db_dsn)
    try:
        async with running_spine(cfg, plugins=("handlers.ask",)), TestClient(broker.port) as client:
            replies = await client.collect(f"kitt/{cfg.hub.id}/reply/#")
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE inbox IN EXCLUSIVE MODE")  # INSERTs wait, reads go on

            rid = uuid.uuid4().hex
            await client.publish(ask_topic, {"id": rid, "text": "hello", "site": "hall"}, qos=2)

            async def insert_is_waiting() -> bool:
                # pg_locks, not pg_stat_activity's query text (a statement prepared before runs without
                # updating it, so the waiting INSERT can show as the connection's previous query).
                return bool(await observer.fetchval(
                    """SELECT count(*) FROM pg_locks WHERE relation = 'inbox'::regclass AND NOT granted
                       AND pid <> pg_backend_pid()"""))

            await _wait_until(insert_is_waiting, what="the hub's inbox INSERT to block on the lock")
            # The hub has the message (PUBLISH went down to it) and is committing it: no PUBREC yet.
            assert [p for p in tap.of("PUBLISH", "down") if p.topic == ask_topic]
            assert tap.of("PUBREC", "up") == []
            assert await observer.fetchval("SELECT count(*) FROM inbox") == 0

            await tx.rollback()  # release the lock: the INSERT commits, then the PUBREC goes out
            got = await replies.wait_for(1, 15)
            assert got[0].json()["id"] == rid
            assert len(tap.of("PUBREC", "up")) == 1
            assert checks == [1]
            await replies.settle(0.3)
            assert len(replies.messages) == 1
    finally:
        await tap.stop()
        await locker.close()
        await observer.close()


@pytest.mark.parametrize("optimistic", [True, False])
async def test_gmqtt_acknowledgement_modes(tap: MqttTap, broker: Mosquitto, optimistic: bool) -> None:
    """With optimistic acknowledgement PUBREC precedes the application; without it, it waits for it."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def on_message(client: Client, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        entered.set()
        await release.wait()  # the application "persisting" the message
        return 0

    topic = f"test/{uuid.uuid4().hex}"
    sub = Client(f"sub-{uuid.uuid4().hex[:8]}", optimistic_acknowledgement=optimistic)
    sub.on_message = on_message
    await sub.connect("127.0.0.1", tap.port, version=MQTTv50)
    try:
        sub.subscribe(Subscription(topic, qos=2))
        await _wait_until(lambda: _true(bool(tap.of("SUBACK", "down"))), what="SUBACK")
        async with TestClient(broker.port) as pub:
            await pub.publish(topic, b"payload", qos=2)
        await asyncio.wait_for(entered.wait(), 10)
        await asyncio.sleep(0.2)  # give an early PUBREC every chance to show up
        pubrecs_while_busy = len(tap.of("PUBREC", "up"))
        release.set()
        await _wait_until(lambda: _true(bool(tap.of("PUBREC", "up"))), what="PUBREC")
    finally:
        await sub.disconnect()
    assert pubrecs_while_busy == (1 if optimistic else 0)


async def _true(value: bool) -> bool:
    return value
