"""From an intent and its slots to device actions: which devices a sentence means, what to do to each.

Pure functions over the registry, shared by the template path, the embedding fallback and frontier tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devices.registry import Device, Registry
from hub.contracts import DeviceAction

ACTION_INTENTS = frozenset({"HassTurnOn", "HassTurnOff", "HassLightSet", "HassClimateSetTemperature",
                            "HassSetPosition", "KittAlarmArm", "KittAlarmDisarm", "KittToggle"})
STATE_INTENTS = frozenset({"HassGetState", "HassClimateGetTemperature"})
CONFIRM_INTENTS = frozenset({"ConfirmYes", "ConfirmNo"})

# Home Assistant domain (a fixed slot of area sentences) → the KITT kinds it covers.
DOMAIN_KINDS: dict[str, tuple[str, ...]] = {
    "light": ("light",), "switch": ("switch", "appliance"), "cover": ("cover",), "lock": ("lock",),
    "climate": ("climate",), "valve": ("valve",), "alarm_control_panel": ("alarm",), "fan": (),
}


@dataclass(frozen=True)
class Resolution:
    devices: tuple[str, ...]
    actions: tuple[DeviceAction, ...]
    problem: str | None = None


def _number(value: Any) -> float | int:
    f = float(value)
    return int(f) if f.is_integer() else f


def targets(registry: Registry, intent: str, slots: dict[str, Any], site_area: str | None) -> list[Device]:
    name = slots.get("name")
    if name:
        device = registry.get(str(name))
        return [device] if device is not None else []
    area = slots.get("area") or None
    domain = slots.get("domain")
    kinds: tuple[str, ...] | None = DOMAIN_KINDS.get(str(domain)) if domain else None
    if intent in ("HassClimateSetTemperature", "HassClimateGetTemperature"):
        kinds = ("climate",)
    if area is None and kinds == ("climate",):
        # "set the temperature to 20": the climate device of this room, else the only one in the house.
        here = [d for d in registry if d.kind == "climate" and site_area and d.info.area == site_area]
        everywhere = [d for d in registry if d.kind == "climate"]
        return here or (everywhere if len(everywhere) == 1 else [])
    area = area or site_area
    if area is None:
        return []
    found = [d for d in registry.in_area(str(area)) if kinds is None or d.kind in kinds]
    device_class = slots.get("device_class")
    if device_class:
        same_class = [d for d in found if d.device_class == device_class]
        found = same_class or found
    return found


def action_for(intent: str, device: Device, slots: dict[str, Any]) -> DeviceAction | None:
    kind = device.kind
    if intent == "HassTurnOn":
        verb = {"lock": "lock", "cover": "open", "valve": "open", "alarm": "arm"}.get(kind, "turn_on")
        params = {"mode": "away"} if verb == "arm" else {}
        return DeviceAction(device.name, verb, params)
    if intent == "HassTurnOff":
        verb = {"lock": "unlock", "cover": "close", "valve": "close", "alarm": "disarm"}.get(kind, "turn_off")
        return DeviceAction(device.name, verb)
    if intent == "KittToggle":
        return DeviceAction(device.name, "toggle")
    if intent == "HassLightSet" and slots.get("brightness") is not None:
        return DeviceAction(device.name, "set_brightness", {"brightness": _number(slots["brightness"])})
    if intent == "HassClimateSetTemperature" and slots.get("temperature") is not None:
        return DeviceAction(device.name, "set_temperature", {"temperature": _number(slots["temperature"])})
    if intent == "HassSetPosition" and slots.get("position") is not None:
        return DeviceAction(device.name, "set_position", {"position": _number(slots["position"])})
    if intent == "KittAlarmArm":
        return DeviceAction(device.name, "arm", {"mode": str(slots.get("mode") or "away")})
    if intent == "KittAlarmDisarm":
        return DeviceAction(device.name, "disarm")
    return None


def resolve(registry: Registry, intent: str, slots: dict[str, Any], site_area: str | None = None) -> Resolution:
    if intent not in ACTION_INTENTS and intent not in STATE_INTENTS:
        return Resolution((), ())
    found = targets(registry, intent, slots, site_area)
    if not found:
        what = str(slots.get("domain") or "device").replace("_", " ")
        where = slots.get("area") or site_area
        problem = f"There is no {what} in the {where}." if where else "I don't know which device you mean."
        return Resolution((), (), problem)
    names = tuple(d.name for d in found)
    if intent in STATE_INTENTS:
        return Resolution(names, ())
    actions: list[DeviceAction] = []
    for d in found:
        action = action_for(intent, d, slots)
        if action is not None and action.action in d.info.capabilities:
            actions.append(action)
    if not actions:
        label = found[0].label
        return Resolution(names, (), f"The {label} cannot do that.")
    return Resolution(tuple(a.device for a in actions), tuple(actions))
