"""The MQTT spine: connection, routes, inbox, outbox."""

from hub.spine.router import Inbound, Route
from hub.spine.spine import AlreadyHandled, Spine
from hub.spine.topics import HubTopics, matches

__all__ = ["AlreadyHandled", "HubTopics", "Inbound", "Route", "Spine", "matches"]
