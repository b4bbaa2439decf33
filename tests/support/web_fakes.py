"""In-memory stand-ins for the services the web API uses (unit tests: no database, no broker)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.contracts import Confirmation, ConfirmationError, DeviceAction, DeviceInfo, DeviceState, Principal


class FakeDevices:
    def __init__(self) -> None:
        self.infos = {
            "kitchen_light": DeviceInfo("kitchen_light", "kitchen light", "light", "kitchen", "zigbee2mqtt",
                                        ("turn_on", "turn_off", "toggle", "set_brightness"), {}),
            "front_door": DeviceInfo("front_door", "front door", "lock", "hall", "zigbee2mqtt",
                                     ("lock", "unlock"), {"unlock": "lock.unlock"}),
        }
        self.states = {n: DeviceState(n, {}, None, None) for n in self.infos}
        self.enqueued: list[tuple[DeviceAction, str]] = []
        self._callbacks: list[Callable[[str, DeviceState], Any]] = []

    def all(self) -> list[DeviceInfo]:
        return list(self.infos.values())

    def get(self, name: str) -> DeviceInfo | None:
        return self.infos.get(name)

    def state(self, name: str) -> DeviceState | None:
        return self.states.get(name)

    def hazard_class(self, action: DeviceAction) -> str | None:
        return self.infos[action.device].hazards.get(action.action)

    def validate(self, action: DeviceAction) -> str | None:
        if action.action not in self.infos[action.device].capabilities:
            return f"The {action.device} cannot {action.action}."
        return None

    async def enqueue_command(self, conn: Any, action: DeviceAction, *, key: str,
                              correlation_id: str | None = None) -> int | None:
        self.enqueued.append((action, key))
        return len(self.enqueued)

    def subscribe_changes(self, callback: Callable[[str, DeviceState], Any]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def report(self, name: str, **state: Any) -> None:
        self.states[name] = DeviceState(name, {**self.states[name].state, **state}, True, datetime.now(UTC))
        for cb in list(self._callbacks):
            cb(name, self.states[name])


class FakeConfirmations:
    def __init__(self) -> None:
        self.items: dict[str, Confirmation] = {}
        self._callbacks: list[Callable[[Confirmation], Any]] = []

    async def request(self, action: DeviceAction, *, hazard_class: str, principal: Principal,
                      correlation_id: str | None = None, conn: Any = None) -> Confirmation:
        now = datetime.now(UTC)
        c = Confirmation(id=uuid.uuid4().hex[:16], action=action, hazard_class=hazard_class, level="ack",
                         state="pending", prompt=f"Are you sure you want to {action.action}?",
                         requested_by=principal, site=None, session_id=None, created_at=now,
                         expires_at=now + timedelta(seconds=60), correlation_id=correlation_id)
        self.items[c.id] = c
        return c

    async def _move(self, cid: str, to: str) -> Confirmation:
        c = self.items.get(cid)
        if c is None:
            raise ConfirmationError("not_found", "no such confirmation")
        if c.state != "pending":
            raise ConfirmationError("not_pending", f"the confirmation is {c.state}")
        c = self.items[cid] = replace(c, state=to)  # type: ignore[arg-type]
        for cb in list(self._callbacks):
            cb(c)
        return c

    async def approve(self, cid: str, *, principal: Principal, pin: str | None = None) -> Confirmation:
        return await self._move(cid, "executing")

    async def cancel(self, cid: str, *, principal: Principal) -> Confirmation:
        return await self._move(cid, "cancelled")

    async def get(self, cid: str) -> Confirmation | None:
        return self.items.get(cid)

    async def pending(self, *, site: str | None = None) -> list[Confirmation]:
        return [c for c in self.items.values() if c.state == "pending"]

    def subscribe(self, callback: Callable[[Confirmation], Any]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)


@dataclass
class FakeJobs:
    runs: list[dict[str, Any]] = field(default_factory=list)

    async def list_jobs(self) -> list[dict[str, Any]]:
        return [{"name": "daily_health_check", "expr": "0 6 * * *", "enabled": True, "next_run_at": None,
                 "last_status": None, "last_success_at": None}]

    async def run_now(self, name: str) -> int:
        run_id = len(self.runs) + 1
        self.runs.insert(0, {"id": run_id, "job": name, "status": "scheduled", "trigger": "manual",
                             "created_at": datetime.now(UTC), "attempts": 0})
        return run_id

    async def history(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [r for r in self.runs if name in (None, r["job"])][:limit]


@dataclass
class FakeCache:
    entries: dict[str, set[str]] = field(default_factory=dict)

    async def stats(self) -> dict[str, Any]:
        return {"entries": len(self.entries), "hits": 3, "misses": 1, "hit_ratio": 0.75, "evictions": 0,
                "degraded": False}

    async def invalidate_key(self, text: str) -> int:
        return 1 if self.entries.pop(text, None) is not None else 0

    async def invalidate_tag(self, tag: str) -> int:
        gone = [k for k, tags in self.entries.items() if tag in tags]
        for k in gone:
            del self.entries[k]
        return len(gone)

    async def invalidate_all(self) -> int:
        n = len(self.entries)
        self.entries.clear()
        return n


class FakeStore:
    """Only what the API calls: ``transaction()`` (yields a placeholder connection) and ``events()``."""

    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self._events = sorted(events or [], key=lambda e: -e["id"])
        self.transactions = 0

    def transaction(self) -> Any:
        store = self

        class _Tx:
            async def __aenter__(self) -> object:
                store.transactions += 1
                return object()

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Tx()

    async def events(self, *, limit: int = 50, before_id: int | None = None, kind: str | None = None,
                     subject: str | None = None, correlation_id: str | None = None) -> list[dict[str, Any]]:
        rows = [e for e in self._events if (before_id is None or e["id"] < before_id)
                and kind in (None, e["kind"]) and subject in (None, e["subject"])]
        return rows[:limit]


class FakeSpine:
    """``transaction()`` as the spine's: the store's transaction, then the relay told once it committed."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.notified = 0

    def notify_outbox(self) -> None:
        self.notified += 1

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self._store.transaction() as conn:
            yield conn
        self.notify_outbox()


def make_event(i: int, kind: str = "device.command", subject: str = "kitchen_light") -> dict[str, Any]:
    return {"id": i, "at": datetime.now(UTC), "actor": "test", "kind": kind, "subject": subject,
            "correlation_id": None, "body": {"n": i}}
