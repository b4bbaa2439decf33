"""What discovery the hub has left retained on the broker, remembered in PostgreSQL (``ha_discovery``).

HA keeps a retained config forever, so an entity that disappears from the hub's configuration would stay as
a ghost unless the hub removes it. Removal needs to know what was published before, also across a restart
with a changed config: hence a small table rather than memory alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.store import Store

# $1 hub_id
_LOAD_SQL = "SELECT discovery_prefix, object_id, components FROM ha_discovery WHERE hub_id = $1"
# $1 prefix, $2 object_id, $3 hub_id, $4 components (jsonb)
_SAVE_SQL = """INSERT INTO ha_discovery (discovery_prefix, object_id, hub_id, components)
               VALUES ($1, $2, $3, $4::jsonb)
               ON CONFLICT (discovery_prefix, object_id)
               DO UPDATE SET hub_id = EXCLUDED.hub_id, components = EXCLUDED.components, updated_at = now()"""
# $1 prefix, $2 object_id
_FORGET_SQL = "DELETE FROM ha_discovery WHERE discovery_prefix = $1 AND object_id = $2"


@dataclass(frozen=True)
class PublishedConfig:
    prefix: str
    object_id: str
    components: dict[str, str]  # component_id -> platform


class PublishedStore:
    def __init__(self, store: Store, hub_id: str) -> None:
        self._store = store
        self._hub_id = hub_id

    async def load(self) -> list[PublishedConfig]:
        rows = await self._store.fetch(_LOAD_SQL, self._hub_id)
        return [PublishedConfig(r["discovery_prefix"], r["object_id"], dict(r["components"])) for r in rows]

    async def save(self, prefix: str, object_id: str, components: dict[str, str]) -> None:
        await self._store.write(_SAVE_SQL, prefix, object_id, self._hub_id, components)

    async def forget(self, prefix: str, object_id: str) -> None:
        await self._store.write(_FORGET_SQL, prefix, object_id)
