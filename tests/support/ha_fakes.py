"""In-memory stand-ins for the confirmations and devices services, for the Home Assistant tests.

They follow ``hub.contracts`` and record every call, so a test can assert what the plugin asked for (and,
as important, what it did not: no approve, no command).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.contracts import Confirmation, ConfirmationError, DeviceAction, DeviceInfo, DeviceState, Principal


def make_confirmation(device: str = "front_door", action: str = "unlock", *, level: str = "ack",
                      site: str | None = "kitchen", state: str = "pending", cid: str | None = None,
                      hazard_class: str = "lock.unlock") -> Confirmation:
    now = datetime.now(UTC)
    return Confirmation(id=cid or uuid.uuid4().hex[:16], action=DeviceAction(device, action),
                        hazard_class=hazard_class, level=level, state=state,  # type: ignore[arg-type]
                        prompt=f"{action} {device}?",
                        requested_by=Principal(kind="voice", site=site, session_id="s1") if site
                        else Principal(kind="user", user="web"),
                        site=site, session_id="s1" if site else None, created_at=now,
                        expires_at=now + timedelta(minutes=1))


@dataclass
class FakeConfirmations:
    items: dict[str, Confirmation] = field(default_factory=dict)
    calls: list[tuple[str, str, Principal, str | None]] = field(default_factory=list)
    requests: list[tuple[DeviceAction, str, Principal]] = field(default_factory=list)
    subscribers: list[Callable[[Confirmation], Any]] = field(default_factory=list)
    pin: str = "1234"

    def add(self, c: Confirmation) -> Confirmation:
        self.items[c.id] = c
        return c

    def _set(self, c: Confirmation, state: str) -> Confirmation:
        c = replace(c, state=state)  # type: ignore[arg-type]
        self.items[c.id] = c
        for cb in self.subscribers:
            cb(c)
        return c

    async def pending(self, *, site: str | None = None) -> list[Confirmation]:
        return [c for c in self.items.values() if c.state == "pending" and (site is None or c.site == site)]

    async def get(self, confirmation_id: str) -> Confirmation | None:
        return self.items.get(confirmation_id)

    async def request(self, action: DeviceAction, *, hazard_class: str, principal: Principal,
                      correlation_id: str | None = None, conn: Any = None) -> Confirmation:
        self.requests.append((action, hazard_class, principal))
        c = make_confirmation(action.device, action.action, site=None, hazard_class=hazard_class)
        self.items[c.id] = c
        return self._set(c, "pending")

    async def approve(self, confirmation_id: str, *, principal: Principal, pin: str | None = None) -> Confirmation:
        self.calls.append(("approve", confirmation_id, principal, pin))
        c = self.items.get(confirmation_id)
        if c is None:
            raise ConfirmationError("not_found", "no such confirmation")
        if c.state != "pending":
            raise ConfirmationError("not_pending", f"the confirmation is {c.state}")
        if c.level == "pin" and pin != self.pin:
            raise ConfirmationError("pin_wrong" if pin else "pin_required", "wrong PIN")
        return self._set(c, "executing")

    async def cancel(self, confirmation_id: str, *, principal: Principal) -> Confirmation:
        self.calls.append(("cancel", confirmation_id, principal, None))
        c = self.items[confirmation_id]
        if c.state != "pending":
            raise ConfirmationError("not_pending", f"the confirmation is {c.state}")
        return self._set(c, "cancelled")

    def subscribe(self, callback: Callable[[Confirmation], Any]) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)


HAZARDS = {("front_door", "unlock"): "lock.unlock", ("garage_door", "open"): "cover.open",
           ("oven", "turn_on"): "appliance.on", ("alarm", "disarm"): "alarm.disarm"}


@dataclass
class FakeDevices:
    """``enqueue`` (optional) is called inside the caller's transaction, e.g. to write a real outbox row."""

    states: dict[str, DeviceState] = field(default_factory=dict)
    commands: list[tuple[DeviceAction, str]] = field(default_factory=list)
    enqueue: Callable[[Any, DeviceAction, str], Awaitable[Any]] | None = None
    subscribers: list[Callable[[str, DeviceState], Any]] = field(default_factory=list)

    def all(self) -> list[DeviceInfo]:
        return []

    def get(self, name: str) -> DeviceInfo | None:
        return None

    def state(self, name: str) -> DeviceState | None:
        return self.states.get(name)

    def hazard_class(self, action: DeviceAction) -> str | None:
        return HAZARDS.get((action.device, action.action))

    def validate(self, action: DeviceAction) -> str | None:
        return None

    async def enqueue_command(self, conn: Any, action: DeviceAction, *, key: str,
                              correlation_id: str | None = None) -> int | None:
        self.commands.append((action, key))
        if self.enqueue is not None:
            await self.enqueue(conn, action, key)
        return len(self.commands)

    def reached(self, action: DeviceAction) -> bool | None:
        return None

    async def wait_for(self, action: DeviceAction, timeout: float) -> bool:
        return False

    def subscribe_changes(self, callback: Callable[[str, DeviceState], Any]) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def change(self, name: str, state: dict[str, Any], available: bool | None = True) -> None:
        self.states[name] = DeviceState(name=name, state=state, available=available, updated_at=datetime.now(UTC))
        for cb in self.subscribers:
            cb(name, self.states[name])
