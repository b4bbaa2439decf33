"""What the web layer needs from the hub: a few collaborators, not the whole hub."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hub.config import Config
from hub.metrics import Metrics
from hub.plugins import Services
from hub.readiness import Readiness


@dataclass
class WebDeps:
    config: Config
    metrics: Metrics
    readiness: Readiness
    services: Services
    store: Any = None  # hub.store.Store once the store is up
    spine: Any = None  # hub.spine.Spine once the spine is up
    status: Callable[[], Awaitable[dict[str, Any]]] | None = None
    token: str = ""  # set by the hub at start (config, token file, or a new one)
