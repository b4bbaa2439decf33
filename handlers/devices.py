"""Devices: the registry from config, the bridges' state and availability tracked in memory (warmed from
PostgreSQL at start, changes recorded as events), and bridge commands written to the outbox.

Provides ``services.devices`` (``hub.contracts.DeviceService``). State topics are read on non-durable routes:
state reports are idempotent and frequent, so persisting each before its acknowledgement buys nothing; real
changes are written (state row + audit event, awaited) as they happen. The hub subscribes to no command
topic of any bridge, so a retained ``…/set`` or ``cmnd/…`` can never make it act.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg

from devices.adapters import Adapter, UnsupportedAction, adapter_for
from devices.registry import Registry
from devices.state import Change, ChangeCallback, StateTracker
from hub.contracts import DeviceAction, DeviceInfo, DeviceState
from hub.errors import SpineError
from hub.plugins import PluginContext
from hub.spine import Inbound, Route

# The last known state and its audit event in one statement (one round trip, no BEGIN/COMMIT of its own).
# Reports of one device are handled concurrently, so their writes may commit out of order: a state older
# than the stored one is not written over it (its event is still recorded).
_PERSIST_SQL = """WITH s AS (INSERT INTO device_state (name, state, available, updated_at)
                            VALUES ($1, $2::jsonb, $3, COALESCE($5, now()))
                            ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, available = EXCLUDED.available,
                                                             updated_at = EXCLUDED.updated_at
                            WHERE device_state.updated_at <= EXCLUDED.updated_at)
                  INSERT INTO events (actor, kind, subject, body)
                  VALUES ('devices', 'device.state', $1, $4::jsonb)"""
# $1 name, $2 state (dict, jsonb codec), $3 available, $4 event body (dict), $5 when the tracker applied it


def _speakable(action: str) -> str:
    return action.replace("_", " ")


class DeviceManager:
    """The ``DeviceService``: what devices exist, what they report, and how to command them."""

    def __init__(self, ctx: PluginContext, registry: Registry) -> None:
        self._ctx = ctx
        self.registry = registry
        self.adapters: dict[str, Adapter] = {d.name: adapter_for(d) for d in registry}
        self.tracker = StateTracker([d.name for d in registry])
        # topic → [(device, role)]: one bridge topic (Zigbee2MQTT bridge/state) may concern many devices.
        self.topic_map: dict[str, list[tuple[str, str]]] = {}
        for name, adapter in self.adapters.items():
            for topic, role in adapter.topics().items():
                self.topic_map.setdefault(topic, []).append((name, role))

    # --- DeviceService --------------------------------------------------------------------------------

    def all(self) -> list[DeviceInfo]:
        return self.registry.infos()

    def get(self, name: str) -> DeviceInfo | None:
        device = self.registry.get(name)
        return None if device is None else device.info

    def state(self, name: str) -> DeviceState | None:
        return self.tracker.get(name)

    def hazard_class(self, action: DeviceAction) -> str | None:
        return self.registry.hazard_class(action)

    def validate(self, action: DeviceAction) -> str | None:
        device = self.registry.get(action.device)
        if device is None:
            return f"I don't know a device called {action.device.replace('_', ' ')}."
        if action.action not in device.info.capabilities:
            return f"The {device.label} cannot {_speakable(action.action)}."
        try:
            self.adapters[device.name].commands(action)
        except UnsupportedAction as exc:
            return f"{exc}."
        except (KeyError, TypeError, ValueError):
            return f"That is not a valid {_speakable(action.action)} for the {device.label}."
        state = self.tracker.get(device.name)
        if state is not None and state.available is False:
            return f"The {device.label} is unavailable."
        return None

    async def enqueue_command(self, conn: asyncpg.Connection, action: DeviceAction, *, key: str,
                              correlation_id: str | None = None) -> int | None:
        commands = self.adapters[action.device].commands(action, key)
        first: int | None = None
        for i, cmd in enumerate(commands):
            row = await self._ctx.spine.enqueue(conn, topic=cmd.topic, payload=cmd.payload,
                                                key=key if len(commands) == 1 else f"{key}#{i}",
                                                qos=cmd.qos, correlation_id=correlation_id)
            first = row if first is None else first
        if first is not None:
            await self._ctx.store.record_event(
                "device.command", actor="devices", subject=action.device, correlation_id=correlation_id,
                body={"action": action.action, "params": action.params, "key": key,
                      "topics": [c.topic for c in commands]}, conn=conn)
        return first

    def reached(self, action: DeviceAction) -> bool | None:
        return self.tracker.reached(action)

    async def wait_for(self, action: DeviceAction, timeout: float) -> bool:
        return await self.tracker.wait_for(action, timeout)

    def subscribe_changes(self, callback: ChangeCallback) -> Callable[[], None]:
        return self.tracker.subscribe(callback)

    # --- inbound state ----------------------------------------------------------------------------------

    async def handle(self, msg: Inbound) -> None:
        for name, role in self.topic_map.get(msg.topic, ()):
            update = self.adapters[name].parse(role, msg.payload)
            if update is None:
                self._ctx.log.info("unreadable device report ignored", device=name, topic=msg.topic,
                                   payload=msg.payload[:120].decode("utf-8", "replace"))
                continue
            change = self.tracker.apply(name, state=update.state, available=update.available,
                                        bridge_available=update.bridge_available)
            if not change.empty:
                await self._persist(change, msg.topic)

    async def _persist(self, change: Change, topic: str) -> None:
        current = change.current
        body: dict[str, Any] = {"topic": topic, "available": current.available}
        if change.state:
            body["changed"] = change.state
        await self._ctx.store.write(_PERSIST_SQL, change.name, current.state, current.available, body,
                                    current.updated_at)

    async def warm(self) -> int:
        rows = await self._ctx.store.fetch(
            "SELECT name, state, available, updated_at FROM device_state WHERE name = ANY($1::text[])",
            [d.name for d in self.registry],  # $1 configured names
        )
        for r in rows:
            state = r["state"] if isinstance(r["state"], dict) else json.loads(r["state"])
            self.tracker.warm(r["name"], state, r["available"], r["updated_at"])
        return len(rows)

    async def refresh_unknown(self) -> None:
        """Ask the bridges for the state of devices we know nothing about (after each connect)."""
        for name, adapter in self.adapters.items():
            state = self.tracker.get(name)
            if state is not None and state.state:
                continue
            for cmd in adapter.refresh():
                try:
                    await self._ctx.spine.publish(cmd.topic, cmd.payload, qos=min(cmd.qos, 1))
                except SpineError as exc:
                    self._ctx.log.warning("state refresh not sent", device=name, error=str(exc))
                    return

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.registry:
            s = self.tracker.get(d.name)
            out[d.name] = {"available": s.available if s else None, "state": s.state if s else {}}
        return out


class DevicesPlugin:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self.manager: DeviceManager | None = None
        self._running = False

    async def start(self) -> None:
        ctx = self._ctx
        manager = DeviceManager(ctx, Registry.from_config(ctx.config.devices))
        warmed = await manager.warm()
        for topic, targets in manager.topic_map.items():
            adapter = ctx.config.devices[targets[0][0]].adapter
            ctx.route(Route(filter=topic, handler=manager.handle, name=f"devices.{adapter}", qos=1,
                            durable=False, ordering_key=lambda m: m.topic, report_errors=False))
        self.manager = manager
        self._running = True
        ctx.spine.on_connect(self._on_connect)
        ctx.services.devices = manager
        ctx.log.info("devices ready", devices=len(manager.registry), warmed=warmed, topics=len(manager.topic_map))

    async def _on_connect(self, session_present: bool) -> None:
        if self._running and self.manager is not None:
            await self.manager.refresh_unknown()

    async def stop(self) -> None:
        self._running = False
        if self._ctx.services.devices is self.manager:
            self._ctx.services.devices = None


def create(ctx: PluginContext) -> DevicesPlugin:
    return DevicesPlugin(ctx)
