"""The Home Assistant plugin: discovery, birth handling, the hub's entities, re-exposed devices, statestream.

Lifecycle: ``start()`` declares routes and starts two named tasks (a periodic state refresh and the worker
that turns service notifications into MQTT messages); nothing is published before the spine connects.
On every (re)connect and on every HA birth (``<prefix>/status`` = ``online``, after a random delay), the
hub republishes discovery, then every state: HA forgets nothing that way, whichever side restarted.

Hygiene (reference §7): configs and states are retained, commands and events never; a retained command is
never executed (``accept_retained=False``) and is cleared from the broker; components and devices that
disappear from the configuration are removed the documented way.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from handlers.homeassistant import discovery as disc
from handlers.homeassistant import hub_state
from handlers.homeassistant.confirm_actions import (
    HA_PRINCIPAL,
    ConfirmActions,
    EventDeduper,
    Refusal,
    event_for,
    refusal_event,
    slots_by_thing,
)
from handlers.homeassistant.layout import build_configs, exposed_devices, names_for
from handlers.homeassistant.naming import slug
from handlers.homeassistant.platforms import ExposedDevice, parse_command, render_availability, render_state
from handlers.homeassistant.published import PublishedConfig, PublishedStore
from handlers.homeassistant.statestream import HaEntities, split_topic
from hub.contracts import Confirmation, DeviceState
from hub.errors import InputRejected, SpineError, StoreError
from hub.plugins import PluginContext
from hub.spine import Inbound, Route

REFRESH_S = 15.0
UPDATE_QUEUE_MAX = 1000
EXTRA_KEY = "ha_entities"


def _version() -> str:
    try:
        return version("kitt-hub")
    except PackageNotFoundError:
        return "0+unknown"


class HomeAssistantPlugin:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._log = ctx.log
        cfg = ctx.config
        self._settings = cfg.homeassistant
        self._names = names_for(cfg)
        self._slots = disc.site_slots(cfg.voice.sites)
        self._pin_entities = cfg.hazards.allow_pin_from_homeassistant
        self._commands = slots_by_thing(self._slots, self._pin_entities)
        self._actions = ConfirmActions(allow_pin=self._pin_entities)
        self._jobs = list(cfg.jobs)
        self._exposed = exposed_devices(cfg)
        self._published = PublishedStore(ctx.store, cfg.hub.id)
        self._remembered: dict[tuple[str, str], dict[str, str]] = {}  # used when the store cannot answer
        self._entities = HaEntities() if self._settings.statestream_base else None
        self._last: dict[str, str] = {}
        self._deduper = EventDeduper()
        self._version = "0+unknown"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._updates: asyncio.Queue[tuple[Any, ...]] | None = None
        self._announce_lock: asyncio.Lock | None = None
        self._birth_task: asyncio.Task[Any] | None = None
        self._service_undo: dict[str, tuple[Any, Callable[[], Any]]] = {}
        self._running = False

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        self._version = _version()
        self._updates = asyncio.Queue(maxsize=UPDATE_QUEUE_MAX)
        self._announce_lock = asyncio.Lock()
        spine = self._ctx.spine
        spine.on_connect(self._on_connect)
        if not self._settings.enabled:
            return  # on connect: remove whatever an earlier, enabled run left retained
        route = self._ctx.route
        route(Route(filter=self._names.birth_topic, handler=self._on_birth, name="homeassistant.birth", qos=1,
                    durable=False, accept_retained=True, report_errors=False))
        command_filters = (self._names.command_filter, *self._names.device_command_filters)
        route(Route(filter=command_filters[0], handler=self._on_command, name="homeassistant.command", qos=1,
                    accept_retained=False))
        for f in command_filters[1:]:
            route(Route(filter=f, handler=self._on_device_command, name="homeassistant.device", qos=1,
                        accept_retained=False))
        for f in command_filters:
            # Sees the retained commands the routes above drop, only to clear them from the broker.
            route(Route(filter=f, handler=self._on_retained_command, name="homeassistant.retained", qos=1,
                        durable=False, accept_retained=True, report_errors=False))
        if self._entities is not None:
            base = self._settings.statestream_base.rstrip("/")
            if base == self._settings.discovery_prefix:
                self._log.warning("statestream_base equals the discovery prefix; discovery topics are skipped",
                                  base=base)
            route(Route(filter=f"{base}/#", handler=self._on_statestream, name="homeassistant.statestream",
                        qos=1, durable=False, accept_retained=True, report_errors=False))
            self._ctx.services.extra[EXTRA_KEY] = self._entities
        self._attach_services()
        self._spawn(self._refresh_loop(), "kitt[homeassistant].refresh")
        self._spawn(self._update_worker(), "kitt[homeassistant].updates")

    async def stop(self) -> None:
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, undo in self._service_undo.values():
            undo()
        self._service_undo.clear()
        if self._ctx.services.extra.get(EXTRA_KEY) is self._entities:
            self._ctx.services.extra.pop(EXTRA_KEY, None)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("homeassistant task failed", task=task.get_name(), error=repr(exc))

    def _attach_services(self) -> None:
        """Subscribe to services that may appear after start() (a provider that started later)."""
        services = self._ctx.services
        wanted: dict[str, tuple[Any, Callable[[Any], Callable[[], Any]]]] = {
            "confirmations": (services.confirmations, lambda s: s.subscribe(self._on_confirmation)),
        }
        if self._exposed:
            wanted["devices"] = (services.devices, lambda s: s.subscribe_changes(self._on_device_change))
        for key, (service, subscribe) in wanted.items():
            current = self._service_undo.get(key)
            if current is not None and current[0] is service:
                continue
            if current is not None:
                current[1]()
                del self._service_undo[key]
            if service is not None:
                self._service_undo[key] = (service, subscribe(service))

    # --- announce: discovery, then state --------------------------------------------------------------

    def _on_connect(self, session_present: bool) -> None:
        if not self._running:
            return
        if self._settings.enabled:
            self._spawn(self._announce(), "kitt[homeassistant].announce")
        else:
            self._spawn(self._retire(), "kitt[homeassistant].retire")

    async def _on_birth(self, msg: Inbound) -> None:
        if msg.payload.strip() != b"online":
            return
        if self._birth_task is not None and not self._birth_task.done():
            return  # one announce is already on its way
        self._birth_task = self._spawn(self._announce_after_birth(), "kitt[homeassistant].birth")

    async def _announce_after_birth(self) -> None:
        # The random delay is HA's advice: many integrations answering the same birth at once load the broker.
        await asyncio.sleep(random.uniform(0, self._settings.birth_delay_max_s))
        await self._announce()

    async def _announce(self) -> None:
        assert self._announce_lock is not None
        async with self._announce_lock:
            self._attach_services()
            try:
                await self._publish_discovery()
                await self._publish_states(force=True)
            except (SpineError, TimeoutError) as exc:
                # Disconnected meanwhile: the next connect announces again.
                self._log.warning("could not announce to Home Assistant", error=str(exc) or type(exc).__name__)

    async def _load_published(self) -> dict[tuple[str, str], dict[str, str]]:
        try:
            rows = await self._published.load()
        except StoreError as exc:
            self._log.error("cannot read published discovery; using memory", error=str(exc))
            return dict(self._remembered)
        return {(r.prefix, r.object_id): r.components for r in rows}

    async def _remember(self, record: PublishedConfig | None, key: tuple[str, str]) -> None:
        """Record (or forget, with None) a published config; a store failure is logged and kept in memory."""
        try:
            if record is None:
                await self._published.forget(*key)
            else:
                await self._published.save(record.prefix, record.object_id, record.components)
        except StoreError as exc:
            self._log.error("cannot record published discovery", object_id=key[1], error=str(exc))
        if record is None:
            self._remembered.pop(key, None)
        else:
            self._remembered[key] = record.components

    async def _publish_discovery(self) -> None:
        prefix = self._names.discovery_prefix
        configs = build_configs(self._ctx.config, self._version)
        previous = await self._load_published()
        publish = self._ctx.spine.publish
        for (old_prefix, object_id) in previous:
            if old_prefix != prefix or object_id not in configs:
                # The whole device went away: an empty retained config deletes it (and clears the retain).
                await publish(f"{old_prefix}/device/{object_id}/config", b"", qos=1, retain=True, wait=True)
                await self._remember(None, (old_prefix, object_id))
                self._log.info("removed a Home Assistant device", object_id=object_id, prefix=old_prefix)
        for object_id, payload in configs.items():
            topic = self._names.discovery_topic(object_id)
            before = previous.get((prefix, object_id), {})
            removed = {cid: p for cid, p in before.items() if cid not in payload["cmps"]}
            if removed:
                await publish(topic, disc.removal_update(payload, removed), qos=1, retain=True, wait=True)
                self._log.info("removed Home Assistant entities", object_id=object_id, components=sorted(removed))
            await publish(topic, payload, qos=1, retain=True, wait=True)
            await self._remember(PublishedConfig(prefix, object_id, disc.platforms_of(payload)), (prefix, object_id))

    async def _retire(self) -> None:
        """Integration disabled: delete every device config this hub left retained."""
        for (prefix, object_id) in await self._load_published():
            try:
                await self._ctx.spine.publish(f"{prefix}/device/{object_id}/config", b"", qos=1, retain=True,
                                              wait=True)
            except (SpineError, TimeoutError) as exc:
                self._log.warning("could not remove a Home Assistant device", object_id=object_id, error=str(exc))
                return
            await self._remember(None, (prefix, object_id))

    async def _put(self, topic: str, payload: str, *, force: bool = False, retain: bool = True) -> None:
        """Publish a state when it changed (or when forced, after discovery). States are retained so an HA
        that restarts without a birth still sees them."""
        if not force and self._last.get(topic) == payload:
            return
        await self._ctx.spine.publish(topic, payload, qos=1, retain=retain)
        self._last[topic] = payload

    async def _publish_states(self, *, force: bool = False) -> None:
        ctx, names = self._ctx, self._names
        services = ctx.services
        values: list[tuple[str, tuple[str, str]]] = [
            ("pending_confirmations", await hub_state.pending_confirmations(services.confirmations)),
            ("cache_hit_ratio", await hub_state.cache_hit_ratio(services.cache)),
            ("spine", hub_state.spine_status(ctx.spine)),
            ("connectivity", await hub_state.connectivity(ctx.readiness)),
        ]
        jobs = await hub_state.job_results(services.jobs, ctx.store, self._jobs)
        values += [(disc.job_thing(job), result) for job, result in jobs.items()]
        for thing, (state, attributes) in values:
            await self._put(names.attributes(thing), attributes, force=force)
            await self._put(names.state(thing), state, force=force)
        if force and self._pin_entities:
            for slot in self._slots:
                # An empty PIN field; never retained, never an echo of what was typed.
                await self._put(names.state(f"pin_{slot.key}"), "", force=True, retain=False)
        devices = services.devices
        for dev in self._exposed.values():
            await self._publish_device(dev, devices.state(dev.name) if devices is not None else None, force=force)

    async def _publish_device(self, dev: ExposedDevice, state: DeviceState | None, *, force: bool = False) -> None:
        await self._put(self._names.device_availability(dev.name), render_availability(state), force=force)
        await self._put(self._names.device_state(dev.name), render_state(dev, state), force=force)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            if not self._ctx.spine.connection.connected:
                continue
            try:
                self._attach_services()
                await self._publish_states()
            except (SpineError, TimeoutError) as exc:
                self._log.warning("state refresh skipped", error=str(exc) or type(exc).__name__)
            except Exception:  # a bug in one refresh must not stop the next ones
                self._log.exception("state refresh failed")

    # --- notifications from services -------------------------------------------------------------------

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        assert self._updates is not None
        try:
            self._updates.put_nowait(item)
        except asyncio.QueueFull:
            # States are re-read on the next refresh; only an event can be lost, and that is logged.
            self._log.warning("update queue full; dropping a notification", kind=item[0])

    def _on_confirmation(self, confirmation: Confirmation) -> None:
        self._enqueue(("confirmation", confirmation))

    def _on_device_change(self, name: str, state: DeviceState) -> None:
        self._enqueue(("device", name, state))

    async def _update_worker(self) -> None:
        assert self._updates is not None
        while True:
            item = await self._updates.get()
            if not self._ctx.spine.connection.connected:
                continue  # the next connect republishes every state; events are not replayed (never retained)
            try:
                if item[0] == "confirmation":
                    await self._confirmation_changed(item[1])
                else:
                    dev = self._exposed.get(slug(item[1]))
                    if dev is not None and dev.name == item[1]:
                        await self._publish_device(dev, item[2])
            except (SpineError, TimeoutError) as exc:
                self._log.warning("could not publish an update", error=str(exc) or type(exc).__name__)
            except Exception:
                self._log.exception("update failed", kind=item[0])

    async def _confirmation_changed(self, c: Confirmation) -> None:
        event = event_for(c)
        if event is not None and self._deduper.first(c.id, event["event_type"]):
            await self._event(event)
        state, attributes = await hub_state.pending_confirmations(self._ctx.services.confirmations)
        await self._put(self._names.attributes("pending_confirmations"), attributes)
        await self._put(self._names.state("pending_confirmations"), state)

    async def _event(self, event: dict[str, Any]) -> None:
        # Never retained: HA ignores retained event payloads, and a replayed "requested" would mislead.
        await self._ctx.spine.publish(self._names.event, json.dumps(event), qos=1, retain=False)

    # --- commands from Home Assistant ------------------------------------------------------------------

    async def _audit(self, msg: Inbound, kind: str, subject: str, body: dict[str, Any]) -> None:
        """The audit event commits with the inbox row's "done", so a redelivery has no second record."""
        async with self._ctx.spine.handling(msg) as conn:
            await self._ctx.store.record_event(kind, actor="homeassistant", subject=subject, conn=conn, body=body)

    async def _on_command(self, msg: Inbound) -> None:
        if not msg.payload:
            return  # a cleared retain, not a command
        thing = self._names.parse_command(msg.topic)
        entry = self._commands.get(thing or "")
        if entry is None:
            raise InputRejected("unknown_entity", f"no Home Assistant command {thing!r}")
        verb, slot = entry
        service = self._ctx.services.confirmations
        outcome: Any
        if verb == "pin":
            try:
                pin = msg.payload.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise InputRejected("invalid_encoding", "payload is not UTF-8") from exc
            # Clear the field at once: the PIN must not linger in HA's state.
            await self._put(self._names.state(thing or ""), "", force=True, retain=False)
            outcome = await self._actions.approve(service, slot, pin=pin)
        else:
            if msg.payload.strip() != disc.PAYLOAD_PRESS.encode():
                raise InputRejected("invalid_payload", f"expected {disc.PAYLOAD_PRESS!r}")
            outcome = await (self._actions.approve(service, slot) if verb == "approve"
                             else self._actions.cancel(service, slot))
        body: dict[str, Any] = {"command": verb, "site": slot.site}
        if isinstance(outcome, Refusal):
            body.update(ok=False, reason=outcome.reason, message=outcome.message)
            self._log.info("Home Assistant command refused", command=verb, site=slot.site, reason=outcome.reason)
            await self._event(refusal_event(slot, verb, outcome))
        else:
            done = outcome if isinstance(outcome, list) else [outcome]
            body.update(ok=True, confirmations=[c.id for c in done])
        await self._audit(msg, "homeassistant.command", thing or "", body)

    async def _on_device_command(self, msg: Inbound) -> None:
        if not msg.payload:
            return
        parsed = self._names.parse_device_command(msg.topic)
        dev = self._exposed.get(parsed[0]) if parsed else None
        if parsed is None or dev is None:
            raise InputRejected("unknown_device", "no re-exposed device on this topic")
        action = parse_command(dev, parsed[1], msg.payload)
        devices = self._ctx.services.devices
        if devices is None:
            raise InputRejected("unavailable", "the device service is not running")
        if (reason := devices.validate(action)) is not None:
            raise InputRejected("not_possible", reason)
        key = f"ha:{msg.dedupe_key or uuid.uuid4().hex}"
        hazard = devices.hazard_class(action)
        spine, store = self._ctx.spine, self._ctx.store
        if hazard is not None:
            confirmations = self._ctx.services.confirmations
            if confirmations is None:
                raise InputRejected("unavailable", "confirmations are not available; hazardous action refused")
            # Never executed from here: a confirmation is opened; the "requested" event tells HA.
            async with spine.handling(msg) as conn:
                c = await confirmations.request(action, hazard_class=hazard, principal=HA_PRINCIPAL,
                                                correlation_id=key, conn=conn)
                await store.record_event("homeassistant.device_command", actor="homeassistant", subject=dev.name,
                                         correlation_id=key, conn=conn,
                                         body={"action": action.describe(), "confirmation_id": c.id,
                                               "hazard_class": hazard})
            return
        async with spine.handling(msg) as conn:
            await devices.enqueue_command(conn, action, key=key, correlation_id=key)
            await store.record_event("homeassistant.device_command", actor="homeassistant", subject=dev.name,
                                     correlation_id=key, conn=conn, body={"action": action.describe()})

    async def _on_retained_command(self, msg: Inbound) -> None:
        if not msg.retain or not msg.payload:
            return
        # A retained command would replay on every reconnect (ghost switching); it never runs, and is cleared.
        self._log.warning("ignored a retained command and cleared it", topic=msg.topic)
        try:
            await self._ctx.spine.publish(msg.topic, b"", qos=1, retain=True)
        except SpineError as exc:  # disconnected: it is seen (and refused) again on the next connect
            self._log.warning("could not clear a retained command", topic=msg.topic, error=str(exc))
        await self._ctx.store.record_event("homeassistant.retained_command_ignored", actor="homeassistant",
                                           subject=msg.topic, body={"bytes": len(msg.payload)})

    # --- statestream -----------------------------------------------------------------------------------

    async def _on_statestream(self, msg: Inbound) -> None:
        assert self._entities is not None
        parts = split_topic(self._settings.statestream_base, msg.topic)
        if parts is None:
            return
        if self._settings.statestream_base.rstrip("/") == self._settings.discovery_prefix and parts[2] == "config":
            return
        self._entities.apply(*parts, msg.payload)
