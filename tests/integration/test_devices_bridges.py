"""Devices against the simulator on the real Mosquitto and PostgreSQL: commands go out once, exactly as the
bridges expect them; state and availability are tracked, persisted and warmed; retained commands never run.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50

from devices.state import Change
from hub.app import Hub
from hub.contracts import DeviceAction, DeviceState
from tests.support.hubs import devices_config, devices_hub

pytestmark = pytest.mark.integration

WAIT = 15.0


async def until(predicate, timeout: float = WAIT) -> None:
    """Poll a condition (a bound against hanging, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def until_async(probe, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not await probe():
            await asyncio.sleep(0.02)


async def _events(run, device: str) -> list[dict]:
    events = await run.hub.store.events(kind="device.state", subject=device, limit=50)
    return [e for e in events if e["body"].get("changed")]


async def test_turn_on_the_kitchen_light_publishes_state_on_once_on_the_zigbee2mqtt_set_topic(
        db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir, isolate=False)
    async with devices_hub(config) as run:
        reply = await run.ask("turn on the kitchen light")
        assert reply["route"] == "local" and reply["published"] == 1, reply
        assert await run.devices.wait_for(DeviceAction("kitchen_light", "turn_on"), WAIT)
        commands = run.sim.commands("kitchen_light")
        assert [(c.topic, json.loads(c.payload)) for c in commands] == [
            ("zigbee2mqtt/kitchen_light/set", {"state": "ON"})]
        assert commands[0].user_properties.get("id", "").startswith("cmd:")
        assert run.devices.state("kitchen_light").state["state"] == "ON"

        async def persisted() -> bool:  # the last known state (warms the view at the next start) and its event
            row = await run.hub.store.fetchrow("SELECT state FROM device_state WHERE name = 'kitchen_light'")
            return row is not None and row["state"].get("state") == "ON" and bool(await _events(run, "kitchen_light"))
        await until_async(persisted)


async def test_thermostat_is_driven_and_tasmota_and_generic_devices_answer(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        reply = await run.ask("set the living room thermostat to 21 degrees")
        assert reply["route"] == "local", reply
        assert await run.devices.wait_for(
            DeviceAction("living_room_thermostat", "set_temperature", {"temperature": 21}), WAIT)
        [cmd] = run.sim.commands("living_room_thermostat")
        assert json.loads(cmd.payload) == {"occupied_heating_setpoint": 21.0}
        assert run.sim.state("living_room_thermostat")["occupied_heating_setpoint"] == 21.0

        reply = await run.ask("arm the alarm in night mode")
        assert reply["route"] == "local", reply
        assert await run.devices.wait_for(DeviceAction("alarm", "arm", {"mode": "night"}), WAIT)
        assert [c.payload for c in run.sim.commands("alarm")] == [b"ARM_NIGHT"]

        reply = await run.ask("turn off the oven")
        assert reply["route"] == "local", reply
        assert await run.devices.wait_for(DeviceAction("oven", "turn_off"), WAIT)
        [cmd] = run.sim.commands("oven")
        assert cmd.topic.startswith("cmnd/") and cmd.topic.endswith("/POWER") and cmd.payload == b"OFF"


async def test_state_question_is_answered_from_tracked_state_without_publishing(
        db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        await run.devices.wait_for(DeviceAction("front_door", "lock"), WAIT)
        before = await run.outbox_rows()
        reply = await run.ask("is the front door locked?")
        assert reply["route"] == "state" and reply["text"] == "Yes, the front door is locked.", reply
        after = await run.outbox_rows()
        # Only the reply itself went out: no device command.
        assert [r["topic"].startswith(f"kitt/{config.hub.id}/") for r in after[len(before):]] == [True]
        assert run.sim.commands() == []


async def test_an_offline_device_is_unavailable_and_gets_no_command(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        await until(lambda: run.devices.state("kitchen_light").available is True)
        run.sim.set_available("kitchen_light", False)
        await until(lambda: run.devices.state("kitchen_light").available is False)
        reply = await run.ask("turn on the kitchen light")
        assert reply["text"] == "The kitchen light is unavailable." and reply["published"] == 0, reply
        assert run.sim.commands("kitchen_light") == []
        assert not any("/set" in r["topic"] for r in await run.outbox_rows())


async def test_plain_availability_and_bridge_offline_are_understood(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config, legacy_availability=True) as run:
        await until(lambda: run.devices.state("front_door").available is True)
        run.sim.set_bridge(False)  # plain "offline", as Zigbee2MQTT 1.x says it
        await until(lambda: run.devices.state("front_door").available is False)
        assert run.devices.validate(DeviceAction("front_door", "lock")) == "The front door is unavailable."
        reply = await run.ask("lock the front door")
        assert reply["text"] == "The front door is unavailable." and run.sim.commands() == []
        run.sim.set_bridge(True)
        await until(lambda: run.devices.state("front_door").available is True)


async def test_state_changes_are_recorded_once_and_warm_the_next_start(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        await run.devices.wait_for(DeviceAction("front_door", "lock"), WAIT)
        run.sim.set_state("garage_door", state="OPEN", position=100)
        assert await run.devices.wait_for(DeviceAction("garage_door", "open"), WAIT)
        run.sim.set_state("garage_door")  # the same report again: no change, no event
        run.sim.set_state("kitchen_light", state="ON", brightness=127)
        assert await run.devices.wait_for(DeviceAction("kitchen_light", "turn_on"), WAIT)
        # Events of different devices commit independently: wait for the garage's own change, then for the
        # light's (reported after the repeat), then check that the repeat added nothing.
        async def opened() -> list[dict]:
            return [e for e in await _events(run, "garage_door")
                    if (e["body"].get("changed") or {}).get("cover") == "open"]

        await until_async(opened)
        await until_async(lambda: _events(run, "kitchen_light"))
        await asyncio.sleep(0.3)
        assert len(await opened()) == 1, await _events(run, "garage_door")
    # A second hub on the same database knows the state before any bridge speaks (no simulator now).
    async with Hub(config) as hub:
        assert hub.services.devices.state("kitchen_light").state.get("brightness") == 50


async def test_a_state_written_late_does_not_replace_a_newer_one(db_dsn: str, state_dir: Path) -> None:
    # Reports of one device are handled concurrently; their writes may commit out of order.
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        now = datetime.now(UTC)
        newer = DeviceState("kitchen_light", {"state": "ON", "brightness": 90}, True, now)
        older = DeviceState("kitchen_light", {"state": "OFF"}, True, now - timedelta(seconds=1))
        for current in (newer, older):
            await run.devices._persist(Change("kitchen_light", dict(current.state), False, current), "t/kitchen")
        row = await run.hub.store.fetchrow("SELECT state FROM device_state WHERE name = 'kitchen_light'")
        assert row["state"] == {"state": "ON", "brightness": 90}
        bodies = [e["body"] for e in await run.hub.store.events(kind="device.state", subject="kitchen_light")
                  if e["body"].get("topic") == "t/kitchen"]
        assert len(bodies) == 2  # both reports are in the audit trail


async def test_a_retained_command_on_a_bridge_topic_is_never_executed(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    base = config.devices["garage_door"].model_extra["base_topic"]
    topic = f"{base}/garage_door/set"
    client = Client(f"kitt-test-{config.hub.id}")
    await client.connect(config.mqtt.host, config.mqtt.port, version=MQTTv50)
    client.publish(Message(topic, json.dumps({"state": "OPEN"}), qos=1, retain=True))
    try:
        async with devices_hub(config) as run:
            await run.devices.wait_for(DeviceAction("front_door", "lock"), WAIT)
            assert run.sim.commands("garage_door") == []
            assert run.devices.reached(DeviceAction("garage_door", "open")) is not True
            assert not any(r["topic"] == topic for r in await run.outbox_rows())
    finally:
        client.publish(Message(topic, b"", qos=1, retain=True))
        await client.disconnect()
