"""Re-exposure of hub-managed devices: one HA platform per device kind, with every payload and state set
explicitly (HA's defaults moved between versions, see reference §1.6), plus the two translations:

* ``render_state``: the devices service's normalised state → what the platform's state topic expects;
* ``parse_command``: what HA publishes on a command topic → a ``DeviceAction``.

A device kind with no entry here (``sensor``) is not re-exposed. Nothing here is optimistic: HA shows what the
device reports, so an unlock that waits for a confirmation keeps showing ``LOCKED``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.homeassistant.naming import HaNames, slug
from hub.contracts import DeviceAction, DeviceState
from hub.errors import InputRejected

KIND_PLATFORM: dict[str, str] = {
    "light": "light", "switch": "switch", "appliance": "switch", "lock": "lock", "cover": "cover",
    "climate": "climate", "alarm": "alarm_control_panel", "valve": "valve",
}

NONE = "None"  # HA's payload for "unknown" on plain-text state topics

LOCK_STATES = ("LOCKED", "UNLOCKED", "LOCKING", "UNLOCKING", "JAMMED")
COVER_STATES = ("open", "closed", "opening", "closing", "stopped")
VALVE_STATES = ("open", "closed", "opening", "closing")
ALARM_STATES = ("disarmed", "armed_home", "armed_away", "armed_night", "armed_vacation", "armed_custom_bypass",
                "pending", "arming", "disarming", "triggered")
ALARM_ARM_MODES = {"ARM_HOME": "home", "ARM_AWAY": "away", "ARM_NIGHT": "night"}
CLIMATE_MODES = ("off", "heat")


@dataclass(frozen=True)
class ExposedDevice:
    """What re-exposure needs to know of one configured device."""

    name: str
    label: str
    kind: str
    area: str
    adapter: str
    device_class: str = ""

    @property
    def platform(self) -> str | None:
        return KIND_PLATFORM.get(self.kind)


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise InputRejected("invalid_encoding", "payload is not UTF-8") from exc


def _pick(payload: bytes, mapping: Mapping[str, DeviceAction | None]) -> DeviceAction:
    text = _text(payload)
    action = mapping.get(text)
    if action is None:
        raise InputRejected("invalid_payload", f"expected one of {sorted(mapping)}, got {text[:40]!r}")
    return action


# --- components ----------------------------------------------------------------------------------------


def component(names: HaNames, dev: ExposedDevice) -> dict[str, Any] | None:
    """The discovery component of one device, or None when its kind has no HA platform here."""
    platform = dev.platform
    if platform is None:
        return None
    uid = names.unique_id(f"device_{slug(dev.name)}")
    state, cmd = names.device_state(dev.name), names.device_command(dev.name)
    base: dict[str, Any] = {
        "p": platform, "unique_id": uid, "default_entity_id": f"{platform}.{uid}", "name": None,
        # Unavailable when the hub is gone (its LWT) or the device is (its bridge's availability).
        "availability": [{"topic": names.availability, "payload_available": "online",
                          "payload_not_available": "offline"},
                         {"topic": names.device_availability(dev.name), "payload_available": "online",
                          "payload_not_available": "offline"}],
        "availability_mode": "all", "qos": 1,
    }
    if platform == "climate":
        return {**base, "mode_command_topic": names.device_command(dev.name, "mode"),
                "mode_state_topic": state, "mode_state_template": "{{ value_json.mode }}",
                "modes": list(CLIMATE_MODES),
                "temperature_command_topic": names.device_command(dev.name, "temperature"),
                "temperature_state_topic": state, "temperature_state_template": "{{ value_json.temperature }}",
                "current_temperature_topic": state,
                "current_temperature_template": "{{ value_json.current_temperature }}",
                "temperature_unit": "C", "precision": 0.5, "temp_step": 0.5, "min_temp": 5, "max_temp": 30,
                "retain": False, "optimistic": False}
    base.update({"state_topic": state, "command_topic": cmd, "retain": False})
    if platform != "alarm_control_panel":  # the one platform here without an optimistic mode
        base["optimistic"] = False
    if platform == "light":
        return {**base, "schema": "json", "brightness": True, "brightness_scale": 100,
                "supported_color_modes": ["brightness"]}
    if platform == "switch":
        return {**base, "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
                **({"device_class": "outlet"} if dev.kind == "appliance" else {})}
    if platform == "lock":
        return {**base, "payload_lock": "LOCK", "payload_unlock": "UNLOCK", "state_locked": "LOCKED",
                "state_unlocked": "UNLOCKED", "state_locking": "LOCKING", "state_unlocking": "UNLOCKING",
                "state_jammed": "JAMMED"}
    if platform == "cover":
        return {**base, "device_class": dev.device_class or "garage", "payload_open": "OPEN",
                "payload_close": "CLOSE", "payload_stop": "STOP", "state_open": "open", "state_opening": "opening",
                "state_closed": "closed", "state_closing": "closing", "state_stopped": "stopped"}
    if platform == "alarm_control_panel":
        return {**base, "supported_features": ["arm_home", "arm_away", "arm_night"],
                # The PIN policy is the hub's: HA asks for no code; a disarm opens a confirmation instead.
                "code_arm_required": False, "code_disarm_required": False, "code_trigger_required": False,
                "payload_arm_home": "ARM_HOME", "payload_arm_away": "ARM_AWAY", "payload_arm_night": "ARM_NIGHT",
                "payload_disarm": "DISARM"}
    if platform == "valve":
        return {**base, "device_class": dev.device_class or "water", "reports_position": False,
                "payload_open": "OPEN", "payload_close": "CLOSE", "state_open": "open",
                "state_opening": "opening", "state_closed": "closed", "state_closing": "closing"}
    return None


def device_block(names: HaNames, dev: ExposedDevice, version: str) -> dict[str, Any]:
    block: dict[str, Any] = {"identifiers": [names.device_identifier(dev.name)], "name": dev.label,
                             "manufacturer": "KITT", "model": f"{dev.kind} via {dev.adapter}",
                             "sw_version": version, "via_device": names.device_id}
    if dev.area:
        block["suggested_area"] = dev.area
    return block


# --- state ---------------------------------------------------------------------------------------------


def _upper_in(value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value).upper() if value is not None else ""
    return text if text in allowed else NONE


def _lower_in(value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value).lower() if value is not None else ""
    return text if text in allowed else NONE


def render_state(dev: ExposedDevice, state: DeviceState | None) -> str:
    """The state payload for ``dev``'s state topic; HA's "unknown" when nothing is known."""
    s: Mapping[str, Any] = state.state if state is not None else {}
    platform = dev.platform
    if platform == "light":
        out: dict[str, Any] = {"state": _upper_in(s.get("state"), ("ON", "OFF"))}
        if out["state"] == NONE:
            out["state"] = None
        if isinstance(s.get("brightness"), int | float):
            out["brightness"] = round(float(s["brightness"]))
        return json.dumps(out)
    if platform == "climate":
        # Only known keys: a template over a missing key renders empty, which HA ignores.
        climate: dict[str, Any] = {}
        if s.get("mode") in CLIMATE_MODES:
            climate["mode"] = s["mode"]
        elif s.get("state") in ("ON", "OFF"):
            climate["mode"] = "heat" if s["state"] == "ON" else "off"
        for key in ("temperature", "current_temperature"):
            if isinstance(s.get(key), int | float):
                climate[key] = s[key]
        return json.dumps(climate)
    if platform == "switch":
        return _upper_in(s.get("state"), ("ON", "OFF"))
    if platform == "lock":
        return _upper_in(s.get("lock"), LOCK_STATES)
    if platform == "cover":
        return _lower_in(s.get("cover"), COVER_STATES)
    if platform == "valve":
        return _lower_in(s.get("valve"), VALVE_STATES)
    if platform == "alarm_control_panel":
        return _lower_in(s.get("alarm"), ALARM_STATES)
    return NONE


def render_availability(state: DeviceState | None) -> str:
    """Unknown availability counts as online: HA then shows the (unknown) state rather than hiding it."""
    return "offline" if state is not None and state.available is False else "online"


# --- commands ------------------------------------------------------------------------------------------


def _light(device: str, payload: bytes) -> DeviceAction:
    try:
        data = json.loads(_text(payload))
    except ValueError as exc:
        raise InputRejected("invalid_json", "a JSON-schema light command must be JSON") from exc
    if not isinstance(data, dict) or str(data.get("state", "")).upper() not in ("ON", "OFF"):
        raise InputRejected("invalid_payload", 'expected {"state": "ON"|"OFF", "brightness": 0-100}')
    if str(data["state"]).upper() == "OFF":
        return DeviceAction(device, "turn_off")
    brightness = data.get("brightness")
    if brightness is None:
        return DeviceAction(device, "turn_on")
    if not isinstance(brightness, int | float) or not 0 <= brightness <= 100:
        raise InputRejected("invalid_payload", "brightness must be 0-100")
    return DeviceAction(device, "set_brightness", {"brightness": round(float(brightness))})


def _climate(device: str, part: str | None, payload: bytes) -> DeviceAction:
    if part == "mode":
        return _pick(payload, {"off": DeviceAction(device, "turn_off"), "heat": DeviceAction(device, "turn_on")})
    if part == "temperature":
        try:
            value = float(_text(payload))
        except ValueError as exc:
            raise InputRejected("invalid_payload", "temperature must be a number") from exc
        return DeviceAction(device, "set_temperature", {"temperature": value})
    raise InputRejected("invalid_topic", f"climate has no command {part!r}")


_PLAIN: dict[str, Callable[[str], dict[str, DeviceAction | None]]] = {
    "switch": lambda d: {"ON": DeviceAction(d, "turn_on"), "OFF": DeviceAction(d, "turn_off")},
    "lock": lambda d: {"LOCK": DeviceAction(d, "lock"), "UNLOCK": DeviceAction(d, "unlock")},
    "cover": lambda d: {"OPEN": DeviceAction(d, "open"), "CLOSE": DeviceAction(d, "close"),
                        "STOP": DeviceAction(d, "stop")},
    "valve": lambda d: {"OPEN": DeviceAction(d, "open"), "CLOSE": DeviceAction(d, "close")},
    "alarm_control_panel": lambda d: {"DISARM": DeviceAction(d, "disarm"),
                                      **{p: DeviceAction(d, "arm", {"mode": m}) for p, m in ALARM_ARM_MODES.items()}},
}


def parse_command(dev: ExposedDevice, part: str | None, payload: bytes) -> DeviceAction:
    """HA's command payload → the device action. Raises ``InputRejected`` with what was expected."""
    platform = dev.platform
    if platform == "climate":
        return _climate(dev.name, part, payload)
    if part is not None:
        raise InputRejected("invalid_topic", f"{platform} has no command {part!r}")
    if platform == "light":
        return _light(dev.name, payload)
    make = _PLAIN.get(platform or "")
    if make is None:
        raise InputRejected("invalid_topic", f"{dev.name} is not exposed to Home Assistant")
    return _pick(payload, make(dev.name))
