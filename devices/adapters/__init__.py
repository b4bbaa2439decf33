"""Bridge adapters: one class per bridge convention, chosen by ``[devices.NAME] adapter``."""

from __future__ import annotations

from devices.adapters.base import Adapter, Command, UnsupportedAction, Update
from devices.adapters.generic import GenericAdapter
from devices.adapters.tasmota import TasmotaAdapter
from devices.adapters.zigbee2mqtt import Zigbee2MqttAdapter
from devices.registry import Device

ADAPTERS = {"zigbee2mqtt": Zigbee2MqttAdapter, "tasmota": TasmotaAdapter, "generic": GenericAdapter}


def adapter_for(device: Device) -> Adapter:
    return ADAPTERS[device.info.adapter](device)


__all__ = ["ADAPTERS", "Adapter", "Command", "UnsupportedAction", "Update", "adapter_for"]
