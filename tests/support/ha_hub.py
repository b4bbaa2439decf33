"""Fixtures for the Home Assistant integration tests: a throwaway database per module, a unique hub id and
discovery prefix per test, and an in-process hub running only the plugins a test needs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from hub.app import Hub, wait_ready
from hub.config import Config
from tests.support.config import deep_merge, make_config_dict
from tests.support.db import temp_database_sync

HA_PLUGINS = ("handlers.homeassistant",)


@contextmanager
def module_database(prefix: str = "kitt_ha") -> Iterator[str]:
    """A new database for one test module, dropped afterwards."""
    with temp_database_sync(prefix) as dsn:
        yield dsn


def unique(prefix: str = "hatest") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def ha_config_dict(dsn: str, state_dir: Path, *, hub_id: str | None = None, prefix: str | None = None,
                   plugins: tuple[str, ...] = HA_PLUGINS, **sections: Any) -> dict[str, Any]:
    """A hub config whose MQTT topics collide with nothing: ``kitt/hatest…/…`` and ``hatest…/…``."""
    data = make_config_dict(dsn=dsn, state_dir=state_dir, plugins=plugins, hub_id=hub_id or unique())
    data["homeassistant"] = {"enabled": True, "discovery_prefix": prefix or unique(), "birth_delay_max_s": 0}
    data["voice"] = {"sites": ["kitchen", "bedroom"]}
    return deep_merge(data, sections)


@asynccontextmanager
async def running_hub(data: dict[str, Any], *, before_start: Callable[[Hub], None] | None = None,
                      ) -> AsyncIterator[Hub]:
    """An in-process hub, ready (store reachable, spine subscribed) when the body starts."""
    hub = Hub(Config.model_validate(data))
    if before_start is not None:
        before_start(hub)
    async with hub:
        assert await wait_ready(hub, timeout=30), "hub did not become ready"
        yield hub


async def wait_until(check: Callable[[], Awaitable[Any] | Any], timeout: float = 20.0,
                     what: str = "condition") -> Any:
    """Poll until ``check`` returns something truthy. A bounded wait for an event, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def no_retained_before_marker(client: Any, marker_topic: str) -> None:
    """Publish a marker and wait for it: retained messages of subscriptions made before it arrive before it,
    so once it is here, a collector that is still empty had nothing retained."""
    marker = await client.collect(marker_topic, qos=1)
    await client.publish(marker_topic, "marker", qos=1)
    await marker.wait_for(1, timeout=10)
