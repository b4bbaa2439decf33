"""The connection: starting without a broker (back-off until it comes; not ready meanwhile), and the packet
ids a crashed process left at the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

from hub.spine.client import MqttConnection
from tests.support.config import make_config
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import MqttTap, Packet, TestClient, running_spine

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
