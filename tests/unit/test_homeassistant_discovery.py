"""Discovery payloads built from config: valid against HA's documented keys, stable, and removable."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest

from handlers.homeassistant import discovery as disc
from handlers.homeassistant.layout import build_configs
from handlers.homeassistant.naming import HaNames, slug
from hub.config import Config
from tests.support.config import REPO
from tests.support.ha_schema import assert_valid, problems, unique_ids


def config(**overrides: Any) -> Config:
    data = tomllib.loads((REPO / "config.toml").read_text())
    data["hub"]["id"] = "hatest1"
    for name in data["devices"]:
        data["devices"][name]["expose_to_homeassistant"] = True
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    return Config.model_validate(data)


def test_every_payload_passes_the_schema() -> None:
    configs = build_configs(config(hazards__allow_pin_from_homeassistant=True), "1.2.3")
    assert set(configs) >= {"hatest1", "hatest1_dev_front_door", "hatest1_dev_garage_door"}
    for payload in configs.values():
        assert_valid(payload)


def test_hub_device_has_the_documented_entities() -> None:
    cfg = config(hazards__allow_pin_from_homeassistant=True)
    cmps = build_configs(cfg, "1.2.3")["hatest1"]["cmps"]
    platforms = {cid: c["p"] for cid, c in cmps.items()}
    assert platforms["pending_confirmations"] == "sensor"
    assert platforms["cache_hit_ratio"] == "sensor"
    assert platforms["spine"] == "sensor"
    assert platforms["connectivity"] == "binary_sensor" and cmps["connectivity"]["device_class"] == "connectivity"
    assert platforms["confirmations"] == "event"
    assert set(cmps["confirmations"]["event_types"]) >= {"requested", "approved", "cancelled", "expired", "done",
                                                         "failed"}
    for job in cfg.jobs:
        assert platforms[f"job_{job}"] == "sensor"
    for site in (*cfg.voice.sites, "no_site"):
        assert platforms[f"approve_{site}"] == "button"
        assert platforms[f"cancel_{site}"] == "button"
        assert platforms[f"pin_{site}"] == "text" and cmps[f"pin_{site}"]["mode"] == "password"
    for cid, c in cmps.items():
        assert c["unique_id"] == f"kitt_hatest1_{cid}"
        assert c["availability_topic"] == "kitt/hatest1/status"
        for key in ("state_topic", "command_topic", "json_attributes_topic"):
            if key in c:
                assert c[key].startswith("kitt/hatest1/ha/")


def test_no_pin_field_unless_allowed() -> None:
    cmps = build_configs(config(), "1")["hatest1"]["cmps"]
    assert not [c for c in cmps.values() if c["p"] == "text"]


def test_root_keys_and_origin() -> None:
    payload = build_configs(config(), "9.9")["hatest1"]
    assert payload["dev"]["identifiers"] == ["kitt_hatest1"]
    assert payload["dev"]["manufacturer"] == "KITT"
    assert payload["o"]["name"] and payload["o"]["sw"] == "9.9"


def test_unique_ids_are_unique_and_stable() -> None:
    first = build_configs(config(), "1.0")
    again = build_configs(config(), "2.0")  # a new release must not rename anything
    ids = unique_ids(first.values())
    assert len(ids) == len(set(ids))
    assert ids == unique_ids(again.values())


def test_device_platforms_and_explicit_payloads() -> None:
    configs = build_configs(config(), "1")
    by_device = {oid.removeprefix("hatest1_dev_"): p["cmps"]["device"] for oid, p in configs.items()
                 if oid != "hatest1"}
    assert by_device["kitchen_light"]["p"] == "light" and by_device["kitchen_light"]["schema"] == "json"
    assert by_device["front_door"]["p"] == "lock"
    assert by_device["front_door"]["payload_unlock"] == "UNLOCK"
    assert by_device["front_door"]["state_unlocked"] == "UNLOCKED"
    assert by_device["garage_door"]["p"] == "cover" and by_device["garage_door"]["device_class"] == "garage"
    assert by_device["living_room_thermostat"]["p"] == "climate"
    assert by_device["oven"]["p"] == "switch"
    assert by_device["alarm"]["p"] == "alarm_control_panel"
    assert by_device["alarm"]["code_disarm_required"] is False
    for c in by_device.values():
        assert c["retain"] is False
        assert c["availability_mode"] == "all"
        assert c["availability"][0]["topic"] == "kitt/hatest1/status"


def test_devices_not_flagged_are_not_exposed() -> None:
    data = tomllib.loads((REPO / "config.toml").read_text())
    data["hub"]["id"] = "hatest1"
    assert list(build_configs(Config.model_validate(data), "1")) == ["hatest1"]


def test_removal_update_marks_removed_components_with_platform_only() -> None:
    payload = build_configs(config(), "1")["hatest1"]
    update = disc.removal_update(payload, {"job_gone": "sensor"})
    assert update["cmps"]["job_gone"] == {"p": "sensor"}
    assert problems(update) and not problems(update, allow_removal=True)
    assert "job_gone" not in payload["cmps"]  # the original is untouched


def test_slug_is_safe_stable_and_collision_free() -> None:
    assert slug("kitchen") == "kitchen"
    assert slug("living room") == slug("living room")
    assert slug("living room") != slug("living_room")
    assert all(ch.isalnum() or ch in "_-" for ch in slug("äöü/#+ x"))


def test_topic_parsing() -> None:
    names = HaNames("h1", "ha")
    assert names.parse_command("kitt/h1/ha/approve_kitchen/set") == "approve_kitchen"
    assert names.parse_command("kitt/h1/ha/device/oven/set") is None
    assert names.parse_device_command("kitt/h1/ha/device/oven/set") == ("oven", None)
    assert names.parse_device_command("kitt/h1/ha/device/t/mode/set") == ("t", "mode")
    assert names.parse_device_command("kitt/h1/ha/device/t/mode/x/set") is None
    assert names.hub_discovery_topic == "ha/device/h1/config"


# --- the schema check itself must catch what HA would reject or silently ignore ----------------------------


@pytest.fixture
def good() -> dict[str, Any]:
    return build_configs(config(), "1")["hatest1"]


def test_schema_rejects_missing_unique_id(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    del bad["cmps"]["spine"]["unique_id"]
    assert any("unique_id" in p for p in problems(bad))


def test_schema_rejects_a_typo_key(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["cmps"]["spine"]["stat_topic"] = "x/y"
    assert any("stat_topic" in p for p in problems(bad))


def test_schema_rejects_both_availability_forms(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["cmps"]["spine"]["avty"] = [{"topic": "a/b"}]
    assert any("mutually exclusive" in p for p in problems(bad))


def test_schema_rejects_abbreviation_and_full_key_together(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["cmps"]["spine"]["stat_t"] = "a/b"
    assert any("twice" in p for p in problems(bad))


def test_schema_rejects_missing_origin_and_device_ids(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    del bad["o"]
    bad["dev"]["identifiers"] = []
    found = problems(bad)
    assert any(p.startswith("o:") for p in found) and any("identifiers" in p for p in found)


def test_schema_rejects_retained_commands_and_bad_events(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["cmps"]["approve_kitchen"]["retain"] = True
    bad["cmps"]["confirmations"]["event_types"] = []
    found = problems(bad)
    assert any("retain" in p for p in found) and any("event_types" in p for p in found)


def test_schema_accepts_abbreviated_keys() -> None:
    payload = {"dev": {"ids": "x1", "name": "X"}, "o": {"name": "t"},
               "cmps": {"s": {"p": "sensor", "uniq_id": "x1_s", "stat_t": "x/s", "avty_t": "x/avail"}}}
    assert problems(payload) == []
