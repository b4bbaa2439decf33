"""The MQTT spine: routes inbound messages to handlers with persist-before-acknowledge, relays the outbox.

Flow of one QoS 1/2 message on a durable route:
  receive → take a processing slot (none free: wait, so the broker's window fills: back-pressure)
  → validate (reject: error topic + metric + audit, then acknowledge) → inbox INSERT (group commit)
  → return to gmqtt, which only now sends PUBACK/PUBREC → handler (bounded, ordered per key)
  → handler's transaction marks the inbox row done together with its effects (outbox rows, events).
A duplicate (same dedupe key) is acknowledged and has no second effect. Rows left pending by a crash are
taken back before the next connect (same client id) or, by another instance, once their claim expired.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import asyncpg
import structlog

from hub.config import Config
from hub.errors import InputRejected, SpineError, StoreDataError, StoreError
from hub.metrics import Metrics
from hub.spine.audit import AuditWriter
from hub.spine.client import MqttConnection
from hub.spine.inbox import Inbox, InboxRow
from hub.spine.outbox import OutboxRelay, OutRow, as_append, encode_payload, enqueue, new_row
from hub.spine.router import Inbound, KeyedLocks, Route, RouteTable, message_id, parse_payload
from hub.spine.topics import HubTopics
from hub.spine.txgroup import (
    Finished,
    GroupAborted,
    GroupPolicy,
    TransactionGroups,
    append_args,
    flush_appends,
    mark_skipped,
)
from hub.store import Store
from hub.store.appends import IdReserve, PendingAppends, appends_for, pending_appends

log = structlog.get_logger("kitt.spine")

MAINTENANCE_INTERVAL_S = 30.0
# An own pending row this old that nobody here works on failed mid-way (e.g. the database went away).
RETRY_AFTER_S = 60.0
MAX_ERROR_DETAIL = 300
# Messages being handled at once, per unit of the broker window we ask for (mqtt.receive_maximum). Beyond
# it a new message waits before it is acknowledged, so the broker stops sending: memory stays bounded.
SLOTS_PER_WINDOW = 4
# Runs of a handler whose grouped transaction was rolled back because of another message in the group.
GROUP_ATTEMPTS = 3
# Where the dispatcher leaves the route on ``Inbound.meta`` for ``handling()``.
ROUTE_META = "kitt.route"
# Set after a group was rolled back: the handler runs again in a transaction of its own, so a block that
# cannot commit (bad data) fails alone instead of taking its next group down with it.
SOLO_META = "kitt.solo"


class AlreadyHandled(SpineError):
    """The inbox row was finished by someone else (a redelivery raced us): the effects are rolled back."""


class _Block:
    """The ``handling()`` block running in this task: outbox rows written in it go to the relay in memory.
    (A grouped block's rows and events are written at the group's commit: ``hub.store.appends``.)"""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.rows: list[OutRow] = []


_current_block: contextvars.ContextVar[_Block | None] = contextvars.ContextVar("kitt_spine_block", default=None)


class _AppendOnly:
    """The connection of an ``appending()`` block: it may only append (``enqueue``, ``record_event(conn=…)``)."""

    def __getattr__(self, name: str) -> Any:
        raise StoreError(f"{name}: an appending() block sends no statement; its rows go with the caller's")


class Appending:
    """Rows collected by ``Spine.appending()``, written by one statement of the caller's (``write``)."""

    def __init__(self, store: Store, relay: OutboxRelay, owner: str) -> None:
        self.conn: Any = _AppendOnly()
        self.appends = PendingAppends(self.conn)
        self._store = store
        self._relay = relay
        self._owner = owner
        self.written = False
        self.packet_ids: dict[int, int] = {}  # row id → the packet id it was written with

    async def write(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """Run ``sql``, whose parameters are ``args`` and then those of ``append_ctes`` (numbered from
        ``len(args) + 1``, usually with ``only_if``), and which returns ``ARRAY(SELECT id FROM ob) AS written``.
        Returns its row; None means it wrote nothing (and nothing is published).

        QoS 2 rows are written with their packet ids (while the window has room), as the relay's stamp would
        write them: committed with the row, they are published right after without another round trip."""
        outbox = self.appends.outbox
        qos2 = [i for i, r in enumerate(outbox) if r[4] == 2]
        mids = self._relay.take_ids(len(qos2))
        for i, mid in zip(qos2, mids, strict=False):
            outbox[i] = (*outbox[i][:9], mid, self._owner)
        stamped = {outbox[i][0]: mid for i, mid in zip(qos2, mids, strict=False)}
        try:
            row = await self._store.write_returning(sql, *args, *append_args([self.appends]))
        except BaseException:
            self._relay.ids_in_doubt(list(stamped.items()))  # committed or not: cleared before reuse
            raise
        written = set(row["written"] or ()) if row is not None else set()
        self._relay.give_back_ids([mid for row_id, mid in stamped.items() if row_id not in written])
        if row is not None:
            mark_skipped([self.appends], written)
            self.packet_ids = {row_id: mid for row_id, mid in stamped.items() if row_id in written}
            self.written = True
        return row


class Spine:
    """Owns the MQTT connection, the route table, the inbox writer and the outbox relay."""

    def __init__(self, *, config: Config, store: Store, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self.topics = HubTopics(config.hub.id)
        self._owner = config.client_id
        self._group = config.mqtt.shared_group
        self._routes = RouteTable()
        self._semaphores: dict[Route, asyncio.Semaphore] = {}
        self._locks = KeyedLocks()
        self._slots = asyncio.Semaphore(SLOTS_PER_WINDOW * config.mqtt.receive_maximum)
        self._inbox = Inbox(store=store, owner=self._owner)
        self._audit = AuditWriter(store=store)
        # A few lanes of grouped handler transactions; the rest of the pool stays for everything else.
        self._groups = TransactionGroups(store=store, lanes=max(1, min(4, config.database.pool_max // 3)))
        self._group_policy = GroupPolicy()
        self._outbox_ids = IdReserve(store, "outbox_id_seq")
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
        self.last_message_at = time.monotonic()
        self._maintenance: asyncio.Task[None] | None = None
        self._recovered: list[InboxRow] = []
        self._bounce_pending = False
        self._receiving = 0
        self._connect_listeners: list[Callable[[bool], Any]] = []
        self._received_children: dict[str, Any] = {}

    # --- registration --------------------------------------------------------------------------------

    def add_route(self, route: Route) -> Callable[[], None]:
        """Declare a subscription; returns an undo callable. Subscribes at once when already connected."""
        self._routes.add(route)
        self._semaphores[route] = asyncio.Semaphore(route.concurrency)
        if self.connection.connected:
            self._spawn(self._subscribe([route]), f"kitt[spine].subscribe:{route.name}")

        def undo() -> None:
            self._routes.remove(route)
            self._semaphores.pop(route, None)
            sub = route.subscription_filter(self._group)
            if self.connection.connected and all(r.subscription_filter(self._group) != sub
                                                 for r in self._routes.routes()):
                self._spawn(self.connection.unsubscribe([sub]), f"kitt[spine].unsubscribe:{route.name}")

        return undo

    def on_connect(self, listener: Callable[[bool], Any]) -> None:
        """Call ``listener(session_present)`` (sync or async) after every (re)connect and subscribe."""
        self._connect_listeners.append(listener)

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.connection.connected and self._subscribed.is_set()

    def idle_for(self, seconds: float) -> bool:
        """No message for ``seconds`` and nothing in flight: a moment for background work that stalls the loop."""
        return not self._tasks and time.monotonic() - self.last_message_at >= seconds

    @property
    def status(self) -> dict[str, Any]:
        return {"connected": self.connection.connected, "subscribed": self._subscribed.is_set(),
                "client_id": self._owner, "shared_group": self._group or None,
                "routes": len(self._routes.routes()),
                "filters": sorted({r.subscription_filter(self._group) for r in self._routes.routes()}),
                "in_flight": len(self._tasks), "inbox_working": len(self._inbox.working),
                "outbox_in_flight": self.relay.in_flight,
                "outbound_window": {"used": self.connection.window.in_flight,
                                    "capacity": self.connection.window.capacity}}

    async def start(self) -> None:
        await self._inbox.start()
        await self._audit.start()
        await self.relay.start()
        # Take back what our previous process left half-done, before the broker can redeliver any of it:
        # a redelivery then finds the row already being worked on and is acknowledged as a duplicate.
        try:
            self._recovered = await self._inbox.claim_own()
        except StoreError as exc:
            log.error("cannot read the inbox at start; maintenance will retry", error=str(exc))
        if self._recovered:
            log.info("resuming inbox rows left by the previous run", count=len(self._recovered))
        # Outbox rows whose QoS 2 handshake the previous process began: finished in the kept session on the
        # first connect, under their packet ids (never published again under new ones: that would deliver twice).
        try:
            await self.relay.take_back_held()
        except StoreError as exc:
            # Not fatal for the spine, but those rows' ids are then not known to the connection: it still
            # sends PUBREL for every id, so they are delivered (at most a duplicate, never a loss).
            log.error("cannot read the outbox at start", error=str(exc))
        await self.connection.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="kitt[spine].maintenance")

    async def wait_ready(self, timeout: float | None = None) -> None:
        await self.connection.wait_connected(timeout)
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop handling, finish in-flight work within the bound, flush the outbox, disconnect.

        Messages that arrive meanwhile are still committed to the inbox and acknowledged, but not handled:
        the next start (or another instance) handles them. Nothing acknowledged is dropped.
        """
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
        if self.connection.connected and not await self.relay.drain(max(0.5, deadline - time.monotonic())):
            log.warning("shutdown: outbox not drained; the next start sends the rest")
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self._groups.close()
        await self.relay.stop()
        await self.connection.stop()
        # Messages between receive and inbox commit finish (or fail) before the writer goes away.
        end = time.monotonic() + 5
        while self._receiving and time.monotonic() < end:
            await asyncio.sleep(0.01)
        await self._inbox.stop()
        await self._audit.stop()
        self._subscribed.clear()

    async def _subscribe(self, routes: list[Route]) -> None:
        filters = sorted({(r.subscription_filter(self._group), r.qos) for r in routes})
        try:
            await self.connection.subscribe(filters)
        except (SpineError, TimeoutError) as exc:
            # Readiness stays false while the desired subscriptions are not in place; the next connect retries.
            log.error("subscribe failed", filters=[f for f, _ in filters], error=str(exc) or "timeout")
            raise

    async def _on_connected(self, session_present: bool) -> None:
        self._metrics.mqtt_connected.set(1)
        # The broker kept our subscriptions only with the session; the first connect of a process subscribes
        # anyway, because the routes may have changed since the session was made.
        if self._first_connect or not session_present or not self._subscribed.is_set():
            try:
                await self._subscribe(self._routes.routes())
            except (SpineError, TimeoutError):
                return
        if not self._first_connect:
            self._metrics.mqtt_reconnects.inc()
        first, self._first_connect = self._first_connect, False
        self._subscribed.set()
        self.relay.notify()
        if first and self._recovered:
            rows, self._recovered = self._recovered, []
            for row in rows:
                self._spawn(self._process_row(row), "kitt[spine].resume-row")
        for listener in self._connect_listeners:
            result = listener(session_present)
            if asyncio.iscoroutine(result):
                self._spawn(result, "kitt[spine].connect-listener")

    def _on_disconnected(self) -> None:
        self._metrics.mqtt_connected.set(0)

    # --- inbound -------------------------------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        """Return a reason code (0) only once the message is safe: gmqtt acknowledges after we return.

        Raising instead means "not acknowledged": the broker keeps the message for the next connection.
        """
        self.last_message_at = time.monotonic()
        routes = self._routes.lookup(topic)
        if not routes:
            return 0
        if qos == 0 and self._slots.locked():
            # QoS 0 has no flow control and may be dropped by definition: shed it rather than queue it.
            self._metrics.messages_rejected.labels(reason="overloaded").inc()
            return 0
        self._receiving += 1
        await self._slots.acquire()
        handed_over = False
        try:
            accepted = await self._accept(routes, topic, payload, qos, properties)
            if accepted:
                self._spawn(self._process(accepted), "kitt[spine].handle")
                handed_over = True
            return 0
        finally:
            self._receiving -= 1
            if not handed_over:
                self._slots.release()

    async def _accept(self, routes: tuple[Route, ...], topic: str, payload: bytes, qos: int,
                      properties: dict[str, Any]) -> list[tuple[Route, Inbound]]:
        """Validate for each route and commit the durable ones; return what is to be handled."""
        retain = bool(properties.get("retain"))
        redelivered = bool(properties.get("dup"))
        valid: list[tuple[Route, Inbound]] = []
        for route in routes:
            self._received(route.name).inc()
            inbound = Inbound(topic=topic, payload=payload, qos=qos, retain=retain, properties=properties,
                              redelivered=redelivered)
            if retain and not route.accept_retained:
                # A retained message that looks like a command is never executed.
                await self.reject(route, inbound, InputRejected("retained_command", "retained message ignored"))
                continue
            try:
                inbound.data = parse_payload(route, payload)
            except InputRejected as exc:
                await self.reject(route, inbound, exc)
                continue
            valid.append((route, inbound))
        durable = [(r, i) for r, i in valid if qos > 0 and r.durable]
        if not durable:
            return valid
        keys = [self._dedupe_key(route, inbound) for route, inbound in durable]
        try:
            if len(keys) == 1:  # the common case, without a gather
                added = [await self._inbox.add(dedupe_key=keys[0], topic=topic, payload=payload,
                                               properties=properties, qos=qos)]
            else:
                added = await asyncio.gather(*(
                    self._inbox.add(dedupe_key=key, topic=topic, payload=payload, properties=properties, qos=qos)
                    for key in keys))
        except StoreError as exc:
            # Not committed: do not acknowledge. Reconnecting makes the broker send it again.
            log.error("inbox write failed; message left with the broker", topic=topic, error=str(exc))
            self._schedule_bounce()
            raise
        accepted = [(r, i) for r, i in valid if not (qos > 0 and r.durable)]
        for (route, inbound), key, result in zip(durable, keys, added, strict=True):
            row_id = result.row_id if result.row_id is not None else (
                result.takeover.id if result.takeover is not None else None)
            if row_id is None:
                self._metrics.messages_duplicate.labels(topic_class=route.name).inc()
                continue
            inbound.inbox_id = row_id
            inbound.dedupe_key = key
            accepted.append((route, inbound))
        return accepted

    def _received(self, route_name: str) -> Any:
        # The labelled child, looked up once per route (prometheus' labels() takes a lock each call).
        child = self._received_children.get(route_name)
        if child is None:
            child = self._received_children[route_name] = self._metrics.messages_received.labels(
                topic_class=route_name)
        return child

    def _dedupe_key(self, route: Route, inbound: Inbound) -> str:
        """``<route>|<topic>|<application id>``: one inbox row per route, so two routes on a topic both act."""
        app_id = route.dedupe_key(inbound) if route.dedupe_key is not None else None
        if not app_id:
            app_id = message_id(inbound.payload, inbound.properties)
        if not app_id:
            # No application id: a redelivery cannot be told from a new message; never merge two messages.
            app_id = f"~{uuid.uuid4().hex}"
        return f"{route.name}|{inbound.topic}|{app_id}"

    async def _process(self, accepted: list[tuple[Route, Inbound]]) -> None:
        try:
            if len(accepted) == 1:
                await self._handle_one(*accepted[0])
            else:
                await asyncio.gather(*(self._handle_one(r, i) for r, i in accepted))
        finally:
            self._slots.release()

    async def _handle_one(self, route: Route, inbound: Inbound) -> None:
        if not self._accepting:
            # Stopping: the row stays pending (committed, acknowledged) for the next start.
            if inbound.inbox_id is not None:
                self._inbox.release(inbound.inbox_id)
            return
        inbound.meta[ROUTE_META] = route
        try:
            for attempt in range(1, GROUP_ATTEMPTS + 1):
                try:
                    await self._run_handler(route, inbound)
                    break
                except GroupAborted:
                    # Nothing of ours was committed and the row is still pending: running again is safe.
                    if attempt == GROUP_ATTEMPTS:
                        raise
                    inbound.meta[SOLO_META] = True
            if inbound.inbox_id is not None and not inbound.finished:
                await self._inbox.finish(inbound.inbox_id)
                inbound.finished = True
        except StoreError as exc:
            log.error("could not finish an inbox row; it will be retried", inbox_id=inbound.inbox_id,
                      handler=route.name, error=str(exc))
        finally:
            if inbound.inbox_id is not None:
                self._inbox.release(inbound.inbox_id)

    async def _run_handler(self, route: Route, inbound: Inbound) -> None:
        sem = self._semaphores.get(route)
        if sem is None:  # the route was removed meanwhile
            return
        key = route.ordering_key(inbound) if route.ordering_key is not None else None
        started = time.perf_counter()
        if key is None:
            async with sem:
                await self._call(route, inbound)
        else:
            # The key lock first, then the route's limit: same-key messages queue in arrival order without
            # holding a concurrency slot while they wait.
            async with await self._locks(f"{route.name}|{key}"), sem:
                await self._call(route, inbound)
        self._metrics.request_latency.labels(route=route.name).observe(time.perf_counter() - started)

    async def _call(self, route: Route, inbound: Inbound) -> None:
        try:
            await route.handler(inbound)
        except AlreadyHandled:
            inbound.finished = True
        except InputRejected as exc:
            await self.reject(route, inbound, exc)
        except StoreDataError as exc:  # the data itself was refused: a retry cannot succeed
            await self._handler_failed(route, inbound, exc)
        except (asyncio.CancelledError, StoreError):
            raise  # the database is away: the row stays pending and is retried
        except Exception as exc:
            await self._handler_failed(route, inbound, exc)

    async def _handler_failed(self, route: Route, inbound: Inbound, exc: BaseException) -> None:
        # A handler bug never stops the spine; it is counted, logged and audited.
        self._metrics.handler_errors.labels(handler=route.name).inc()
        log.exception("handler failed", handler=route.name, topic=inbound.topic)
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_DETAIL]
        if inbound.inbox_id is not None and not inbound.finished:
            await self._inbox.finish(inbound.inbox_id, state="failed", error=error)
            inbound.finished = True
        try:
            await self._audit.record("handler.failed", actor=route.name, subject=inbound.topic,
                                     correlation_id=message_id(inbound.payload, inbound.properties),
                                     body={"error": error})
        except StoreError as store_exc:
            log.error("could not audit a handler failure", error=str(store_exc))

    async def reject(self, route: Route, inbound: Inbound, exc: InputRejected) -> None:
        """Tell the sender what was wrong (error topic), count it, audit it; lose nothing else."""
        self._metrics.messages_rejected.labels(reason=exc.reason).inc()
        msg_id = message_id(inbound.payload, inbound.properties)
        body = {"topic": inbound.topic, "error": f"{exc.reason}: {exc.detail}"[:MAX_ERROR_DETAIL], "id": msg_id}
        if route.report_errors and self.connection.connected:
            try:
                # Waits for room in the outbound window: a flood of bad input slows down, it does not pile up.
                await self.connection.send(self.topics.error, json.dumps(body).encode(), qos=1)
            except SpineError as pub_exc:
                log.warning("could not publish rejection", error=str(pub_exc))
        try:
            await self._audit.record("input.rejected", actor=route.name, subject=inbound.topic,
                                     correlation_id=msg_id, body={**body, "reason": exc.reason})
        except StoreError as store_exc:
            log.error("could not audit a rejection", error=str(store_exc))
        if inbound.inbox_id is not None and not inbound.finished:
            await self._inbox.finish(inbound.inbox_id, state="rejected", error=body["error"])
            inbound.finished = True

    # --- handler helpers -----------------------------------------------------------------------------

    @asynccontextmanager
    async def handling(self, inbound: Inbound) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that also marks ``inbound``'s inbox row done: effects and done commit together.

        Returns once committed. ``AlreadyHandled`` (the row was finished elsewhere) means nothing of the
        block was committed. Keep the block to database writes through ``conn``: once a route's blocks have
        proved short, its transaction is shared with other messages' blocks (``txgroup``); if another block
        of that group fails, the spine runs this handler again. Nested ``conn.transaction()`` works.
        """
        route: Route | None = inbound.meta.get(ROUTE_META)
        name = route.name if route is not None else None
        row = inbound.inbox_id if not inbound.finished else None
        grouped = not inbound.meta.get(SOLO_META) and self._group_policy.grouped(
            name, route.grouped if route is not None else False)
        appends = PendingAppends(None) if grouped else None
        try:
            async with self._outbox_block(self._groups.block(row, appends) if grouped else self._solo(row),
                                          appends) as block:
                started = time.perf_counter()
                yield block.conn
                self._group_policy.record(name, time.perf_counter() - started)
        except Finished as exc:
            raise AlreadyHandled(str(exc)) from exc
        inbound.finished = True

    @asynccontextmanager
    async def _outbox_block(self, transaction: AbstractAsyncContextManager[asyncpg.Connection],
                            appends: PendingAppends | None = None, *,
                            flush: bool = False) -> AsyncIterator[_Block]:
        """``transaction``'s connection as a block whose outbox rows this relay publishes from memory after the
        commit (``enqueue``); if it rolls back, they do not exist. ``appends``: those of a grouped block (its
        group writes them), or with ``flush`` this transaction's own, written here just before its commit."""
        block: _Block | None = None
        try:
            async with transaction as conn:
                if appends is not None:
                    appends.conn = conn
                with self._collecting(conn, appends) as block:
                    yield block
                if flush and appends is not None:
                    await flush_appends(conn, appends)
        except BaseException:
            if block is not None:
                self._drop(block)
            raise
        assert block is not None
        self._hand_over(block, appends)

    @contextmanager
    def _collecting(self, conn: Any, appends: PendingAppends | None) -> Iterator[_Block]:
        """The block running in this task on ``conn``: ``enqueue`` (and ``record_event``) on that connection
        reserve their rows in ``block`` (and append them to ``appends``, if any)."""
        block = _Block(conn)
        token = _current_block.set(block)
        appends_token = pending_appends.set(appends)
        try:
            yield block
        finally:
            pending_appends.reset(appends_token)
            _current_block.reset(token)

    def _hand_over(self, block: _Block, appends: PendingAppends | None,
                   packet_ids: Mapping[int, int] | None = None) -> None:
        """The block committed: its rows go to the relay, but for appended ones not written (a key enqueued
        before, found at the commit); ``packet_ids``: rows written with their ids."""
        skipped = appends.skipped if appends is not None else frozenset()
        if skipped:
            self.relay.unreserve(skipped)
        ids = packet_ids or {}
        rows = [replace(r, packet_id=ids[r.id]) if r.id in ids else r for r in block.rows if r.id not in skipped]
        if rows:
            self.relay.submit(rows)

    def _drop(self, block: _Block) -> None:
        """The block's transaction rolled back (or its statement wrote nothing): its rows do not exist."""
        self.relay.unreserve(r.id for r in block.rows)

    @asynccontextmanager
    async def _solo(self, row: int | None) -> AsyncIterator[asyncpg.Connection]:
        """One transaction for one block: the done mark first (a finished row stops the block at once)."""
        async with self._store.transaction() as conn:
            if row is not None and not await self._inbox.finish(row, conn=conn):
                raise Finished(f"inbox row {row} already finished")
            yield conn

    async def enqueue(self, conn: asyncpg.Connection, *, topic: str, payload: Any, key: str, qos: int = 2,
                      retain: bool = False, properties: dict[str, Any] | None = None,
                      correlation_id: str | None = None) -> int | None:
        """An outbox row in the caller's transaction.

        Inside ``handling()`` or ``transaction()`` the row is reserved for this hub's relay and published from
        memory right after the commit (no claim query); in any other transaction, call ``notify_outbox()``
        after its commit, and any relay takes the row from the table. Returns the row's id, or None
        when the key was enqueued before; in a grouped block that is only found at the commit, so the id is
        returned and the row is then dropped (not published).
        """
        block = _current_block.get()
        mine = block is not None and block.conn is conn
        row: OutRow | None
        appends = appends_for(conn) if mine else None
        if appends is not None:
            # Written with the group, just before its commit; a key enqueued before is dropped then.
            row = new_row(await self._outbox_ids.take(), topic=topic, payload=payload, key=key, qos=qos,
                          retain=retain, properties=properties)
            appends.outbox.append(as_append(row, correlation_id=correlation_id, claimed_by=self._owner))
        else:
            row = await enqueue(conn, topic=topic, payload=payload, key=key, qos=qos, retain=retain,
                                properties=properties, correlation_id=correlation_id,
                                claimed_by=self._owner if mine else None)
        if row is None:
            return None
        if mine and block is not None:
            self.relay.reserve(row.id)
            block.rows.append(row)
        return row.id

    def notify_outbox(self) -> None:
        self.relay.notify()

    @asynccontextmanager
    async def transaction(self, *, defer_appends: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A store transaction whose outbox rows (``enqueue``) this hub's relay publishes from memory right
        after the commit: no table poll and no claim query between the commit and the PUBLISH.

        ``defer_appends``: its outbox rows and audit events (``store.record_event(…, conn=conn)``) are written
        together in one statement just before the commit, as in a grouped handler block (one round trip for
        all of them; the rows are not visible to the block's own queries, and a key enqueued before is found
        only then: that row is not written and not published)."""
        appends = PendingAppends(None) if defer_appends else None
        async with self._outbox_block(self._store.transaction(), appends, flush=defer_appends) as block:
            yield block.conn

    @asynccontextmanager
    async def appending(self) -> AsyncIterator[Appending]:
        """A block that only collects outbox rows (``enqueue(batch.conn, …)``) and audit events
        (``store.record_event(…, conn=batch.conn)``), written by one statement of the caller's
        (``batch.write(sql, …)``, its CTEs ending in ``append_ctes``): no BEGIN and no COMMIT of their own. The
        rows are published from memory once that statement committed; if it wrote nothing, or raised, they are
        dropped."""
        batch = Appending(self._store, self.relay, self._owner)
        with self._collecting(batch.conn, batch.appends) as block:
            try:
                yield batch
            except BaseException:
                self._drop(block)
                raise
        if batch.written:
            self._hand_over(block, batch.appends, batch.packet_ids)
        else:
            self._drop(block)

    async def send(self, *, topic: str, payload: Any, key: str, qos: int = 2, retain: bool = False,
                   properties: dict[str, Any] | None = None, correlation_id: str | None = None) -> int | None:
        """Durable publish outside a handler: one outbox row in its own transaction."""
        async with self.transaction() as conn:
            return await self.enqueue(conn, topic=topic, payload=payload, key=key, qos=qos, retain=retain,
                                      properties=properties, correlation_id=correlation_id)

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
        """Direct publish (not durable): for protocol chatter where a lost message is re-sent by design.

        Waits for room in the outbound window (never fails because of a burst); ``wait=True`` also waits for
        the broker's PUBACK/PUBCOMP.
        """
        fut = await self.connection.send(topic, encode_payload(payload), qos=qos, retain=retain, **properties)
        self._metrics.mqtt_published.labels(topic_class="direct").inc()
        if wait and fut is not None:
            await asyncio.wait_for(fut, 10)

    # --- recovery and upkeep -------------------------------------------------------------------------

    async def _process_row(self, row: InboxRow) -> None:
        """Handle a pending inbox row taken back after a crash (its message was acknowledged already)."""
        route_name = row.dedupe_key.split("|", 1)[0]
        route = next((r for r in self._routes.lookup(row.topic) if r.name == route_name), None)
        if route is None:
            self._inbox.release(row.id)
            try:
                await self._inbox.finish(row.id, state="failed", error=f"no route {route_name!r} for it any more")
            except StoreError as exc:
                log.error("could not fail an orphan inbox row", inbox_id=row.id, error=str(exc))
            return
        inbound = Inbound(topic=row.topic, payload=row.payload, qos=row.qos, retain=False,
                          properties=row.properties, inbox_id=row.id, dedupe_key=row.dedupe_key, redelivered=True)
        try:
            inbound.data = parse_payload(route, row.payload)
        except InputRejected as exc:
            try:
                await self.reject(route, inbound, exc)
            finally:
                self._inbox.release(row.id)
            return
        await self._slots.acquire()
        try:
            await self._handle_one(route, inbound)
        finally:
            self._slots.release()

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
                if self._accepting and self.ready:
                    for row in await self._inbox.claim_stale(min_age_s=RETRY_AFTER_S):
                        self._spawn(self._process_row(row), "kitt[spine].resume-row")
                pruned_in = await self._inbox.prune(retention)
                pruned_out = await self.relay.prune(retention)
                if pruned_in or pruned_out:
                    log.info("pruned inbox/outbox", inbox=pruned_in, outbox=pruned_out)
            except StoreError as exc:
                log.error("spine maintenance failed", error=str(exc))
