"""A schema check for Home Assistant device-based discovery payloads, written from HA's documented keys.

Sources (see ``shared/reference/homeassistant-mqtt.md``): SUPPORTED_COMPONENTS (C1), the device, origin and
availability schemas (S1), the per-platform options and abbreviations (M1, AB), device discovery (D1).
HA itself ignores unknown keys, which is how typos go unnoticed; this check is stricter on purpose: every key
must be a documented option of its platform (after expanding abbreviations).

``problems(payload)`` returns one line per problem; ``assert_valid(payload)`` raises with all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

SUPPORTED_COMPONENTS = frozenset({
    "alarm_control_panel", "binary_sensor", "button", "camera", "climate", "cover", "date", "datetime",
    "device_automation", "device_tracker", "event", "fan", "humidifier", "image", "lawn_mower", "light", "lock",
    "notify", "number", "scene", "siren", "select", "sensor", "switch", "tag", "text", "time", "update",
    "vacuum", "valve", "water_heater",
})

ROOT_ABBREVIATIONS = {"dev": "device", "o": "origin", "cmps": "components", "avty": "availability",
                      "avty_mode": "availability_mode", "avty_t": "availability_topic",
                      "avty_tpl": "availability_template", "pl_avail": "payload_available",
                      "pl_not_avail": "payload_not_available", "stat_t": "state_topic", "cmd_t": "command_topic",
                      "qos": "qos", "e": "encoding", "migr_discvry": "migrate_discovery"}
ROOT_KEYS = {"device", "origin", "components", "availability", "availability_mode", "availability_topic",
             "availability_template", "payload_available", "payload_not_available", "state_topic",
             "command_topic", "qos", "encoding", "migrate_discovery"}

DEVICE_ABBREVIATIONS = {"cu": "configuration_url", "cns": "connections", "ids": "identifiers", "mf": "manufacturer",
                        "mdl": "model", "mdl_id": "model_id", "hw": "hw_version", "sw": "sw_version",
                        "sa": "suggested_area", "sn": "serial_number"}
DEVICE_KEYS = {"configuration_url", "connections", "identifiers", "name", "manufacturer", "model", "model_id",
               "hw_version", "sw_version", "suggested_area", "serial_number", "via_device"}

ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}

# Entity-level abbreviations (M1's table, the subset of keys that exist on the platforms below).
ABBREVIATIONS = {
    "p": "platform", "uniq_id": "unique_id", "def_ent_id": "default_entity_id", "obj_id": "object_id",
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "pl_avail": "payload_available", "pl_not_avail": "payload_not_available",
    "cmd_t": "command_topic", "cmd_tpl": "command_template", "stat_t": "state_topic", "stat_tpl": "state_template",
    "val_tpl": "value_template", "json_attr_t": "json_attributes_topic", "json_attr_tpl": "json_attributes_template",
    "dev_cla": "device_class", "stat_cla": "state_class", "unit_of_meas": "unit_of_measurement",
    "exp_aft": "expire_after", "frc_upd": "force_update", "ent_cat": "entity_category", "en": "enabled_by_default",
    "ic": "icon", "ent_pic": "entity_picture", "ret": "retain", "opt": "optimistic", "e": "encoding",
    "sug_dsp_prc": "suggested_display_precision", "pl_on": "payload_on", "pl_off": "payload_off",
    "stat_on": "state_on", "stat_off": "state_off", "off_dly": "off_delay", "pl_prs": "payload_press",
    "evt_typ": "event_types", "pl_lock": "payload_lock", "pl_unlk": "payload_unlock", "pl_open": "payload_open",
    "pl_rst": "payload_reset", "stat_locked": "state_locked", "stat_unlocked": "state_unlocked",
    "stat_locking": "state_locking", "stat_unlocking": "state_unlocking", "stat_jam": "state_jammed",
    "stat_open": "state_open", "stat_opening": "state_opening", "stat_clsd": "state_closed",
    "stat_closing": "state_closing", "stat_stopped": "state_stopped", "pl_cls": "payload_close",
    "pl_stop": "payload_stop", "pos_t": "position_topic", "pos_tpl": "position_template",
    "set_pos_t": "set_position_topic", "set_pos_tpl": "set_position_template", "pos_open": "position_open",
    "pos_clsd": "position_closed", "cod_arm_req": "code_arm_required", "cod_dis_req": "code_disarm_required",
    "cod_trig_req": "code_trigger_required", "pl_arm_away": "payload_arm_away", "pl_arm_home": "payload_arm_home",
    "pl_arm_nite": "payload_arm_night", "pl_arm_vacation": "payload_arm_vacation",
    "pl_arm_custom_b": "payload_arm_custom_bypass", "pl_disarm": "payload_disarm", "pl_trig": "payload_trigger",
    "sup_feat": "supported_features", "mode_cmd_t": "mode_command_topic", "mode_cmd_tpl": "mode_command_template",
    "mode_stat_t": "mode_state_topic", "mode_stat_tpl": "mode_state_template", "temp_cmd_t":
    "temperature_command_topic", "temp_cmd_tpl": "temperature_command_template",
    "temp_stat_t": "temperature_state_topic", "temp_stat_tpl": "temperature_state_template",
    "curr_temp_t": "current_temperature_topic", "curr_temp_tpl": "current_temperature_template",
    "temp_unit": "temperature_unit", "min_temp": "min_temp", "max_temp": "max_temp", "temp_step": "temp_step",
    "precision": "precision", "bri_scl": "brightness_scale", "sup_clrm": "supported_color_modes",
    "rpt_pos": "reports_position",
}

COMMON = {"platform", "unique_id", "default_entity_id", "object_id", "name", "availability", "availability_mode",
          "availability_topic", "availability_template", "payload_available", "payload_not_available",
          "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon", "json_attributes_topic",
          "json_attributes_template", "qos"}

# platform → (required keys, optional keys)
PLATFORMS: dict[str, tuple[set[str], set[str]]] = {
    "sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update", "last_reset_value_template",
                                 "options", "state_class", "suggested_display_precision", "unit_of_measurement",
                                 "value_template"}),
    "binary_sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update", "off_delay", "payload_off",
                                        "payload_on", "value_template"}),
    "button": ({"command_topic"}, {"command_template", "device_class", "payload_press", "retain"}),
    "event": ({"state_topic", "event_types"}, {"device_class", "value_template"}),
    "text": ({"command_topic"}, {"command_template", "max", "min", "mode", "pattern", "retain", "state_topic",
                                 "value_template"}),
    "switch": ({"command_topic"}, {"command_template", "device_class", "optimistic", "payload_off", "payload_on",
                                   "retain", "state_off", "state_on", "state_topic", "value_template"}),
    "light": ({"command_topic"}, {"schema", "brightness", "brightness_scale", "supported_color_modes", "effect",
                                  "effect_list", "flash", "flash_time_long", "flash_time_short", "optimistic",
                                  "retain", "state_topic", "transition", "white_scale", "max_kelvin",
                                  "min_kelvin", "color_temp_kelvin"}),
    "lock": ({"command_topic"}, {"command_template", "code_format", "optimistic", "payload_lock", "payload_open",
                                 "payload_reset", "payload_unlock", "retain", "state_jammed", "state_locked",
                                 "state_locking", "state_open", "state_opening", "state_topic", "state_unlocked",
                                 "state_unlocking", "value_template"}),
    "cover": (set(), {"command_topic", "device_class", "optimistic", "payload_close", "payload_open",
                      "payload_stop", "position_closed", "position_open", "position_template", "position_topic",
                      "retain", "set_position_template", "set_position_topic", "state_closed", "state_closing",
                      "state_open", "state_opening", "state_stopped", "state_topic", "value_template"}),
    "climate": (set(), {"action_template", "action_topic", "current_temperature_template",
                        "current_temperature_topic", "initial", "max_temp", "min_temp", "mode_command_template",
                        "mode_command_topic", "mode_state_template", "mode_state_topic", "modes", "optimistic",
                        "payload_off", "payload_on", "power_command_topic", "precision", "retain",
                        "temperature_command_template", "temperature_command_topic", "temperature_state_template",
                        "temperature_state_topic", "temperature_unit", "temp_step", "value_template"}),
    "alarm_control_panel": ({"command_topic", "state_topic"},
                            {"code", "code_arm_required", "code_disarm_required", "code_trigger_required",
                             "command_template", "payload_arm_away", "payload_arm_custom_bypass",
                             "payload_arm_home", "payload_arm_night", "payload_arm_vacation", "payload_disarm",
                             "payload_trigger", "retain", "supported_features", "value_template"}),
    "valve": (set(), {"command_template", "command_topic", "device_class", "optimistic", "payload_close",
                      "payload_open", "payload_stop", "position_closed", "position_open", "reports_position",
                      "retain", "state_closed", "state_closing", "state_open", "state_opening", "state_topic",
                      "value_template"}),
}

COMMAND_PLATFORMS = {"button", "text", "switch", "light", "lock", "cover", "climate", "alarm_control_panel", "valve"}
ALARM_FEATURES = {"arm_home", "arm_away", "arm_night", "arm_vacation", "arm_custom_bypass", "trigger"}
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def _expand(data: Mapping[str, Any], table: Mapping[str, str], where: str, out: list[str]) -> dict[str, Any]:
    expanded: dict[str, Any] = {}
    for key, value in data.items():
        full = table.get(key, key)
        if full in expanded:
            out.append(f"{where}: {key!r} given twice (abbreviated and in full)")
        expanded[full] = value
    return expanded


def _topic(value: Any, where: str, out: list[str]) -> None:
    if not isinstance(value, str) or not value or "+" in value or "#" in value:
        out.append(f"{where}: not a publishable topic: {value!r}")


def _availability(c: Mapping[str, Any], where: str, out: list[str]) -> None:
    has_list, has_topic = "availability" in c, "availability_topic" in c
    if has_list and has_topic:
        out.append(f"{where}: availability and availability_topic are mutually exclusive")
    if not has_list and not has_topic:
        out.append(f"{where}: no availability (the hub's LWT would not reach HA)")
    if has_topic:
        _topic(c["availability_topic"], f"{where}.availability_topic", out)
    if has_list:
        items = c["availability"]
        if not isinstance(items, list) or not items:
            out.append(f"{where}.availability: must be a non-empty list")
        else:
            for i, item in enumerate(items):
                if not isinstance(item, dict) or "topic" not in item:
                    out.append(f"{where}.availability[{i}]: needs a topic")
                    continue
                _topic(item["topic"], f"{where}.availability[{i}].topic", out)
                unknown = set(item) - {"topic", "payload_available", "payload_not_available", "value_template"}
                if unknown:
                    out.append(f"{where}.availability[{i}]: unknown keys {sorted(unknown)}")
    if c.get("availability_mode", "latest") not in ("all", "any", "latest"):
        out.append(f"{where}.availability_mode: must be all, any or latest")


def component_problems(cid: str, raw: Mapping[str, Any], *, allow_removal: bool = False) -> list[str]:
    out: list[str] = []
    where = f"cmps.{cid}"
    if not _ID.match(cid):
        out.append(f"{where}: component id must match [A-Za-z0-9_-]+")
    if not isinstance(raw, Mapping):
        return [*out, f"{where}: must be an object"]
    c = _expand(raw, ABBREVIATIONS, where, out)
    platform = c.get("platform")
    if platform not in SUPPORTED_COMPONENTS:
        return [*out, f"{where}.p: {platform!r} is not a supported component"]
    if set(c) == {"platform"}:
        if not allow_removal:
            out.append(f"{where}: a {{'p': …}}-only component is a removal marker")
        return out
    if platform not in PLATFORMS:
        return [*out, f"{where}: platform {platform} not covered by this schema"]
    required, optional = PLATFORMS[platform]
    for key in sorted(required - set(c)):
        out.append(f"{where}: {platform} requires {key}")
    for key in sorted(set(c) - required - optional - COMMON):
        out.append(f"{where}: {key!r} is not a documented {platform} option")
    uid = c.get("unique_id")
    if not isinstance(uid, str) or not uid:
        out.append(f"{where}: unique_id is required in device discovery")
    _availability(c, where, out)
    for key, value in c.items():
        if key.endswith("_topic"):
            _topic(value, f"{where}.{key}", out)
    if "default_entity_id" in c and not str(c["default_entity_id"]).startswith(f"{platform}."):
        out.append(f"{where}.default_entity_id: must start with {platform}.")
    if platform in COMMAND_PLATFORMS and c.get("retain", False) is not False:
        out.append(f"{where}.retain: commands must never be retained")
    if c.get("qos", 0) not in (0, 1, 2):
        out.append(f"{where}.qos: must be 0, 1 or 2")
    if platform == "event":
        types = c.get("event_types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
            out.append(f"{where}.event_types: must be a non-empty list of strings")
    if platform == "text" and c.get("mode", "text") not in ("text", "password"):
        out.append(f"{where}.mode: must be text or password")
    if platform == "binary_sensor" and c.get("device_class") not in (None, "connectivity", "problem", "running",
                                                                      "safety", "door", "lock", "opening"):
        out.append(f"{where}.device_class: unexpected {c.get('device_class')!r}")
    if platform == "light" and c.get("schema", "default") not in ("default", "json", "template"):
        out.append(f"{where}.schema: must be default, json or template")
    if platform == "alarm_control_panel" and not set(c.get("supported_features", [])) <= ALARM_FEATURES:
        out.append(f"{where}.supported_features: unknown features")
    if platform == "cover" and c.get("device_class") not in (None, "awning", "blind", "curtain", "damper", "door",
                                                             "garage", "gate", "shade", "shutter", "window"):
        out.append(f"{where}.device_class: unexpected {c.get('device_class')!r}")
    if platform == "climate" and "mode_command_topic" in c and not c.get("modes"):
        out.append(f"{where}: a mode command topic needs modes")
    return out


def problems(payload: Any, *, allow_removal: bool = False) -> list[str]:
    """Everything wrong with one device-based discovery payload."""
    out: list[str] = []
    if not isinstance(payload, Mapping):
        return ["payload: must be a JSON object"]
    root = _expand(payload, ROOT_ABBREVIATIONS, "root", out)
    for key in sorted(set(root) - ROOT_KEYS):
        out.append(f"root: {key!r} is not a device discovery key")
    dev = root.get("device")
    if not isinstance(dev, Mapping):
        out.append("dev: required")
    else:
        d = _expand(dev, DEVICE_ABBREVIATIONS, "dev", out)
        for key in sorted(set(d) - DEVICE_KEYS):
            out.append(f"dev: {key!r} is not a device key")
        ids = d.get("identifiers")
        if not ids and not d.get("connections"):
            out.append("dev: needs identifiers or connections")
        if ids is not None and not (isinstance(ids, str) or (isinstance(ids, list) and all(
                isinstance(i, str) and i for i in ids))):
            out.append("dev.identifiers: must be a string or a list of strings")
    org = root.get("origin")
    if not isinstance(org, Mapping):
        out.append("o: required in device discovery")
    else:
        o = _expand(org, ORIGIN_ABBREVIATIONS, "o", out)
        for key in sorted(set(o) - ORIGIN_KEYS):
            out.append(f"o: {key!r} is not an origin key")
        if not isinstance(o.get("name"), str) or not o.get("name"):
            out.append("o.name: required")
    cmps = root.get("components")
    if not isinstance(cmps, Mapping) or not cmps:
        out.append("cmps: required, a non-empty object")
    else:
        for cid, c in cmps.items():
            out.extend(component_problems(cid, c, allow_removal=allow_removal))
    return out


def assert_valid(payload: Any, *, allow_removal: bool = False) -> None:
    found = problems(payload, allow_removal=allow_removal)
    assert not found, "invalid discovery payload:\n  " + "\n  ".join(found)


def unique_ids(payloads: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every unique_id of every component, in order (duplicates kept, so a caller can check them)."""
    ids: list[str] = []
    for payload in payloads:
        cmps = payload.get("cmps") or payload.get("components") or {}
        for c in cmps.values():
            uid = c.get("unique_id", c.get("uniq_id"))
            if uid is not None:
                ids.append(uid)
    return ids
