"""The MQTT spine: routes inbound messages to handlers with persist-before-acknowledge, relays the outbox.

Flow of one QoS 1/2 message on a durable route:
  receive → validate (reject: error topic + metric + audit, then acknowledge) → inbox INSERT (group commit)
  → return to gmqtt, which only now sends PUBACK/PUBREC → handler (bounded, ordered per key)
  → handler's transaction marks the inbox row done together with its effects (outbox rows, events).
A duplicate (same dedupe key) is acknowledged and has no second effect. Rows left pending by a crash are
resumed on the next start.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from hub.config import Config
from hub.errors import InputRejected, SpineError, StoreError
from hub.metrics import Metrics
from hub.spine.client import MqttConnection
from hub.spine.inbox import Inbox, InboxRow
from hub.spine.outbox import OutboxRelay, enqueue
from hub.spine.router import Inbound, KeyedLocks, Route, RouteTable, parse_payload
from hub.spine.topics import HubTopics
from hub.store import Store

log = structlog.get_logger("kitt.spine")

MAINTENANCE_INTERVAL_S = 30.0
MAX_ERROR_DETAIL = 300


class AlreadyHandled(SpineError):
    """The inbox row was finished by someone else (a redelivery raced us): the effects are rolled back."""


def _message_id(payload: bytes, properties: dict[str, Any]) -> str | None:
    for pair in properties.get("user_property", []) or []:
        if isinstance(pair, list | tuple) and len(pair) == 2 and pair[0] == "id":
            return str(pair[1])
    if payload[:1] == b"{":
        try:
            value = json.loads(payload).get("id")
        except (ValueError, AttributeError):
            return None
        if isinstance(value, str | int) and str(value):
            return str(value)[:200]
    return None


class Spine:
    """Owns the MQTT connection, the route table, the inbox writer and the outbox relay."""

    def __init__(self, *, config: Config, store: Store, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self.topics = HubTopics(config.hub.id)
        self._owner = config.client_id
        self._routes = RouteTable()
        self._semaphores: dict[Route, asyncio.Semaphore] = {}
        self._locks = KeyedLocks()
        self._inbox = Inbox(store=store, owner=self._owner)
        self.connection = MqttConnection(
            settings=config.mqtt,
            client_id=self._owner,
            status_topic=self.topics.status,
            on_message=self._on_message,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
        )
        self.relay = OutboxRelay(store=store, connection=self.connection, metrics=metrics, owner=self._owner)
        self._subscribed = asyncio.Event()
        self._first_connect = True
        self._accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._resume_lock = asyncio.Lock()
        self._in_progress: set[int] = set()
        self._bounce_pending = False
        self._connect_listeners: list[Callable[[bool], Any]] = []

    # --- registration --------------------------------------------------------------------------------

    def add_route(self, route: Route) -> Callable[[], None]:
        """Declare a subscription; returns an undo callable. Subscribes at once when already connected."""
        self._routes.add(route)
        self._semaphores[route] = asyncio.Semaphore(route.concurrency)
        if self.connection.connected:
            self.connection.subscribe([(route.subscription_filter(self._config.mqtt.shared_group), route.qos)])

        def undo() -> None:
            self._routes.remove(route)
            self._semaphores.pop(route, None)

        return undo

    def on_connect(self, listener: Callable[[bool], Any]) -> None:
        """Call ``listener(session_present)`` (sync or async) after every (re)connect and subscribe."""
        self._connect_listeners.append(listener)

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.connection.connected and self._subscribed.is_set()

    @property
    def status(self) -> dict[str, Any]:
        return {"connected": self.connection.connected, "subscribed": self._subscribed.is_set(),
                "routes": len(self._routes.routes()), "in_flight": len(self._tasks)}

    async def start(self) -> None:
        await self._inbox.start()
        await self.relay.start()
        await self.connection.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="kitt[spine].maintenance")

    async def wait_ready(self, timeout: float | None = None) -> None:
        await self.connection.wait_connected(timeout)
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop taking messages, finish in-flight work within the bound, flush the outbox, disconnect."""
        bound = self._config.hub.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        self._accepting = False
        deadline = time.monotonic() + bound
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
            if pending:
                log.warning("shutdown: work left in the inbox for the next start", unfinished=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self.connection.connected:
            await self.relay.drain(max(0.5, deadline - time.monotonic()))
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self.relay.stop()
        await self.connection.stop()
        await self._inbox.stop()
        self._subscribed.clear()

    async def _on_connected(self, session_present: bool) -> None:
        self._metrics.mqtt_connected.set(1)
        if self._first_connect or not session_present:
            filters = sorted({(r.subscription_filter(self._config.mqtt.shared_group), r.qos)
                              for r in self._routes.routes()})
            if filters:
                self.connection.subscribe(list(filters))
        if not self._first_connect:
            self._metrics.mqtt_reconnects.inc()
        self._first_connect = False
        self._subscribed.set()
        self.relay.notify()
        self._spawn(self._resume(), "kitt[spine].resume")
        for listener in self._connect_listeners:
            result = listener(session_present)
            if asyncio.iscoroutine(result):
                self._spawn(result, "kitt[spine].connect-listener")

    def _on_disconnected(self) -> None:
        self._metrics.mqtt_connected.set(0)

    # --- inbound -------------------------------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        """Return a reason code (0) only once the message is safe: gmqtt acknowledges after we return."""
        if not self._accepting:
            # Shutting down: never acknowledge, so the broker keeps it for the next session.
            await asyncio.Event().wait()
        routes = self._routes.lookup(topic)
        retain = bool(properties.get("retain"))
        if not routes:
            return 0
        accepted: list[tuple[Route, Inbound]] = []
        for route in routes:
            self._metrics.messages_received.labels(topic_class=route.name).inc()
            if retain and not route.accept_retained:
                # A retained message that looks like a command is never executed.
                self._metrics.messages_rejected.labels(reason="retained_command").inc()
                continue
            inbound = Inbound(topic=topic, payload=payload, qos=qos, retain=retain, properties=properties,
                              redelivered=bool(properties.get("dup")))
            try:
                inbound.data = parse_payload(route, payload)
            except InputRejected as exc:
                await self.reject(route, inbound, exc)
                continue
            accepted.append((route, inbound))
        if not accepted:
            return 0
        durable = qos > 0 and any(r.durable for r, _ in accepted)
        inbox_id: int | None = None
        if durable:
            key = self._dedupe_key(topic, payload, properties, accepted)
            try:
                inbox_id = await self._inbox.add(dedupe_key=key, topic=topic, payload=payload,
                                                 properties=properties, qos=qos)
            except StoreError as exc:
                # Not committed: do not acknowledge. Reconnecting makes the broker send it again.
                log.error("inbox write failed; message left with the broker", topic=topic, error=str(exc))
                self._schedule_bounce()
                raise
            if inbox_id is None:
                for route, _ in accepted:
                    self._metrics.messages_duplicate.labels(topic_class=route.name).inc()
                return 0
            for _, inbound in accepted:
                inbound.inbox_id = inbox_id
                inbound.dedupe_key = key
            self._in_progress.add(inbox_id)
        self._spawn(self._process(accepted, inbox_id), f"kitt[spine].handle:{accepted[0][0].name}")
        return 0

    def _dedupe_key(self, topic: str, payload: bytes, properties: dict[str, Any],
                    accepted: list[tuple[Route, Inbound]]) -> str:
        for route, inbound in accepted:
            if route.dedupe_key is not None and (key := route.dedupe_key(inbound)):
                return f"{topic}|{key}"
        if app_id := _message_id(payload, properties):
            return f"{topic}|{app_id}"
        # No application id: a redelivery cannot be told from a new message; never merge two messages.
        return f"{topic}|~{uuid.uuid4().hex}"

    async def _process(self, accepted: list[tuple[Route, Inbound]], inbox_id: int | None) -> None:
        try:
            for route, inbound in accepted:
                await self._run_handler(route, inbound)
            if inbox_id is not None and not any(i.finished for _, i in accepted):
                await self._inbox.finish(inbox_id)
        except StoreError as exc:
            log.error("could not finish inbox row; it will be resumed", inbox_id=inbox_id, error=str(exc))
        finally:
            if inbox_id is not None:
                self._in_progress.discard(inbox_id)

    async def _run_handler(self, route: Route, inbound: Inbound) -> None:
        sem = self._semaphores.get(route)
        if sem is None:  # the route was removed meanwhile
            return
        key = route.ordering_key(inbound) if route.ordering_key is not None else None
        started = time.perf_counter()
        async with sem:
            try:
                if key is not None:
                    async with await self._locks(f"{route.name}|{key}"):
                        await route.handler(inbound)
                else:
                    await route.handler(inbound)
            except AlreadyHandled:
                inbound.finished = True
            except InputRejected as exc:
                await self.reject(route, inbound, exc)
            except asyncio.CancelledError:
                raise
            except StoreError:
                raise
            except Exception as exc:
                # A handler bug never stops the spine; it is counted, logged and audited.
                self._metrics.handler_errors.labels(handler=route.name).inc()
                log.exception("handler failed", handler=route.name, topic=inbound.topic)
                if inbound.inbox_id is not None and not inbound.finished:
                    await self._inbox.finish(inbound.inbox_id, state="failed",
                                             error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_DETAIL])
                    inbound.finished = True
        self._metrics.request_latency.labels(route=route.name).observe(time.perf_counter() - started)

    async def reject(self, route: Route, inbound: Inbound, exc: InputRejected) -> None:
        """Tell the sender what was wrong (error topic), count it, audit it; lose nothing else."""
        self._metrics.messages_rejected.labels(reason=exc.reason).inc()
        msg_id = _message_id(inbound.payload, inbound.properties)
        body = {"topic": inbound.topic, "error": f"{exc.reason}: {exc.detail}"[:MAX_ERROR_DETAIL], "id": msg_id}
        if route.report_errors and self.connection.connected:
            try:
                self.connection.publish_nowait(self.topics.error, json.dumps(body).encode(), qos=1)
            except SpineError as pub_exc:
                log.warning("could not publish rejection", error=str(pub_exc))
        try:
            await self._store.record_event("input.rejected", actor=route.name, subject=inbound.topic,
                                           correlation_id=msg_id, body=body)
        except StoreError as store_exc:
            log.error("could not audit a rejection", error=str(store_exc))
        if inbound.inbox_id is not None and not inbound.finished:
            await self._inbox.finish(inbound.inbox_id, state="rejected", error=body["error"])
            inbound.finished = True

    # --- handler helpers -----------------------------------------------------------------------------

    @asynccontextmanager
    async def handling(self, inbound: Inbound) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that also marks ``inbound``'s inbox row done: effects and done commit together."""
        async with self._store.transaction() as conn:
            if inbound.inbox_id is not None and not inbound.finished \
                    and not await self._inbox.finish(inbound.inbox_id, conn=conn):
                raise AlreadyHandled(f"inbox row {inbound.inbox_id} already finished")
            yield conn
        inbound.finished = True
        self.relay.notify()

    async def enqueue(self, conn: asyncpg.Connection, *, topic: str, payload: Any, key: str, qos: int = 2,
                      retain: bool = False, properties: dict[str, Any] | None = None,
                      correlation_id: str | None = None) -> int | None:
        """An outbox row in the caller's transaction; call ``notify_outbox()`` after the commit."""
        return await enqueue(conn, topic=topic, payload=payload, key=key, qos=qos, retain=retain,
                             properties=properties, correlation_id=correlation_id)

    def notify_outbox(self) -> None:
        self.relay.notify()

    async def send(self, *, topic: str, payload: Any, key: str, qos: int = 2, retain: bool = False,
                   properties: dict[str, Any] | None = None, correlation_id: str | None = None) -> int | None:
        """Durable publish outside a handler: one outbox row in its own transaction."""
        async with self._store.transaction() as conn:
            row = await self.enqueue(conn, topic=topic, payload=payload, key=key, qos=qos, retain=retain,
                                     properties=properties, correlation_id=correlation_id)
        self.relay.notify()
        return row

    def reply_target(self, inbound: Inbound, site: str | None) -> tuple[str, dict[str, Any]]:
        """Where a request's answer goes: its MQTT 5 Response Topic (+ Correlation Data), else reply/<site>."""
        props: dict[str, Any] = {"content_type": "application/json"}
        if inbound.response_topic:
            if inbound.correlation_data is not None:
                props["correlation_data"] = inbound.correlation_data
            return inbound.response_topic, props
        return self.topics.reply(site or "default"), props

    async def publish(self, topic: str, payload: Any, *, qos: int = 1, retain: bool = False,
                      wait: bool = False, **properties: Any) -> None:
        """Direct publish (not durable): for protocol chatter where a lost message is re-sent by design."""
        if isinstance(payload, dict | list):
            payload = json.dumps(payload, separators=(",", ":"))
        if isinstance(payload, str):
            payload = payload.encode()
        fut = self.connection.publish_nowait(topic, payload, qos=qos, retain=retain, **properties)
        self._metrics.mqtt_published.labels(topic_class="direct").inc()
        if wait and fut is not None:
            await asyncio.wait_for(fut, 10)

    # --- recovery and upkeep -------------------------------------------------------------------------

    async def _resume(self) -> None:
        """Handle inbox rows that a crash (ours or another hub's, once its claim expired) left pending."""
        async with self._resume_lock:
            while True:
                try:
                    rows = await self._inbox.claim_pending()
                except StoreError as exc:
                    log.error("resume: cannot read the inbox", error=str(exc))
                    return
                rows = [r for r in rows if r.id not in self._in_progress]
                if not rows:
                    return
                log.info("resuming pending inbox rows", count=len(rows))
                batch = [self._spawn(self._process_row(row), "kitt[spine].resume-row") for row in rows]
                await asyncio.gather(*batch, return_exceptions=True)

    async def _process_row(self, row: InboxRow) -> None:
        accepted: list[tuple[Route, Inbound]] = []
        for route in self._routes.lookup(row.topic):
            inbound = Inbound(topic=row.topic, payload=row.payload, qos=row.qos, retain=False,
                              properties=row.properties, inbox_id=row.id, dedupe_key=row.dedupe_key,
                              redelivered=True)
            try:
                inbound.data = parse_payload(route, row.payload)
            except InputRejected as exc:
                await self.reject(route, inbound, exc)
                continue
            accepted.append((route, inbound))
        if not accepted:
            await self._inbox.finish(row.id, state="rejected", error="no route accepts it any more")
            return
        self._in_progress.add(row.id)
        await self._process(accepted, row.id)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("spine task failed", task=task.get_name(), error=repr(exc))

    def _schedule_bounce(self) -> None:
        """After a failed inbox write, reconnect once the store answers, so un-acked messages come again."""
        if self._bounce_pending:
            return
        self._bounce_pending = True
        self._spawn(self._bounce_when_store_returns(), "kitt[spine].bounce")

    async def _bounce_when_store_returns(self) -> None:
        try:
            while not await self._store.ping():
                await asyncio.sleep(0.5)
            await self.connection.bounce()
        finally:
            self._bounce_pending = False

    async def _maintain(self) -> None:
        retention = self._config.mqtt.inbox_retention_s
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                await self._resume()
                pruned_in = await self._inbox.prune(retention)
                pruned_out = await self.relay.prune(retention)
                if pruned_in or pruned_out:
                    log.info("pruned inbox/outbox", inbox=pruned_in, outbox=pruned_out)
            except StoreError as exc:
                log.error("spine maintenance failed", error=str(exc))
