"""The connection: starting without a broker (back-off until it comes; not ready meanwhile), and the packet
ids a crashed process left at the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50

from hub.spine.client import MqttConnection
from tests.support.config import make_config
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import MqttTap, Packet, TestClient, running_spine
from tests.support.wait import eventually

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


async def test_a_new_process_releases_the_packet_ids_its_predecessor_left(tmp_path: Path) -> None:
    """The previous process published A (QoS 2) and died after the broker's PUBREC, before its PUBREL.
    The next process (same client id, session kept) starts its packet ids at 1 again: its message B must
    not be mistaken for a resend of A."""
    never = asyncio.Event()

    async def hold_pubrel(p: Packet) -> None:
        if p.direction == "up" and p.kind == "PUBREL":
            await never.wait()  # the "crash": the PUBREL never reaches the broker

    with Mosquitto() as broker:
        cfg = make_config(dsn="postgresql://unused@127.0.0.1:1/x", state_dir=tmp_path, mqtt_port=broker.port)
        async with TestClient(broker.port) as watcher, MqttTap(broker.port, on_packet=hold_pubrel) as tap:
            got = await watcher.collect("pid/#")
            old = Client(cfg.client_id, clean_session=False, session_expiry_interval=3600)
            await old.connect("127.0.0.1", tap.port, version=MQTTv50)
            old.publish("pid/a", b"A", qos=2)
            for _ in range(100):
                if tap.of("PUBREL", "up"):
                    break
                await asyncio.sleep(0.02)
            assert tap.of("PUBREC", "down") and tap.of("PUBREL", "up")
            old.stop_reconnect()
            tap.drop_all()
            await asyncio.sleep(0.2)
            assert got.messages == []  # Mosquitto holds A until the PUBREL

            async def accept(*_: object) -> int:
                return 0

            async def connected(_: bool) -> None:
                return None

            new = MqttConnection(settings=cfg.mqtt, client_id=cfg.client_id, status_topic="pid-status/x",
                                 on_message=accept, on_connected=connected, on_disconnected=lambda: None)
            await new.start()
            try:
                await new.wait_connected(10)
                await new.publish("pid/b", b"B", qos=2)
                await got.wait_for(2, 10)
                await got.settle(0.3)
            finally:
                await new.stop()
            assert sorted(m.payload for m in got.messages) == [b"A", b"B"]


async def test_a_lost_session_keeps_the_relays_ids_taken_until_it_frees_them(tmp_path: Path) -> None:
    """The broker lost the session (killed before any save) while a relay publish was in flight under id M.
    The row may still carry M in the table, so M must not go to another row before the relay clears it from
    the row and frees it: two unsent rows with one id would let a successor finish the wrong handshake."""
    with Mosquitto(autosave_interval=3600) as broker:
        cfg = make_config(dsn="postgresql://unused@127.0.0.1:1/x", state_dir=tmp_path, mqtt_port=broker.port,
                          mqtt={"reconnect_max_s": 0.5})
        sessions: list[bool] = []

        async def accept(*_: object) -> int:
            return 0

        async def connected(session_present: bool) -> None:
            sessions.append(session_present)

        conn = MqttConnection(settings=cfg.mqtt, client_id=cfg.client_id, status_topic="lost-status/x",
                              on_message=accept, on_connected=connected, on_disconnected=lambda: None)
        await conn.start()
        try:
            await conn.wait_connected(10)
            [mid] = conn.allocate_mids(1)
            await asyncio.to_thread(broker.kill)  # no save: the session is gone with it
            await eventually(lambda: not conn.connected, timeout=2.0, interval=0.02)
            done = conn.publish_with_mid(mid, Message("lost/a", b"A", qos=2))  # stored, for the replay
            await asyncio.to_thread(broker.start)
            await conn.wait_connected(15)
            with pytest.raises(Exception):  # noqa: B017 - gmqtt's own error type for a dropped store
                await asyncio.wait_for(done, 5)
            assert sessions[-1] is False
            taken: list[int] = []  # every id the pool has left (it hands them out round-robin)
            while batch := conn.allocate_mids(1024):
                taken += batch
            assert taken and mid not in taken
            conn.free_mids([mid])  # the relay cleared the row: now the id may carry another
            assert conn.allocate_mids(1) == [mid]
            conn.free_mids([*taken, mid])
        finally:
            await conn.stop()


async def test_rows_in_flight_when_the_broker_loses_the_session_are_sent_afresh(db_dsn: str,
                                                                             state_dir: Path) -> None:
    """The broker dies before any save with 10 outbox rows between PUBLISH and PUBREC. After the reconnect
    (no session) they go out again under new ids, 100 more rows go out meanwhile, no two unsent rows ever
    carry the same id, and every id goes back to the pool."""
    flowing = asyncio.Event()

    async def hold_pubrecs(p: Packet) -> None:
        if p.direction == "down" and p.kind == "PUBREC":
            await flowing.wait()

    dup_sql = """SELECT count(*) FROM (SELECT packet_id FROM outbox WHERE sent_at IS NULL AND packet_id IS NOT NULL
                 GROUP BY packet_session, packet_id HAVING count(*) > 1) d"""
    with Mosquitto(autosave_interval=3600) as broker:
        async with MqttTap(broker.port, on_packet=hold_pubrecs) as tap:
            cfg = make_config(dsn=db_dsn, state_dir=state_dir, mqtt_port=tap.port, mqtt={"reconnect_max_s": 0.5})
            async with running_spine(cfg) as env:
                spine, store = env.spine, env.store
                for i in range(10):
                    await spine.send(topic="lost/cmd", payload={"n": i}, key=f"lost-{i}")
                await eventually(lambda: len([p for p in tap.of("PUBLISH", "up") if p.topic == "lost/cmd"]) == 10,
                                 timeout=4.0, interval=0.02)
                stamped = await store.fetchval("SELECT count(*) FROM outbox WHERE packet_id IS NOT NULL")
                assert stamped == 10
                await asyncio.to_thread(broker.kill)
                tap.drop_all()
                flowing.set()
                await asyncio.to_thread(broker.start)
                await eventually(lambda: spine.connection.connected, timeout=6.0, interval=0.02)
                for i in range(10, 110):
                    await spine.send(topic="lost/cmd", payload={"n": i}, key=f"lost-{i}")
                for _ in range(1000):
                    assert await store.fetchval(dup_sql) == 0
                    if await store.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0:
                        break
                    await asyncio.sleep(0.01)
                assert await store.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") == 110
                assert not spine.relay._retired and spine.connection._durable == set()
                resent = [p for p in tap.of("PUBLISH", "up") if p.topic == "lost/cmd"]
                assert len(resent) >= 120  # the 10 twice (the broker never delivered the first ones) + 100
