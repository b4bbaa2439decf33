"""What the hub shows Home Assistant, derived from the configuration alone: the hub device with its entities,
and one device per re-exposed hub-managed device. Pure, so the same config always yields the same payloads
(unique_ids stable across restarts) and a test can check them without a broker.
"""

from __future__ import annotations

from typing import Any

from handlers.homeassistant import discovery as disc
from handlers.homeassistant.naming import HaNames, slug
from handlers.homeassistant.platforms import ExposedDevice, component, device_block
from hub.config import Config


def names_for(cfg: Config) -> HaNames:
    return HaNames(cfg.hub.id, cfg.homeassistant.discovery_prefix)


def exposed_devices(cfg: Config) -> dict[str, ExposedDevice]:
    """slug → device, for devices with ``expose_to_homeassistant = true`` and a kind HA has a platform for."""
    out: dict[str, ExposedDevice] = {}
    for name, section in cfg.devices.items():
        dev = ExposedDevice(name=name, label=section.name or name.replace("_", " "), kind=section.kind,
                            area=section.area, adapter=section.adapter, device_class=section.device_class)
        if section.expose_to_homeassistant and dev.platform is not None:
            out[slug(name)] = dev
    return out


def build_configs(cfg: Config, version: str) -> dict[str, dict[str, Any]]:
    """discovery object_id → device config payload."""
    names = names_for(cfg)
    panel = f"http://{cfg.web.listen}/"
    org = disc.origin(version, panel)
    hub_cmps = disc.hub_components(names, jobs=list(cfg.jobs), sites=disc.site_slots(cfg.voice.sites),
                                   pin_entities=cfg.hazards.allow_pin_from_homeassistant)
    configs = {names.hub_id: disc.device_config(disc.hub_device(names, version, panel), org, hub_cmps)}
    for dev in exposed_devices(cfg).values():
        cmp = component(names, dev)
        if cmp is not None:
            configs[names.device_object_id(dev.name)] = disc.device_config(
                device_block(names, dev, version), org, {"device": cmp})
    return configs
