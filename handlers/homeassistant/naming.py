"""Names shared by every Home Assistant module: slugs, unique ids and the hub's ``kitt/<hub_id>/ha/…`` topics.

Kept in one place so a unique_id or a topic can never be spelled two ways: Home Assistant keys an entity's
settings (area, name, dashboard cards) on its unique_id, so these strings must stay stable across releases.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def slug(name: str) -> str:
    """A topic- and discovery-safe form of a config name (``[A-Za-z0-9_-]``), stable for a given name.

    Names that had to change get a short hash suffix, so ``"living room"`` and ``"living_room"`` never collide.
    """
    cleaned = _UNSAFE.sub("_", name)
    if cleaned == name and name:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:6]
    return f"{cleaned or 'x'}_{digest}"


@dataclass(frozen=True)
class HaNames:
    """Topics and ids of one hub towards one Home Assistant discovery prefix."""

    hub_id: str
    discovery_prefix: str = "homeassistant"

    # --- identity ------------------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        """``dev.identifiers`` of the hub itself; re-exposed devices point at it with ``via_device``."""
        return f"kitt_{self.hub_id}"

    def unique_id(self, thing: str) -> str:
        return f"kitt_{self.hub_id}_{thing}"

    def device_object_id(self, device: str) -> str:
        """The discovery object id of a re-exposed hub-managed device (one HA device per KITT device)."""
        return f"{self.hub_id}_dev_{slug(device)}"

    def device_identifier(self, device: str) -> str:
        return f"kitt_{self.hub_id}_device_{slug(device)}"

    # --- discovery -----------------------------------------------------------------------------------

    def discovery_topic(self, object_id: str) -> str:
        return f"{self.discovery_prefix}/device/{object_id}/config"

    @property
    def hub_discovery_topic(self) -> str:
        return self.discovery_topic(self.hub_id)

    @property
    def birth_topic(self) -> str:
        return f"{self.discovery_prefix}/status"

    # --- the hub's own topics ------------------------------------------------------------------------

    @property
    def availability(self) -> str:
        """The hub's retained status topic, also its MQTT Last Will (``offline``)."""
        return f"kitt/{self.hub_id}/status"

    @property
    def base(self) -> str:
        return f"kitt/{self.hub_id}/ha"

    def state(self, thing: str) -> str:
        return f"{self.base}/{thing}/state"

    def attributes(self, thing: str) -> str:
        return f"{self.base}/{thing}/attributes"

    def command(self, thing: str) -> str:
        return f"{self.base}/{thing}/set"

    @property
    def command_filter(self) -> str:
        return f"{self.base}/+/set"

    @property
    def event(self) -> str:
        return f"{self.base}/confirmations/event"

    def device_base(self, device: str) -> str:
        return f"{self.base}/device/{slug(device)}"

    def device_state(self, device: str) -> str:
        return f"{self.device_base(device)}/state"

    def device_availability(self, device: str) -> str:
        return f"{self.device_base(device)}/availability"

    def device_command(self, device: str, part: str | None = None) -> str:
        return f"{self.device_base(device)}/{part}/set" if part else f"{self.device_base(device)}/set"

    @property
    def device_command_filters(self) -> tuple[str, str]:
        return f"{self.base}/device/+/set", f"{self.base}/device/+/+/set"

    def parse_device_command(self, topic: str) -> tuple[str, str | None] | None:
        """``…/device/<slug>/set`` → (slug, None); ``…/device/<slug>/<part>/set`` → (slug, part); else None."""
        prefix = f"{self.base}/device/"
        if not topic.startswith(prefix) or not topic.endswith("/set"):
            return None
        parts = topic[len(prefix):-len("/set")].split("/")
        if len(parts) == 1 and parts[0]:
            return parts[0], None
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
        return None

    def parse_command(self, topic: str) -> str | None:
        """``kitt/<hub>/ha/<thing>/set`` → thing."""
        prefix = f"{self.base}/"
        if not topic.startswith(prefix) or not topic.endswith("/set"):
            return None
        thing = topic[len(prefix):-len("/set")]
        return thing if thing and "/" not in thing else None
