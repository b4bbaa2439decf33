"""Discovery against the real Mosquitto and PostgreSQL: HA's birth brings the device config (valid, retained),
then the states; unique_ids survive a restart; entities that disappear are removed the documented way;
statestream fills ``services.extra["ha_entities"]``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ha_hub import (
    ha_config_dict,
    module_database,
    no_retained_before_marker,
    running_hub,
    unique,
    wait_until,
)
from tests.support.ha_schema import assert_valid, unique_ids
from tests.support.mqtt import TestClient

pytestmark = pytest.mark.integration

PORT = 1883


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with module_database() as url:
        yield url


def config(dsn: str, tmp_path: Path, **sections: Any) -> dict[str, Any]:
    return ha_config_dict(dsn, tmp_path, jobs={"nightly_check": {"schedule": "0 3 * * *"},
                                               "hourly_sweep": {"schedule": "every 1h"}}, **sections)


def discovery_topic(cfg: dict[str, Any]) -> str:
    return f"{cfg['homeassistant']['discovery_prefix']}/device/{cfg['hub']['id']}/config"


async def test_birth_republishes_valid_discovery_then_states(dsn: str, tmp_path: Path) -> None:
    cfg = config(dsn, tmp_path)
    hub_id, prefix = cfg["hub"]["id"], cfg["homeassistant"]["discovery_prefix"]
    async with running_hub(cfg), TestClient(PORT) as ha:
        disc = await ha.collect(discovery_topic(cfg), qos=1)
        states = await ha.collect(f"kitt/{hub_id}/ha/+/state", qos=1)
        await disc.wait_for(1, timeout=20)  # the announce on connect (retained)
        before = len(disc.messages)
        await ha.publish(f"{prefix}/status", "online", qos=0)
        await disc.wait_for(before + 1, timeout=20)
        after_birth = disc.messages[before]
        # Then every state again, after the config (HA subscribes to state topics once it has the config).
        pending_topic = f"kitt/{hub_id}/ha/pending_confirmations/state"
        await wait_until(lambda: any(m.topic == pending_topic and m.at > after_birth.at for m in states.messages),
                         what="states republished after the birth's discovery")
        payload = after_birth.json()
        assert_valid(payload)
        cmps = payload["cmps"]
        assert {"job_nightly_check", "job_hourly_sweep", "approve_kitchen", "cancel_bedroom"} <= set(cmps)
        for c in cmps.values():
            assert c["unique_id"].startswith(f"kitt_{hub_id}_")
            assert c["availability_topic"] == f"kitt/{hub_id}/status"
        # The job sensors say "never" (no run yet): a real value from the job_runs table.
        await wait_until(lambda: any(m.topic == f"kitt/{hub_id}/ha/job_nightly_check/state"
                                     and m.payload == b"never" for m in states.messages), what="job state")

        async with TestClient(PORT) as fresh:
            kept = await fresh.collect(discovery_topic(cfg), qos=1)
            await kept.wait_for(1, timeout=10)
            assert kept.messages[0].properties.get("retain") == 1
            assert kept.messages[0].json() == payload
            status = await fresh.collect(f"kitt/{hub_id}/status", qos=1)
            await status.wait_for(1, timeout=10)
            assert status.messages[0].payload == b"online"


async def test_unique_ids_stable_across_restart_and_removed_entities_go(dsn: str, tmp_path: Path) -> None:
    cfg = config(dsn, tmp_path)
    topic = discovery_topic(cfg)
    async with TestClient(PORT) as ha:
        col = await ha.collect(topic, qos=1)
        async with running_hub(cfg):
            await col.wait_for(1, timeout=20)
        first = col.messages[-1].json()
        seen = len(col.messages)
        async with running_hub(cfg):
            await col.wait_for(seen + 1, timeout=20)
        second = col.messages[-1].json()
        assert unique_ids([first]) == unique_ids([second])

        # A routine disappears from the config: {"p": "sensor"} for it, then the config without it.
        smaller = {**cfg, "jobs": {"nightly_check": {"schedule": "0 3 * * *"}}}
        seen = len(col.messages)
        async with running_hub(smaller):
            await col.wait_for(seen + 2, timeout=20)
        removal, final = col.messages[seen].json(), col.messages[seen + 1].json()
        assert removal["cmps"]["job_hourly_sweep"] == {"p": "sensor"}
        assert_valid(removal, allow_removal=True)
        assert "job_hourly_sweep" not in final["cmps"]
        assert_valid(final)

        # Integration disabled: the whole device goes (an empty retained config).
        seen = len(col.messages)
        disabled = {**smaller, "homeassistant": {**cfg["homeassistant"], "enabled": False}}
        async with running_hub(disabled):
            await col.wait_for(seen + 1, timeout=20)
        assert col.messages[seen].payload == b""
    async with TestClient(PORT) as fresh:
        probe = await fresh.collect(topic, qos=1)
        await no_retained_before_marker(fresh, f"{topic}/probe")
        assert probe.messages == []


async def test_statestream_fills_ha_entities(dsn: str, tmp_path: Path) -> None:
    base = unique("hass")
    cfg = config(dsn, tmp_path, homeassistant={"statestream_base": base})
    async with TestClient(PORT) as ha:
        await ha.publish(f"{base}/lock/front_door/state", "locked", qos=1, retain=True)
        try:
            async with running_hub(cfg) as hub:
                entities = hub.services.extra["ha_entities"]
                found = await wait_until(lambda: entities.get("lock.front_door"), what="retained statestream")
                assert found.state == "locked" and found.domain == "lock"
                await ha.publish(f"{base}/light/kitchen/state", "on", qos=1)
                await ha.publish(f"{base}/light/kitchen/brightness", json.dumps(200), qos=1)
                await wait_until(lambda: (e := entities.get("light.kitchen")) is not None
                                 and e.attributes.get("brightness") == 200, what="attribute")
                assert entities.get("light.kitchen").state == "on"
            assert "ha_entities" not in hub.services.extra
        finally:
            await ha.publish(f"{base}/lock/front_door/state", b"", qos=1, retain=True)
