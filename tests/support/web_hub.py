"""A real hub (PostgreSQL, Mosquitto, the bridge simulator) with its web server, for API and browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.hubs import Running, devices_config, devices_hub

WEB_PLUGINS = ("handlers.devices", "handlers.confirmations")
FAST_JOBS = {"daily_health_check": {"schedule": "every 1h", "timeout_s": 30, "max_attempts": 1}}


@dataclass
class WebHub:
    running: Running
    base_url: str
    token: str

    @property
    def hub(self) -> Any:
        return self.running.hub

    @property
    def sim(self) -> Any:
        return self.running.sim

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@asynccontextmanager
async def web_hub(*, dsn: str, state_dir: Path, isolate: bool = True, jobs: dict[str, Any] | None = None,
                  **sections: Any) -> AsyncIterator[WebHub]:
    config = devices_config(dsn=dsn, state_dir=state_dir, isolate=isolate, plugins=WEB_PLUGINS,
                            jobs=FAST_JOBS if jobs is None else jobs, **sections)
    async with devices_hub(config) as running:
        assert running.hub.web is not None and running.hub.web.port is not None
        yield WebHub(running=running, base_url=f"http://127.0.0.1:{running.hub.web.port}",
                     token=running.hub.web_deps.token)


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with session.get(url, headers=headers) as response:
        assert response.status == 200, (url, response.status, await response.text())
        return await response.json()
