"""Tasmota: ``cmnd/<t>/<Command> <param>``; replies on ``stat/<t>/RESULT`` (JSON) and ``stat/<t>/POWER``;
telemetry on ``tele/<t>/STATE`` and ``tele/<t>/SENSOR``; ``tele/<t>/LWT`` ``Online``/``Offline`` (retained).

Options: ``relay`` (1-based index for multi-relay devices: ``POWER2``; default the single ``POWER``).
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


class TasmotaAdapter:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.t = device.topic or device.name
        relay = device.option("relay")
        self.power = f"POWER{int(relay)}" if relay else "POWER"

    def topics(self) -> dict[str, str]:
        t = self.t
        return {
            f"stat/{t}/RESULT": "json",
            f"stat/{t}/{self.power}": "power",
            f"tele/{t}/STATE": "json",
            f"tele/{t}/SENSOR": "sensor",
            f"tele/{t}/LWT": "lwt",
        }

    def parse(self, role: str, payload: bytes) -> Update | None:
        if role == "lwt":
            available = parse_availability(payload, online="Online", offline="Offline")
            return None if available is None else Update(available=available)
        if role == "power":
            value = payload.decode("utf-8", "replace").strip().upper()
            return Update(state={"state": value}) if value in ("ON", "OFF") else None
        data = parse_json(payload)
        if not isinstance(data, dict):
            return None
        if role == "sensor":
            return Update(state={"sensor": data})
        return Update(state=self.normalise(data)) if self.normalise(data) else None

    def normalise(self, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        power = data.get(self.power)
        if power is None and self.power == "POWER":
            power = data.get("POWER1")
        if isinstance(power, str) and power.upper() in ("ON", "OFF"):
            out["state"] = power.upper()
        if (dimmer := number(data.get("Dimmer"))) is not None:
            out["brightness"] = dimmer
        return out

    def commands(self, action: DeviceAction, key: str | None = None) -> list[Command]:
        require(self.device, action)
        a = action.action
        if a in ("turn_on", "turn_off", "toggle"):
            value = {"turn_on": "ON", "turn_off": "OFF", "toggle": "TOGGLE"}[a]
            return [Command(f"cmnd/{self.t}/{self.power}", value)]
        if a == "set_brightness" and self.device.kind == "light":
            pct = round(max(0.0, min(100.0, float(action.params["brightness"]))))
            return [Command(f"cmnd/{self.t}/Dimmer", str(pct))]
        raise UnsupportedAction(f"The {self.device.label} cannot {a.replace('_', ' ')}")

    def refresh(self) -> list[Command]:
        # An empty payload is a query: Tasmota answers on stat/<t>/RESULT and stat/<t>/POWER.
        return [Command(f"cmnd/{self.t}/{self.power}", "", qos=1)]
