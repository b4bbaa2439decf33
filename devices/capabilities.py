"""The capability model: what each kind of device can do, which actions are hazardous by default, and how to
tell from a normalised state whether an action's target has been reached.

Normalised state keys (adapter-neutral): ``state`` ON/OFF (light, switch, appliance, climate mode),
``brightness`` 0-100, ``lock`` LOCKED/UNLOCKED, ``cover`` open/closed/opening/closing/stopped, ``position``
0-100, ``temperature`` (target), ``current_temperature``, ``alarm`` disarmed/armed_home/armed_away/…,
``valve`` open/closed. Anything else a bridge reports is kept under its own key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.contracts import DeviceAction

KIND_ACTIONS: dict[str, tuple[str, ...]] = {
    "light": ("turn_on", "turn_off", "toggle", "set_brightness"),
    "switch": ("turn_on", "turn_off", "toggle"),
    "appliance": ("turn_on", "turn_off"),
    "lock": ("lock", "unlock"),
    "cover": ("open", "close", "stop", "set_position"),
    "climate": ("turn_on", "turn_off", "set_temperature"),
    "alarm": ("arm", "disarm"),
    "valve": ("open", "close"),
    "sensor": (),
}

# Kinds as Home Assistant's intent sentences know them (the `domain` context of a name).
KIND_DOMAIN: dict[str, str] = {
    "light": "light", "switch": "switch", "appliance": "switch", "lock": "lock", "cover": "cover",
    "climate": "climate", "alarm": "alarm_control_panel", "valve": "valve", "sensor": "sensor",
}

# Covers whose opening lets someone in (DESIGN.md: garage, gate); doors count too.
ENTRY_COVER_CLASSES = frozenset({"garage", "gate", "door"})


def default_hazards(kind: str, device_class: str) -> dict[str, str]:
    """DESIGN.md defaults: lock.unlock, cover.open (garage, gate), alarm.disarm, appliance.on, valve.open."""
    if kind == "lock":
        return {"unlock": "lock.unlock"}
    if kind == "cover" and device_class in ENTRY_COVER_CLASSES:
        return {"open": "cover.open", "set_position": "cover.open"}
    if kind == "alarm":
        return {"disarm": "alarm.disarm"}
    if kind == "appliance":
        return {"turn_on": "appliance.on", "toggle": "appliance.on"}
    if kind == "valve":
        return {"open": "valve.open"}
    return {}


def merge_hazards(kind: str, device_class: str, overrides: Mapping[str, str | bool]) -> dict[str, str]:
    """Apply per-device overrides: a class name marks an action, ``false`` clears it, ``true`` uses ``kind.action``."""
    hazards = default_hazards(kind, device_class)
    for action, value in overrides.items():
        if value is False:
            hazards.pop(action, None)
        elif value is True:
            hazards[action] = f"{kind}.{action}"
        else:
            hazards[action] = str(value)
    return hazards


def hazard_of(hazards: Mapping[str, str], action: DeviceAction) -> str | None:
    """The hazard class of one action; closing a cover to position 0 is never hazardous."""
    if action.action == "set_position" and float(action.params.get("position", 0)) <= 0:
        return None
    return hazards.get(action.action)


def target_reached(action: DeviceAction, state: Mapping[str, Any]) -> bool | None:
    """Whether ``state`` shows what ``action`` asked for; None when the state says nothing about it."""
    a, p = action.action, action.params

    def eq(key: str, want: Any) -> bool | None:
        have = state.get(key)
        if have is None:
            return None
        if isinstance(want, str):
            return str(have).upper() == want.upper()
        try:
            return abs(float(have) - float(want)) < 0.51
        except (TypeError, ValueError):
            return False

    if a == "turn_on":
        return eq("state", "ON")
    if a == "turn_off":
        return eq("state", "OFF")
    if a == "lock":
        return eq("lock", "LOCKED")
    if a == "unlock":
        return eq("lock", "UNLOCKED")
    if a in ("open", "close"):
        key = "valve" if "valve" in state else "cover"
        return eq(key, "open" if a == "open" else "closed")
    if a == "set_brightness":
        return eq("brightness", p.get("brightness"))
    if a == "set_temperature":
        return eq("temperature", p.get("temperature"))
    if a == "set_position":
        return eq("position", p.get("position"))
    if a == "disarm":
        return eq("alarm", "disarmed")
    if a == "arm":
        mode = str(p.get("mode", "away"))
        return eq("alarm", f"armed_{mode}")
    return None
