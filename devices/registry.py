"""The device registry, built once from ``[devices.NAME]``: names, spoken labels, aliases, areas, capabilities
and hazard classes. Read-only after construction; adapters and the state tracker hang off it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from devices.capabilities import KIND_ACTIONS, hazard_of, merge_hazards
from hub.config import DeviceSection
from hub.contracts import DeviceAction, DeviceInfo


@dataclass(frozen=True)
class Device:
    """One configured device: the neutral ``info`` plus the adapter's own options."""

    info: DeviceInfo
    topic: str
    device_class: str
    aliases: tuple[str, ...]
    options: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def label(self) -> str:
        return self.info.label

    @property
    def kind(self) -> str:
        return self.info.kind

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def spoken_names(self) -> tuple[str, ...]:
        """Every way a person may name it: label, aliases, and the config key with spaces."""
        seen: list[str] = []
        for n in (self.label, *self.aliases, self.name.replace("_", " ")):
            n = n.strip().lower()
            if n and n not in seen:
                seen.append(n)
        return tuple(seen)


def build_device(name: str, section: DeviceSection) -> Device:
    capabilities = KIND_ACTIONS[section.kind]
    info = DeviceInfo(
        name=name,
        label=(section.name or name.replace("_", " ")).strip(),
        kind=section.kind,
        area=section.area.strip().lower(),
        adapter=section.adapter,
        capabilities=capabilities,
        hazards=merge_hazards(section.kind, section.device_class, section.hazard),
    )
    return Device(info=info, topic=section.topic, device_class=section.device_class,
                  aliases=tuple(a.strip().lower() for a in section.aliases), options=dict(section.model_extra or {}))


class Registry:
    """Devices by config name. ``from_config`` is the only way the hub builds one."""

    def __init__(self, devices: list[Device]) -> None:
        self._devices = {d.name: d for d in devices}

    @classmethod
    def from_config(cls, devices: Mapping[str, DeviceSection]) -> Registry:
        return cls([build_device(name, section) for name, section in devices.items()])

    def __iter__(self) -> Iterator[Device]:
        return iter(self._devices.values())

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, name: object) -> bool:
        return name in self._devices

    def get(self, name: str) -> Device | None:
        return self._devices.get(name)

    def infos(self) -> list[DeviceInfo]:
        return [d.info for d in self._devices.values()]

    def areas(self) -> list[str]:
        return sorted({d.info.area for d in self._devices.values() if d.info.area})

    def in_area(self, area: str, kind: str | None = None) -> list[Device]:
        area = area.strip().lower()
        return [d for d in self._devices.values() if d.info.area == area and (kind is None or d.kind == kind)]

    def hazard_class(self, action: DeviceAction) -> str | None:
        device = self._devices.get(action.device)
        return None if device is None else hazard_of(device.info.hazards, action)

    def supports(self, action: DeviceAction) -> bool:
        device = self._devices.get(action.device)
        return device is not None and action.action in device.info.capabilities
