"""Home Assistant over MQTT: device-based discovery of the hub, birth handling, hazard buttons and PIN fields,
re-exposure of hub-managed devices, and the ``mqtt_statestream`` consumer. See ``docs/homeassistant.md``."""

from __future__ import annotations

from handlers.homeassistant.plugin import HomeAssistantPlugin
from hub.plugins import PluginContext


def create(ctx: PluginContext) -> HomeAssistantPlugin:
    return HomeAssistantPlugin(ctx)
