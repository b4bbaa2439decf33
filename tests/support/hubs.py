"""A real hub in-process with the bridge simulator beside it, on the machine's Mosquitto and PostgreSQL.

``devices_hub(...)`` gives each test its own hub id and (with ``isolate=True``) its own bridge topics, so
tests on the shared broker never see each other's devices; ``isolate=False`` keeps the default topics
(``zigbee2mqtt/kitchen_light/set`` …) for tests that check the exact names.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmqtt import Client, Message, Subscription
from gmqtt.mqtt.constants import MQTTv50

from devices.simulator import Simulator
from hub.app import Hub, wait_ready
from hub.config import Config
from tests.support.config import demo_devices, make_config

DEVICE_PLUGINS = ("handlers.devices", "handlers.understanding", "handlers.ask")


def isolated_devices(prefix: str) -> dict[str, Any]:
    """The demo devices with bridge topics under ``prefix`` (same names, adapters and areas)."""
    devices = demo_devices()
    for name, d in devices.items():
        if d["adapter"] == "zigbee2mqtt":
            d["base_topic"] = f"{prefix}-z2m"
        elif d["adapter"] == "tasmota":
            d["topic"] = f"{prefix}_{d.get('topic') or name}"
        else:
            d["topic"] = f"{prefix}/{d.get('topic') or name}"
    return devices


def devices_config(*, dsn: str, state_dir: Path, isolate: bool = True, plugins: tuple[str, ...] = DEVICE_PLUGINS,
                   **sections: Any) -> Config:
    hub_id = f"t{uuid.uuid4().hex[:8]}"
    devices = isolated_devices(hub_id) if isolate else demo_devices()
    return make_config(dsn=dsn, state_dir=state_dir, plugins=plugins, hub_id=hub_id,
                       devices=devices, **sections)


@dataclass
class Running:
    hub: Hub
    sim: Simulator
    config: Config

    @property
    def devices(self) -> Any:
        return self.hub.services.devices

    async def ask(self, text: str, *, site: str = "kitchen", timeout: float = 20.0) -> dict[str, Any]:
        return await ask_over_mqtt(self.config, text, site=site, timeout=timeout)

    async def outbox_rows(self) -> list[dict[str, Any]]:
        assert self.hub.store is not None
        rows = await self.hub.store.fetch("SELECT topic, payload, idempotency_key FROM outbox ORDER BY id")
        return [dict(r) for r in rows]


async def ask_over_mqtt(config: Config, text: str, *, site: str, timeout: float) -> dict[str, Any]:
    """``kitt/<hub_id>/ask`` with an MQTT 5 Response Topic, as ``kitt-hub ask`` does; the reply as a dict."""
    request_id = uuid.uuid4().hex
    base = f"kitt/{config.hub.id}"
    response_topic = f"{base}/test-reply/{request_id}"
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    subscribed = asyncio.Event()

    def on_message(client: Client, topic: str, payload: bytes, qos: int, properties: dict) -> int:
        if topic == response_topic and not answer.done():
            answer.set_result(payload)
        return 0

    client = Client(f"kitt-test-{request_id[:8]}")
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    await client.connect(config.mqtt.host, config.mqtt.port, version=MQTTv50)
    try:
        client.subscribe(Subscription(response_topic, qos=1))
        await asyncio.wait_for(subscribed.wait(), timeout)
        body = json.dumps({"id": request_id, "text": text, "site": site})
        client.publish(Message(f"{base}/ask", body, qos=2, response_topic=response_topic,
                               correlation_data=request_id.encode()))
        return json.loads(await asyncio.wait_for(answer, timeout))
    finally:
        await client.disconnect()


@asynccontextmanager
async def devices_hub(config: Config, *, legacy_availability: bool = False,
                      initial: dict[str, dict[str, Any]] | None = None) -> AsyncIterator[Running]:
    """The simulator first (retained availability waiting on the broker), then the hub; both stopped after."""
    sim = Simulator(config, legacy_availability=legacy_availability, clear_retained_on_stop=True, initial=initial)
    await sim.start()
    try:
        async with Hub(config) as hub:
            assert await wait_ready(hub, timeout=30), "hub did not become ready"
            yield Running(hub=hub, sim=sim, config=config)
    finally:
        await sim.stop()
