"""Device-based discovery payloads for the hub itself (HA 2024.11+): ``dev``, ``o`` and ``cmps``.

Pure functions: config in, JSON-ready dicts out; the plugin publishes them. Keys are written out in full
(``state_topic``, not ``stat_t``) because they are read more often than they are sent; only the root keys
that HA requires in abbreviated form in its own examples (``dev``, ``o``, ``cmps``, ``p``) are short.

Every component carries its own ``availability_topic`` instead of a shared root one: a component that also
lists a per-device ``availability`` (re-exposed devices) would otherwise inherit both forms, which HA
rejects as mutually exclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.homeassistant.naming import HaNames, slug

ORIGIN_NAME = "KITT Edge Hub"
MANUFACTURER = "KITT"
MODEL = "KITT Edge Hub"

# Event types of the confirmations event entity. "refused" is what a press from HA that could not be carried
# out looks like (nothing pending, PIN required, …), so automations can tell the user why.
EVENT_TYPES = ("requested", "approved", "cancelled", "expired", "done", "failed", "refused")

PAYLOAD_PRESS = "PRESS"
UNBOUND_SITE_KEY = "no_site"


@dataclass(frozen=True)
class SiteSlot:
    """Where a pending confirmation is waiting: a voice site, or ``None`` for ones not bound to a site
    (opened from Home Assistant, the web panel or the CLI)."""

    site: str | None
    key: str
    label: str


def site_slots(sites: Iterable[str]) -> list[SiteSlot]:
    slots = [SiteSlot(site=s, key=slug(s), label=s.replace("_", " ")) for s in sites]
    slots.append(SiteSlot(site=None, key=UNBOUND_SITE_KEY, label="no site"))
    return slots


def origin(version: str, support_url: str) -> dict[str, str]:
    return {"name": ORIGIN_NAME, "sw": version, "url": support_url}


def hub_device(names: HaNames, version: str, configuration_url: str | None) -> dict[str, Any]:
    name = "KITT" if names.hub_id == "kitt" else f"KITT {names.hub_id}"
    dev: dict[str, Any] = {"identifiers": [names.device_id], "name": name, "manufacturer": MANUFACTURER,
                           "model": MODEL, "sw_version": version}
    if configuration_url:
        dev["configuration_url"] = configuration_url
    return dev


def hub_availability(names: HaNames) -> dict[str, str]:
    return {"availability_topic": names.availability, "payload_available": "online",
            "payload_not_available": "offline"}


def _base(names: HaNames, platform: str, thing: str, name: str) -> dict[str, Any]:
    uid = names.unique_id(thing)
    return {"p": platform, "unique_id": uid, "default_entity_id": f"{platform}.{uid}", "name": name,
            **hub_availability(names)}


def _sensor(names: HaNames, thing: str, name: str, **extra: Any) -> dict[str, Any]:
    return {**_base(names, "sensor", thing, name), "state_topic": names.state(thing),
            "json_attributes_topic": names.attributes(thing), **extra}


def job_thing(job: str) -> str:
    return f"job_{slug(job)}"


def hub_components(names: HaNames, *, jobs: Iterable[str], sites: Iterable[SiteSlot],
                   pin_entities: bool) -> dict[str, dict[str, Any]]:
    """component_id → config. component ids equal the ``thing`` part of unique_id and topics."""
    cmps: dict[str, dict[str, Any]] = {
        "pending_confirmations": _sensor(names, "pending_confirmations", "Pending confirmations",
                                         state_class="measurement", icon="mdi:shield-alert"),
        "cache_hit_ratio": _sensor(names, "cache_hit_ratio", "Cache hit ratio", unit_of_measurement="%",
                                   state_class="measurement", entity_category="diagnostic",
                                   suggested_display_precision=1),
        "spine": _sensor(names, "spine", "Spine status", entity_category="diagnostic", icon="mdi:lan"),
        "connectivity": {**_base(names, "binary_sensor", "connectivity", "Ready"),
                         "state_topic": names.state("connectivity"),
                         "json_attributes_topic": names.attributes("connectivity"),
                         "device_class": "connectivity", "payload_on": "ON", "payload_off": "OFF",
                         "entity_category": "diagnostic"},
        "confirmations": {**_base(names, "event", "confirmations", "Confirmation"),
                          "state_topic": names.event, "event_types": list(EVENT_TYPES)},
    }
    for job in jobs:
        thing = job_thing(job)
        cmps[thing] = _sensor(names, thing, f"Routine {job.replace('_', ' ')}", icon="mdi:calendar-clock")
    for slot in sites:
        for verb in ("approve", "cancel"):
            thing = f"{verb}_{slot.key}"
            cmps[thing] = {**_base(names, "button", thing, f"{verb.capitalize()} ({slot.label})"),
                           "command_topic": names.command(thing), "payload_press": PAYLOAD_PRESS,
                           "retain": False, "qos": 1,
                           "icon": "mdi:check-decagram" if verb == "approve" else "mdi:close-octagon"}
        if pin_entities:
            thing = f"pin_{slot.key}"
            cmps[thing] = {**_base(names, "text", thing, f"PIN ({slot.label})"),
                           "command_topic": names.command(thing), "state_topic": names.state(thing),
                           "mode": "password", "min": 0, "max": 64, "retain": False, "qos": 1,
                           "icon": "mdi:form-textbox-password"}
    return cmps


def device_config(dev: Mapping[str, Any], org: Mapping[str, Any], cmps: Mapping[str, Mapping[str, Any]],
                  ) -> dict[str, Any]:
    return {"dev": dict(dev), "o": dict(org), "cmps": {k: dict(v) for k, v in cmps.items()}}


def platforms_of(payload: Mapping[str, Any]) -> dict[str, str]:
    """component_id → platform of a device config: what must be remembered to remove components later."""
    return {cid: str(c["p"]) for cid, c in payload.get("cmps", {}).items()}


def removal_update(payload: Mapping[str, Any], removed: Mapping[str, str]) -> dict[str, Any]:
    """The documented first step of removing components: the same config with each removed one as
    ``{"p": <platform>}`` only. The caller then publishes the config without them."""
    cmps = {k: dict(v) for k, v in payload["cmps"].items()}
    for cid, platform in removed.items():
        cmps[cid] = {"p": platform}
    return {**payload, "cmps": cmps}
