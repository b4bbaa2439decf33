"""Generic MQTT devices: configured topics and payload templates, in Home Assistant's MQTT conventions.

Options (all optional; defaults derive from ``topic``):
  command_topic (``<topic>/set``), state_topic (``<topic>/state``), availability_topic
  (``<topic>/availability``), payload_available (``online``), payload_not_available (``offline``),
  state_key (read the state from this key when the payload is JSON), payloads (action → template;
  ``{brightness}``, ``{temperature}``, ``{position}``, ``{mode}``, ``{MODE}`` and ``{key}`` are filled in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from devices.adapters.base import (
    Command,
    UnsupportedAction,
    Update,
    number,
    parse_availability,
    parse_json,
    require,
)
from devices.registry import Device
from hub.contracts import DeviceAction

DEFAULT_PAYLOADS: dict[str, dict[str, str]] = {
    "alarm": {"arm": "ARM_{MODE}", "disarm": "DISARM"},
    "lock": {"lock": "LOCK", "unlock": "UNLOCK"},
    "cover": {"open": "OPEN", "close": "CLOSE", "stop": "STOP", "set_position": "{position}"},
    "valve": {"open": "OPEN", "close": "CLOSE"},
    "light": {"turn_on": "ON", "turn_off": "OFF", "toggle": "TOGGLE", "set_brightness": "{brightness}"},
    "switch": {"turn_on": "ON", "turn_off": "OFF", "toggle": "TOGGLE"},
    "appliance": {"turn_on": "ON", "turn_off": "OFF"},
    "climate": {"turn_on": "heat", "turn_off": "off", "set_temperature": "{temperature}"},
}

# Which normalised key a plain state payload fills, per kind (HA's state vocabularies).
STATE_KEY: dict[str, str] = {"alarm": "alarm", "lock": "lock", "cover": "cover", "valve": "valve",
                             "climate": "temperature"}


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class GenericAdapter:
    def __init__(self, device: Device) -> None:
        self.device = device
        base = (device.topic or f"kitt/devices/{device.name}").rstrip("/")
        self.command_topic = str(device.option("command_topic", f"{base}/set"))
        self.state_topic = str(device.option("state_topic", f"{base}/state"))
        self.availability_topic = str(device.option("availability_topic", f"{base}/availability"))
        self.online = str(device.option("payload_available", "online"))
        self.offline = str(device.option("payload_not_available", "offline"))
        self.state_key = device.option("state_key")
        payloads: Mapping[str, str] = device.option("payloads", {}) or {}
        self.payloads = {**DEFAULT_PAYLOADS.get(device.kind, {}), **payloads}

    def topics(self) -> dict[str, str]:
        return {self.state_topic: "state", self.availability_topic: "availability"}

    def parse(self, role: str, payload: bytes) -> Update | None:
        if role == "availability":
            available = parse_availability(payload, self.online, self.offline)
            return None if available is None else Update(available=available)
        data = parse_json(payload)
        if isinstance(data, dict):
            value = data.get(self.state_key or "state")
            extra = {k: v for k, v in data.items() if k != (self.state_key or "state")}
        else:
            value, extra = payload.decode("utf-8", "replace").strip(), {}
        if value is None or value == "":
            return Update(state=extra) if extra else None
        return Update(state={**extra, **self._normalise(str(value))})

    def _normalise(self, value: str) -> dict[str, Any]:
        kind = self.device.kind
        if kind == "lock":
            v = value.upper()
            return {"lock": {"LOCK": "LOCKED", "UNLOCK": "UNLOCKED"}.get(v, v)}
        if kind == "alarm":
            return {"alarm": value.lower()}
        if kind in ("cover", "valve"):
            return {kind: value.lower()}
        if kind == "climate":
            t = number(value)
            return {"temperature": t} if t is not None else {"mode": value}
        return {"state": value.upper()}

    def commands(self, action: DeviceAction, key: str | None = None) -> list[Command]:
        require(self.device, action)
        template = self.payloads.get(action.action)
        if template is None:
            raise UnsupportedAction(f"The {self.device.label} cannot {action.action.replace('_', ' ')}")
        mode = str(action.params.get("mode", "away"))
        values = {**{k: _fmt(v) for k, v in action.params.items()}, "mode": mode, "MODE": mode.upper(),
                  "key": key or ""}
        # Only {word} placeholders are filled, so JSON templates keep their own braces.
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
        payload: str | dict[str, Any] = text
        if text.startswith("{"):
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
        return [Command(self.command_topic, payload)]

    def refresh(self) -> list[Command]:
        return []
