"""Commands from Home Assistant against the real broker, database and confirmation service:

* a retained ``…/set`` waiting on the broker at start-up is not executed (and is cleared);
* pressing "Approve (kitchen)" executes exactly one pending confirmation: the kitchen one, once;
* a hazardous command on a re-exposed device opens a confirmation instead of executing.

The device service is a recording fake whose commands are real outbox rows, relayed by the spine to a
bridge topic unique to the test, so "executed" means "the bridge command was published".
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.contracts import DeviceAction, Principal
from tests.support.ha_fakes import FakeDevices
from tests.support.ha_hub import ha_config_dict, module_database, no_retained_before_marker, running_hub, wait_until
from tests.support.mqtt import Collector, TestClient

pytestmark = pytest.mark.integration

PORT = 1883
VOICE = Principal(kind="voice", site="kitchen", session_id="s-kitchen")


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with module_database() as url:
        yield url


def config(dsn: str, tmp_path: Path) -> dict[str, Any]:
    return ha_config_dict(dsn, tmp_path, devices={
        "front_door": {"adapter": "zigbee2mqtt", "kind": "lock", "expose_to_homeassistant": True},
        "oven": {"adapter": "tasmota", "kind": "appliance", "topic": "oven", "expose_to_homeassistant": True},
    })


def with_fake_devices(devices: FakeDevices, bridge: str) -> Any:
    def install(hub: Hub) -> None:
        async def enqueue(conn: Any, action: DeviceAction, key: str) -> None:
            assert hub.spine is not None
            await hub.spine.enqueue(conn, topic=f"{bridge}/{action.device}/set",
                                    payload={"action": action.action}, key=key)
        devices.enqueue = enqueue
        hub.services.devices = devices
    return install


async def open_two_confirmations(cfg: dict[str, Any]) -> tuple[str, str]:
    """Pending confirmations for the kitchen and the bedroom, committed by a hub that then stops."""
    async with running_hub(cfg) as hub:
        confirmations = hub.services.confirmations
        kitchen = await confirmations.request(DeviceAction("front_door", "unlock"), hazard_class="lock.unlock",
                                              principal=VOICE)
        bedroom = await confirmations.request(DeviceAction("front_door", "unlock"), hazard_class="lock.unlock",
                                              principal=Principal(kind="voice", site="bedroom", session_id="s2"))
    return kitchen.id, bedroom.id


async def test_retained_commands_at_start_are_not_executed_and_approve_runs_exactly_one(
        dsn: str, tmp_path: Path) -> None:
    # The confirmations come from another hub id, so this hub starts with no MQTT session: everything it
    # gets at start-up is the broker's retained copy.
    kitchen, bedroom = await open_two_confirmations(config(dsn, tmp_path / "other"))
    cfg = config(dsn, tmp_path)
    base = f"kitt/{cfg['hub']['id']}/ha"
    bridge = f"bridge_{cfg['hub']['id']}"
    devices = FakeDevices()
    async with TestClient(PORT) as ha:
        # Retained commands land on the broker before the hub starts (a misconfigured automation, say).
        await ha.publish(f"{base}/approve_kitchen/set", "PRESS", qos=1, retain=True)
        await ha.publish(f"{base}/device/oven/set", "ON", qos=1, retain=True)
        executed = await ha.collect(f"{bridge}/#", qos=1)
        events = await ha.collect(f"{base}/confirmations/event", qos=1)

        async with running_hub(cfg, before_start=with_fake_devices(devices, bridge)) as hub:
            store, confirmations = hub.store, hub.services.confirmations
            await wait_until(lambda: _ignored_both(store, base), what="both retained commands seen and ignored")
            assert devices.commands == []
            assert (await confirmations.get(kitchen)).state == "pending"
            assert (await confirmations.get(bedroom)).state == "pending"

            # The retained commands are gone from the broker.
            async with TestClient(PORT) as fresh:
                probe = await fresh.collect(f"{base}/+/set", qos=1)
                probe_dev = await fresh.collect(f"{base}/device/+/set", qos=1)
                await no_retained_before_marker(fresh, f"{base}/probe")
                assert probe.messages == [] and probe_dev.messages == []

            # A real press approves the kitchen confirmation, and only that one.
            await ha.publish(f"{base}/approve_kitchen/set", "PRESS", qos=1)
            await executed.wait_for(1, timeout=20)
            assert (await confirmations.get(kitchen)).state in ("executing", "done", "failed")
            assert (await confirmations.get(bedroom)).state == "pending"
            approved = await _event(events, "approved")
            assert approved["confirmation_id"] == kitchen

            # Pressing again finds nothing pending for the kitchen: refused, nothing executed.
            await ha.publish(f"{base}/approve_kitchen/set", "PRESS", qos=1)
            refused = await _event(events, "refused")
            assert refused["reason"] == "nothing_pending"
            assert [m.topic for m in executed.messages] == [f"{bridge}/front_door/set"]
            assert json.loads(executed.messages[0].payload) == {"action": "unlock"}
            assert len(devices.commands) == 1

            # Cancel the bedroom one from HA.
            await ha.publish(f"{base}/cancel_bedroom/set", "PRESS", qos=1)
            cancelled = await _event(events, "cancelled")
            assert cancelled["confirmation_id"] == bedroom
            assert (await confirmations.get(bedroom)).state == "cancelled"
            # Every HA command is in the audit trail, with its outcome. The cancel's row commits with its
            # inbox row, after the confirmation (and so the "cancelled" event above): wait for all three.
            audited = await wait_until(
                lambda: _at_least(store.events(kind="homeassistant.command", limit=10), 3),
                what="three audited Home Assistant commands")
            assert [(e["subject"], e["body"]["ok"]) for e in reversed(audited)] == [
                ("approve_kitchen", True), ("approve_kitchen", False), ("cancel_bedroom", True)]


async def test_retained_command_published_while_the_hub_is_down_is_not_executed(dsn: str, tmp_path: Path) -> None:
    cfg = config(dsn, tmp_path)
    base = f"kitt/{cfg['hub']['id']}/ha"
    kitchen, _ = await open_two_confirmations(cfg)  # same hub id: the broker keeps its session meanwhile
    async with TestClient(PORT) as ha:
        await ha.publish(f"{base}/approve_kitchen/set", "PRESS", qos=1, retain=True)
        async with running_hub(cfg, before_start=with_fake_devices(FakeDevices(), "bridge")) as hub:
            await wait_until(lambda: _ignored(hub.store, f"{base}/approve_kitchen/set"), what="retained seen")
            # The live route handles the queued copy in the same pass; the audit shows whether it ran.
            await wait_until(lambda: _inbox_settled(hub.store), what="inbox settled")
            assert (await hub.services.confirmations.get(kitchen)).state == "pending"


async def test_hazardous_device_command_from_ha_opens_a_confirmation(dsn: str, tmp_path: Path) -> None:
    cfg = config(dsn, tmp_path)
    hub_id = cfg["hub"]["id"]
    base = f"kitt/{hub_id}/ha"
    bridge = f"bridge_{hub_id}"
    devices = FakeDevices()
    async with TestClient(PORT) as ha:
        executed = await ha.collect(f"{bridge}/#", qos=1)
        events = await ha.collect(f"{base}/confirmations/event", qos=1)
        pending = await ha.collect(f"{base}/pending_confirmations/attributes", qos=1)
        async with running_hub(cfg, before_start=with_fake_devices(devices, bridge)) as hub:
            await ha.publish(f"{base}/device/front_door/set", "UNLOCK", qos=1)
            requested = await _event(events, "requested")
            assert requested["device"] == "front_door" and requested["action"] == "unlock"
            assert requested["requested_by"] == "user:homeassistant"
            assert devices.commands == []
            # The pending sensor lists it (other tests' confirmations may be pending in this database too).
            await wait_until(lambda: any(requested["confirmation_id"] in [c["id"] for c in m.json()["confirmations"]]
                                         for m in pending.messages), what="the pending sensor listing it")

            # A harmless command runs at once.
            await ha.publish(f"{base}/device/front_door/set", "LOCK", qos=1)
            await executed.wait_for(1, timeout=20)
            assert [a.action for a, _ in devices.commands] == ["lock"]

            # Bad input is rejected with a reason on the hub's error topic, not executed.
            errors = await ha.collect(f"kitt/{hub_id}/error", qos=1)
            await ha.publish(f"{base}/device/front_door/set", "OPEN", qos=1)
            await errors.wait_for(1, timeout=20)
            assert "invalid_payload" in errors.messages[0].json()["error"]
            assert len(devices.commands) == 1
            assert hub.services.confirmations is not None


async def _ignored(store: Any, topic: str) -> bool:
    rows = await store.events(kind="homeassistant.retained_command_ignored", limit=100)
    return topic in {r["subject"] for r in rows}


async def _inbox_settled(store: Any) -> bool:
    return await store.fetchval("SELECT count(*) = 0 FROM inbox WHERE state = 'pending'")


async def _at_least(rows: Awaitable[list[dict[str, Any]]], n: int) -> list[dict[str, Any]] | None:
    found = await rows
    return found if len(found) >= n else None


async def _ignored_both(store: Any, base: str) -> bool:
    rows = await store.events(kind="homeassistant.retained_command_ignored", limit=100)
    return {f"{base}/approve_kitchen/set", f"{base}/device/oven/set"} <= {r["subject"] for r in rows}


async def _event(events: Collector, event_type: str, timeout: float = 20.0) -> dict[str, Any]:
    found = await wait_until(lambda: [m.json() for m in events.messages if m.json()["event_type"] == event_type],
                             timeout=timeout, what=f"a {event_type!r} event")
    for m in events.messages:
        assert m.properties.get("retain") in (0, None), "events are never retained"
    return found[-1]
