"""Hubs for voice tests: a config with the voice plugin and the devices it drives, in process or as a process.

Device topics: the bridge base topic is unique per test (``z2m<uuid>``) unless a test asks for the real
``zigbee2mqtt`` base; commands are then told apart by their idempotency key (MQTT 5 user property ``id``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hub.app import Hub, wait_ready
from hub.config import Config
from tests.support.config import make_config_dict

VOICE_PLUGINS = ("handlers.devices", "handlers.understanding", "handlers.confirmations", "handlers.voice")


def voice_config_dict(*, dsn: str, state_dir: Path, sites: tuple[str, ...], base_topic: str | None = None,
                      voice: dict[str, Any] | None = None, hazards: dict[str, Any] | None = None,
                      plugins: tuple[str, ...] = VOICE_PLUGINS) -> dict[str, Any]:
    base = base_topic if base_topic is not None else f"z2m{uuid.uuid4().hex[:8]}"
    devices = {
        "front_door": {"adapter": "zigbee2mqtt", "kind": "lock", "area": "hall", "name": "front door",
                       "base_topic": base},
        "kitchen_light": {"adapter": "zigbee2mqtt", "kind": "light", "area": "kitchen", "name": "kitchen light",
                          "base_topic": base},
    }
    return make_config_dict(
        dsn=dsn, state_dir=state_dir, plugins=plugins, devices=devices,
        voice={"sites": list(sites), "confirm_timeout_s": 15, "listen_timeout_s": 10, **(voice or {})},
        hazards=hazards or {},
        homeassistant={"enabled": False},
    )


def base_topic_of(config: dict[str, Any]) -> str:
    return config["devices"]["front_door"]["base_topic"]


@asynccontextmanager
async def running_hub(config: dict[str, Any]) -> AsyncIterator[Hub]:
    async with Hub(Config.model_validate(config)) as hub:
        assert await wait_ready(hub, timeout=30), "hub not ready"
        voice = hub.services.voice
        assert voice is not None, f"voice plugin not running: {hub.plugins.failed if hub.plugins else None}"
        yield hub


