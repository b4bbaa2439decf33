"""The entities' availability follows the hub's Last Will: SIGKILL the hub process, the broker publishes the
retained ``offline`` on the topic every component names as its availability; a restart brings ``online``
and the discovery config back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ha_hub import ha_config_dict, module_database, wait_until
from tests.support.ha_schema import assert_valid
from tests.support.hubproc import HubProcess
from tests.support.mqtt import TestClient

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PORT = 1883


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with module_database() as url:
        yield url


async def test_availability_follows_the_lwt_through_a_kill(dsn: str, tmp_path: Path) -> None:
    cfg = ha_config_dict(dsn, tmp_path, mqtt={"keepalive_s": 5})
    hub_id, prefix = cfg["hub"]["id"], cfg["homeassistant"]["discovery_prefix"]
    status_topic = f"kitt/{hub_id}/status"
    proc = HubProcess(cfg, tmp_path / "hub")
    async with TestClient(PORT) as ha:
        status = await ha.collect(status_topic, qos=1)
        disc = await ha.collect(f"{prefix}/device/{hub_id}/config", qos=1)
        await asyncio.to_thread(proc.start)
        try:
            await disc.wait_for(1, timeout=30)
            payload = disc.messages[-1].json()
            assert_valid(payload)
            assert {c["availability_topic"] for c in payload["cmps"].values()} == {status_topic}
            await wait_until(lambda: status.messages and status.messages[-1].payload == b"online",
                             what="online")

            await asyncio.to_thread(proc.kill)
            await wait_until(lambda: status.messages[-1].payload == b"offline", timeout=30,
                             what="the LWT after SIGKILL")
            async with TestClient(PORT) as fresh:
                kept = await fresh.collect(status_topic, qos=1)
                await kept.wait_for(1, timeout=10)
                assert kept.messages[0].payload == b"offline"
                assert kept.messages[0].properties.get("retain") == 1

            seen = len(disc.messages)
            await asyncio.to_thread(proc.start)
            await wait_until(lambda: status.messages[-1].payload == b"online", timeout=30, what="online again")
            await disc.wait_for(seen + 1, timeout=30)
            assert disc.messages[-1].json()["cmps"].keys() == payload["cmps"].keys()
        finally:
            await asyncio.to_thread(proc.stop)
    assert proc.proc is not None and proc.proc.returncode == 0
