"""Zigbee2MQTT: ``<base>/<friendly_name>`` JSON state, ``/set`` JSON commands, ``/get`` reads,
``/availability`` (plain ``online``/``offline`` or ``{"state": …}``) and ``<base>/bridge/state``.

Command payloads are exactly what Zigbee2MQTT documents (``{"state": "ON"}``); the idempotency key travels
only as the MQTT 5 user property ``id``, because Zigbee2MQTT reports unknown payload keys as errors.
Options: ``base_topic`` (default ``zigbee2mqtt``), ``setpoint`` (climate attribute, default
``occupied_heating_setpoint``), ``temperature_attribute`` (default ``local_temperature``).
"""

from __future__ import annotations

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

Z2M_BRIGHTNESS_MAX = 254


class Zigbee2MqttAdapter:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.base = str(device.option("base_topic", "zigbee2mqtt")).rstrip("/")
        self.friendly = device.topic or device.name
        self.state_topic = f"{self.base}/{self.friendly}"
        self.setpoint = str(device.option("setpoint", "occupied_heating_setpoint"))
        self.current_temp = str(device.option("temperature_attribute", "local_temperature"))

    def topics(self) -> dict[str, str]:
        return {
            self.state_topic: "state",
            f"{self.state_topic}/availability": "availability",
            f"{self.base}/bridge/state": "bridge",
        }

    def parse(self, role: str, payload: bytes) -> Update | None:
        if role == "availability":
            available = parse_availability(payload)
            return None if available is None else Update(available=available)
        if role == "bridge":
            available = parse_availability(payload)
            return None if available is None else Update(bridge_available=available)
        data = parse_json(payload)
        if not isinstance(data, dict):
            return None
        return Update(state=self.normalise(data))

    def normalise(self, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        kind = self.device.kind
        state = data.get("state")
        if kind == "lock":
            lock_state = str(data.get("lock_state") or "").lower()
            if lock_state in ("locked", "unlocked"):
                out["lock"] = lock_state.upper()
            elif isinstance(state, str) and state.upper() in ("LOCK", "UNLOCK"):
                out["lock"] = "LOCKED" if state.upper() == "LOCK" else "UNLOCKED"
        elif kind == "cover":
            if isinstance(state, str):
                s = state.lower()
                out["cover"] = {"close": "closed", "stop": "stopped"}.get(s, s)
            if (pos := number(data.get("position"))) is not None:
                out["position"] = pos
                out.setdefault("cover", "closed" if pos <= 0 else "open")
        elif kind == "valve":
            if isinstance(state, str):
                s = state.upper()
                out["valve"] = "open" if s in ("ON", "OPEN") else "closed"
        elif kind == "climate":
            if (sp := number(data.get(self.setpoint))) is not None:
                out["temperature"] = sp
            if (cur := number(data.get(self.current_temp))) is not None:
                out["current_temperature"] = cur
            mode = data.get("system_mode")
            if isinstance(mode, str):
                out["mode"] = mode
                out["state"] = "OFF" if mode == "off" else "ON"
        elif isinstance(state, str):
            out["state"] = state.upper()
        if kind == "light" and (b := number(data.get("brightness"))) is not None:
            out["brightness"] = round(b * 100 / Z2M_BRIGHTNESS_MAX)
        for key in ("linkquality", "battery", "temperature", "humidity", "power", "energy", "contact"):
            if key in data and key not in out:
                out[key] = data[key]
        return out

    def commands(self, action: DeviceAction, key: str | None = None) -> list[Command]:
        require(self.device, action)
        payload = self._payload(action)
        return [Command(f"{self.state_topic}/set", payload)]

    def _payload(self, action: DeviceAction) -> dict[str, Any]:
        a, p, kind = action.action, action.params, self.device.kind
        if kind == "lock" and a in ("lock", "unlock"):
            return {"state": a.upper()}
        if kind in ("cover", "valve"):
            if a in ("open", "close", "stop"):
                return {"state": {"open": "OPEN", "close": "CLOSE", "stop": "STOP"}[a]}
            if a == "set_position":
                return {"position": round(float(p["position"]))}
        if kind == "climate":
            if a == "set_temperature":
                return {self.setpoint: float(p["temperature"])}
            if a in ("turn_on", "turn_off"):
                return {"system_mode": str(p.get("mode", "heat")) if a == "turn_on" else "off"}
        if a in ("turn_on", "turn_off", "toggle"):
            return {"state": {"turn_on": "ON", "turn_off": "OFF", "toggle": "TOGGLE"}[a]}
        if a == "set_brightness":
            pct = max(0.0, min(100.0, float(p["brightness"])))
            return {"brightness": round(pct * Z2M_BRIGHTNESS_MAX / 100)}
        raise UnsupportedAction(f"The {self.device.label} cannot {a.replace('_', ' ')}")

    def refresh(self) -> list[Command]:
        key = {"climate": self.setpoint}.get(self.device.kind, "state")
        return [Command(f"{self.state_topic}/get", {key: ""}, qos=1)]
