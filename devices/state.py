"""In-memory device state and availability: the hub's fast view, warmed from PostgreSQL and kept current by
the bridges' messages. Only real changes count (coalescing): a repeated identical report changes nothing,
wakes no waiter and records no event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from devices.capabilities import target_reached
from hub.contracts import DeviceAction, DeviceState

log = structlog.get_logger("kitt.devices.state")

ChangeCallback = Callable[[str, DeviceState], Any]


@dataclass
class _Entry:
    state: dict[str, Any] = field(default_factory=dict)
    own_available: bool | None = None
    bridge_available: bool | None = None
    updated_at: datetime | None = None

    @property
    def available(self) -> bool | None:
        # A bridge that is down makes its devices unreachable, whatever they last said.
        if self.bridge_available is False or self.own_available is False:
            return False
        return self.own_available


@dataclass(frozen=True)
class Change:
    """What one update really changed (empty ``state`` and ``available_changed`` False: nothing)."""

    name: str
    state: dict[str, Any]
    available_changed: bool
    current: DeviceState

    @property
    def empty(self) -> bool:
        return not self.state and not self.available_changed


class StateTracker:
    def __init__(self, names: list[str]) -> None:
        self._entries = {n: _Entry() for n in names}
        self._callbacks: list[ChangeCallback] = []
        self._waiters: list[tuple[DeviceAction, asyncio.Future[bool]]] = []

    def get(self, name: str) -> DeviceState | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        return DeviceState(name=name, state=dict(entry.state), available=entry.available,
                           updated_at=entry.updated_at)

    def warm(self, name: str, state: Mapping[str, Any], available: bool | None, updated_at: datetime | None) -> None:
        """Load what PostgreSQL remembered, before any bridge message arrives."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.state = dict(state)
            entry.own_available = available
            entry.updated_at = updated_at

    def apply(self, name: str, *, state: Mapping[str, Any] | None = None, available: bool | None = None,
              bridge_available: bool | None = None) -> Change:
        entry = self._entries[name]
        before_available = entry.available
        changed = {k: v for k, v in (state or {}).items() if entry.state.get(k) != v}
        entry.state.update(changed)
        if available is not None:
            entry.own_available = available
        if bridge_available is not None:
            entry.bridge_available = bridge_available
        available_changed = entry.available != before_available
        if changed or available_changed:
            entry.updated_at = datetime.now(UTC)
        change = Change(name=name, state=changed, available_changed=available_changed, current=self.get(name))
        if not change.empty:
            self._notify(change)
        return change

    def _notify(self, change: Change) -> None:
        for callback in list(self._callbacks):
            try:
                callback(change.name, change.current)
            except Exception:  # one subscriber's bug must not stop state tracking for the others
                log.exception("device change callback failed", device=change.name)
        for action, fut in list(self._waiters):
            if action.device == change.name and not fut.done() and self.reached(action) is True:
                fut.set_result(True)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        self._callbacks.append(callback)

        def undo() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return undo

    def reached(self, action: DeviceAction) -> bool | None:
        entry = self._entries.get(action.device)
        return None if entry is None else target_reached(action, entry.state)

    async def wait_for(self, action: DeviceAction, timeout: float) -> bool:
        if self.reached(action) is True:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiter = (action, fut)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            self._waiters.remove(waiter)
