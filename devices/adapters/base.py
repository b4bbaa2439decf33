"""What every bridge adapter provides: the topics it reads, how it reads them, and the commands it writes.

Adapters are pure (no I/O): the devices handler subscribes, feeds payloads in and writes commands to the
outbox. Lenient for what devices send: an unreadable payload yields ``None`` and is logged by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from hub.contracts import DeviceAction


class UnsupportedAction(ValueError):
    """The device (or its adapter) cannot do this action."""


@dataclass(frozen=True)
class Command:
    topic: str
    payload: str | bytes | dict[str, Any]
    qos: int = 2


@dataclass(frozen=True)
class Update:
    """What one message said: state keys (merged into the tracked state) and/or availability."""

    state: dict[str, Any] = field(default_factory=dict)
    available: bool | None = None
    bridge_available: bool | None = None


class Adapter(Protocol):
    def topics(self) -> dict[str, str]:
        """Exact topics to subscribe to (no wildcards) → a role the adapter understands in ``parse``."""
        ...

    def parse(self, role: str, payload: bytes) -> Update | None: ...

    def commands(self, action: DeviceAction, key: str | None = None) -> list[Command]:
        """Bridge commands for ``action`` (``key``: the idempotency key, where the payload may carry it);
        raises ``UnsupportedAction``."""
        ...

    def refresh(self) -> list[Command]:
        """Read requests that make the bridge report the current state (sent after connecting)."""
        ...


def require(device: Any, action: DeviceAction) -> None:
    """Refuse an action outside the device's capabilities before building any payload."""
    if action.action not in device.info.capabilities:
        raise UnsupportedAction(f"The {device.label} cannot {action.action.replace('_', ' ')}")


def parse_json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None


def parse_availability(payload: bytes, online: str = "online", offline: str = "offline") -> bool | None:
    """``online``/``offline`` plain (Zigbee2MQTT 1.x, Tasmota LWT) or ``{"state": "online"}`` (Zigbee2MQTT 2.x)."""
    text = payload.decode("utf-8", "replace").strip()
    data = parse_json(payload) if text.startswith("{") else None
    if isinstance(data, dict):
        text = str(data.get("state", ""))
    if text.lower() == online.lower():
        return True
    if text.lower() == offline.lower():
        return False
    return None


def number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
