"""Home Assistant's ``mqtt_statestream`` consumer: what HA's own entities are, so intents can use them.

HA publishes, retained at QoS 1, ``<base>/<domain>/<object_id>/state`` (the raw state string) and, with
``publish_attributes``, ``<base>/<domain>/<object_id>/<attribute>`` (JSON) and ``last_updated`` /
``last_changed`` with ``publish_timestamps``. Retained messages mean the hub knows every entity as soon as
it subscribes. The map is derived state (principle 3): bounded, rebuilt from the broker on every start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import structlog

log = structlog.get_logger("kitt.homeassistant.statestream")

MAX_ENTITIES = 10_000
TIMESTAMP_KEYS = ("last_updated", "last_changed")


@dataclass(frozen=True)
class HaEntity:
    """One HA entity as statestream last described it. ``state`` is None until its state topic arrives."""

    entity_id: str
    domain: str
    state: str | None = None
    attributes: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    last_updated: str | None = None
    last_changed: str | None = None
    received_at: float = 0.0


class HaEntities:
    """``services.extra["ha_entities"]``: ``get(entity_id)``, ``all()``, ``domain(name)``. Values are immutable
    snapshots, so a caller can keep one without seeing it change under it."""

    def __init__(self, *, max_entities: int = MAX_ENTITIES) -> None:
        self._entities: dict[str, HaEntity] = {}
        self._max = max_entities
        self.dropped = 0

    def get(self, entity_id: str) -> HaEntity | None:
        return self._entities.get(entity_id)

    def all(self) -> list[HaEntity]:
        return list(self._entities.values())

    def domain(self, domain: str) -> list[HaEntity]:
        return [e for e in self._entities.values() if e.domain == domain]

    def __len__(self) -> int:
        return len(self._entities)

    def apply(self, domain: str, object_id: str, key: str, payload: bytes) -> None:
        """Fold one statestream message in. An empty payload on ``state`` forgets the entity (a cleared retain)."""
        entity_id = f"{domain}.{object_id}"
        current = self._entities.get(entity_id)
        if key == "state" and not payload:
            self._entities.pop(entity_id, None)
            return
        if current is None:
            if len(self._entities) >= self._max:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("statestream: too many entities; ignoring new ones", limit=self._max)
                return
            current = HaEntity(entity_id=entity_id, domain=domain)
        text = payload.decode("utf-8", errors="replace")
        now = time.time()
        if key == "state":
            updated = replace(current, state=text, received_at=now)
        elif key in TIMESTAMP_KEYS:
            updated = replace(current, **{key: _decode(text) if text.startswith('"') else text}, received_at=now)
        else:
            attrs = dict(current.attributes)
            if payload:
                attrs[key] = _decode(text)
            else:
                attrs.pop(key, None)
            updated = replace(current, attributes=MappingProxyType(attrs), received_at=now)
        self._entities[entity_id] = updated


def _decode(text: str) -> Any:
    """Attributes are JSON-encoded by HA; anything that is not JSON is kept as the raw string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def split_topic(base: str, topic: str) -> tuple[str, str, str] | None:
    """``<base>/<domain>/<object_id>/<key>`` → (domain, object_id, key); anything else → None."""
    prefix = base.rstrip("/") + "/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix):].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]
