"""Frontier tools: the device actions and state questions offered to the model, and their mapping back onto
the same ``DeviceAction`` values the local path produces (so they pass the same validation and hazard gate).
"""

from __future__ import annotations

from typing import Any

from devices.registry import Registry
from hub.contracts import DeviceAction
from hub.frontier import ToolCall

ALL_ACTIONS = ("turn_on", "turn_off", "toggle", "set_brightness", "set_temperature", "open", "close", "stop",
               "lock", "unlock", "arm", "disarm", "set_position")


def tool_schemas(registry: Registry) -> list[dict[str, Any]]:
    names = sorted(d.name for d in registry)
    catalogue = "; ".join(f"{d.name} ({d.kind}, {d.info.area or 'no area'}: {', '.join(d.info.capabilities)})"
                          for d in registry)
    return [
        {"type": "function", "function": {
            "name": "device_action",
            "description": f"Act on one device of the house. Devices: {catalogue}. Hazardous actions are "
                           "confirmed with the person before anything happens.",
            "parameters": {"type": "object", "required": ["device", "action"], "properties": {
                "device": {"type": "string", "enum": names},
                "action": {"type": "string", "enum": list(ALL_ACTIONS)},
                "brightness": {"type": "number", "minimum": 0, "maximum": 100},
                "temperature": {"type": "number"},
                "position": {"type": "number", "minimum": 0, "maximum": 100},
                "mode": {"type": "string", "enum": ["home", "away", "night", "vacation"]},
            }},
        }},
        {"type": "function", "function": {
            "name": "device_state",
            "description": "The current state of one device, as the hub tracks it.",
            "parameters": {"type": "object", "required": ["device"],
                           "properties": {"device": {"type": "string", "enum": names}}},
        }},
    ]


def to_action(call: ToolCall) -> DeviceAction | None:
    """A ``device_action`` call as a ``DeviceAction``; None for anything else or malformed."""
    if call.name != "device_action":
        return None
    device, action = call.arguments.get("device"), call.arguments.get("action")
    if not isinstance(device, str) or action not in ALL_ACTIONS:
        return None
    params = {k: call.arguments[k] for k in ("brightness", "temperature", "position", "mode")
              if call.arguments.get(k) is not None}
    return DeviceAction(device, str(action), params)
