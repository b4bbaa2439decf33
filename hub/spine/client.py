"""The MQTT 5 connection, on gmqtt: persistent session, LWT, back-off reconnect, acks we control.

Why gmqtt: with ``optimistic_acknowledgement=False`` it sends PUBACK/PUBREC only after our async
``on_message`` returns, which is what persist-before-acknowledge needs (paho and aiomqtt 2.x acknowledge
before the application sees the message; see docs/spine.md). ``tests/integration/test_spine_ack_order.py``
and ``tests/fault/test_ack_order.py`` prove the order.

Four things gmqtt leaves to us, done here:
- outbound flow control: gmqtt raises ``OverflowError`` once the broker's Receive Maximum worth of QoS 1/2
  publishes are unacknowledged; ``send()`` waits for a free slot instead (``OutboundWindow``);
- reconnect back-off: gmqtt retries at a fixed delay; ``_BackoffConfig`` makes every retry read a fresh
  exponential delay with jitter;
- SUBACK: ``subscribe()`` waits for it and raises when the broker refused a filter;
- write coalescing: the packets of one event-loop turn leave in one syscall (``_CoalescingTransport``).

And one thing for the outbox's exactly-once relay (docs/spine.md, "Packet ids on the outbox rows"): packet
ids the relay chooses and persists before publishing (``allocate_mids``/``publish_with_mid``), a hook that
lets it persist "released" before the PUBREL leaves (``set_pubrec_hook``), ids held until the row's
``sent_at`` is committed (``free_mids``), and the handshakes of the previous process finished where they
stopped (``resume``).
"""

from __future__ import annotations

import asyncio
import random
import ssl as ssl_module
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import structlog
from gmqtt import Client, Message, Subscription
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50
from gmqtt.mqtt.package import CommandWithMidPacket, PublishPacket
from gmqtt.storage import PersistentStorage

from hub.config import MqttSection
from hub.errors import SpineError
from hub.spine.topics import validate_publish_topic

log = structlog.get_logger("kitt.spine.client")

OnMessage = Callable[[str, bytes, int, dict[str, Any]], Awaitable[int]]
# Called with a PUBREC's mid and a function that sends its PUBREL; True: the hook sends it later.
PubrecHook = Callable[[int, Callable[[], None]], bool]

# Packet ids the window leaves free for SUBSCRIBE/UNSUBSCRIBE (gmqtt draws them from the same pool).
RESERVED_IDS = 3
# gmqtt draws packet ids from 1 up to the broker's Receive Maximum; capped, so that a new process can
# release every id its predecessor may have left at the broker (see ``_finish_previous_session``).
MAX_PACKET_IDS = 4096
SUBACK_TIMEOUT_S = 10.0


class OutboundWindow:
    """How many QoS 1/2 publishes may await PUBACK/PUBCOMP: the broker's Receive Maximum, minus a reserve.

    Counted from gmqtt's in-flight store (one entry per unacknowledged mid, also across reconnects with the
    session kept), so the count is never out of step with the ids gmqtt holds.
    """

    def __init__(self) -> None:
        self.capacity = 16
        self._in_flight = 0
        self._free = asyncio.Event()
        self._free.set()

    def set_capacity(self, receive_maximum: int) -> None:
        self.capacity = max(1, min(receive_maximum, 65535) - RESERVED_IDS)
        self._update()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def free(self) -> int:
        return max(0, self.capacity - self._in_flight)

    def full(self) -> bool:
        return self._in_flight >= self.capacity

    def changed(self, in_flight: int) -> None:
        self._in_flight = in_flight
        self._update()

    def _update(self) -> None:
        if self.full():
            self._free.clear()
        else:
            self._free.set()

    async def wait(self) -> None:
        while self.full():
            self._free.clear()
            await self._free.wait()


class AckTrackingStorage(PersistentStorage):
    """gmqtt's in-flight store, plus a future per mid resolved on PUBACK/PUBCOMP.

    ``publish()`` is synchronous and returns no mid, so the store remembers the last mid pushed; the caller
    reads it right after publishing (no await in between, so no other publish can interleave). A PUBREC
    swaps the stored PUBLISH for its PUBREL under the same mid: the count does not change.
    """

    def __init__(self, window: OutboundWindow) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self._window = window
        self._waiters: dict[int, asyncio.Future[None]] = {}
        # Ids taken by the outbox relay that are not in the store: chosen but not yet published, or
        # acknowledged but their row's sent_at not yet committed. They count against the window like the
        # stored ones, because gmqtt cannot hand them out either.
        self.reserved: set[int] = set()

    def count(self) -> int:
        return len(self._messages) + len(self.reserved)

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid
        self._window.changed(self.count())

    def reserved_changed(self) -> None:
        self._window.changed(self.count())

    def waiter(self, mid: int) -> asyncio.Future[None]:
        fut = self._waiters.get(mid)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiters[mid] = fut
        return fut

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._window.changed(self.count())
        fut = self._waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def clear(self) -> None:
        # The broker did not keep the session: whatever was in flight must be sent again by its owner.
        super().clear()
        self._window.changed(self.count())
        waiters, self._waiters = self._waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(SpineError("session lost before acknowledgement"))


class _CoalescingTransport:
    """Wraps gmqtt's transport so the packets written in one event-loop turn leave in one ``write``.

    gmqtt writes each packet on its own (PUBREC, PUBCOMP, PUBLISH, PUBREL per request); under load one
    syscall per packet costs more than the MQTT work. Every write goes through one buffer, so order is kept.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._buffer: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def _flush(self) -> None:
        data = b"".join(self._buffer)
        self._buffer.clear()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _BackoffConfig(dict[str, Any]):
    """gmqtt's connection config, where each read of ``reconnect_delay`` is the next back-off delay.

    gmqtt reads ``config["reconnect_delay"]`` right before each reconnect attempt (also after a failed one),
    so this turns its fixed delay into exponential back-off with jitter without forking its reconnect loop.
    """

    def __init__(self, base: dict[str, Any], next_delay: Callable[[], float]) -> None:
        super().__init__(base)
        self._next_delay = next_delay

    def __getitem__(self, key: str) -> Any:
        if key == "reconnect_delay":
            return self._next_delay()
        return super().__getitem__(key)


@dataclass(frozen=True)
class HeldPublish:
    """A QoS 2 publish of this client id's previous process whose handshake the new process finishes.

    ``released``: the PUBREL may have left (send it again); else the broker has at most the PUBLISH (send
    it again with the same packet id and DUP: a broker that holds it answers PUBREC and delivers nothing).
    """

    mid: int
    released: bool
    message: Message


class _FixedMid:
    """Stands in for gmqtt's id generator while one PUBLISH is built with a packet id chosen before."""

    def __init__(self, mid: int) -> None:
        self._mid = mid

    def next_id(self) -> int:
        return self._mid


def build_publish(message: Message, mid: int) -> bytes:
    """The PUBLISH packet gmqtt would build for ``message``, but with packet id ``mid``."""
    _mid, packet = PublishPacket.build_package(message, SimpleNamespace(proto_ver=MQTTv50, id_generator=_FixedMid(mid)))
    return bytes(packet)


class MqttConnection:
    """Owns one gmqtt client. ``on_message`` must return a reason code (0 = accepted)."""

    def __init__(
        self,
        *,
        settings: MqttSection,
        client_id: str,
        status_topic: str,
        on_message: OnMessage,
        on_connected: Callable[[bool], Awaitable[None]],
        on_disconnected: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._status_topic = status_topic
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self.window = OutboundWindow()
        self._storage = AckTrackingStorage(self.window)
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._attempt = 0
        self._stopping = False
        self._connect_task: asyncio.Task[None] | None = None
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._connected_before = False
        self._pubrec_hook: PubrecHook | None = None
        self._held: list[HeldPublish] = []
        # Mids of the relay's rows: taken until the relay frees them (sent_at committed, or the id cleared from
        # the row), also after PUBCOMP and after a lost session.
        self._durable: set[int] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def client_id(self) -> str:
        return self._client_id

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _build_client(self) -> Client:
        s = self._settings
        will = Message(self._status_topic, b"offline", qos=1, retain=True)
        client = Client(
            self._client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            will_message=will,
            persistent_storage=self._storage,
            session_expiry_interval=s.session_expiry_s,
            receive_maximum=s.receive_maximum,
        )
        client.set_config({"reconnect_retries": -1})
        # gmqtt reconnects by itself after a drop; each attempt reads its delay from here (back-off + jitter).
        client._connection_state.config = _BackoffConfig(client._connection_state.config, self._backoff)
        if s.username:
            client.set_auth_credentials(s.username, s.password)
        client.on_message = self._handle_message
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_suback
        self._wrap_handler(client)
        return client

    def _wrap_handler(self, client: Client) -> None:
        """Route PUBREC and PUBCOMP of the relay's mids through us (gmqtt looks handlers up by name per instance).

        PUBREC: the relay persists ``released`` before the PUBREL goes out, so a successor knows whether the
        broker may have finished the handshake. PUBCOMP: the id stays taken until the row's ``sent_at`` is
        committed, so no other row is published under it while the database still says "in flight".
        """
        handler = client._package_handler
        on_pubrec = handler._handle_pubrec_packet
        on_pubcomp = handler._handle_pubcomp_packet

        def pubrec(cmd: int, packet: bytes) -> None:
            (mid,) = struct.unpack("!H", packet[:2])
            reason = packet[2] if len(packet) > 2 else 0
            hook = self._pubrec_hook
            if reason < 0x80 and hook is not None and mid in self._durable:
                connection = client._connection

                def finish() -> None:
                    # After a reconnect gmqtt replays the stored PUBLISH and the broker answers PUBREC again;
                    # that one gets its own PUBREL. A PUBREL on a dead connection would be lost anyway.
                    if client._connection is connection and connection is not None and not connection.is_closing():
                        on_pubrec(cmd, packet)

                if hook(mid, finish):
                    return
            on_pubrec(cmd, packet)
            if reason >= 0x80:
                hold(mid)  # refused: gmqtt ended the flow and freed the id; the row is recorded like a PUBCOMP

        def pubcomp(cmd: int, packet: bytes) -> None:
            on_pubcomp(cmd, packet)
            (mid,) = struct.unpack("!H", packet[:2])
            hold(mid)

        def hold(mid: int) -> None:
            if mid in self._durable:
                handler.id_generator._used_ids.add(mid)
                self._storage.reserved.add(mid)
                self._storage.reserved_changed()

        handler._handle_pubrec_packet = pubrec
        handler._handle_pubcomp_packet = pubcomp
        handler._handler_cache.clear()

    def set_pubrec_hook(self, hook: PubrecHook | None) -> None:
        self._pubrec_hook = hook

    def resume(self, held: list[HeldPublish]) -> dict[int, asyncio.Future[None]]:
        """Before the first connect: handshakes of the previous process to finish; futures resolve on PUBCOMP.

        If the broker did not keep the session, the futures fail (gmqtt clears the store) and the rows are
        published afresh.
        """
        self._held = list(held)
        futures: dict[int, asyncio.Future[None]] = {}
        for item in held:
            self._durable.add(item.mid)
            futures[item.mid] = self._storage.waiter(item.mid)
        return futures

    def allocate_mids(self, count: int) -> list[int]:
        """Take up to ``count`` packet ids from gmqtt's pool for the relay (fewer when the pool runs out)."""
        client = self._client
        if client is None or not self.connected:
            return []
        ids = client._package_handler.id_generator
        mids: list[int] = []
        for _ in range(count):
            try:
                mids.append(ids.next_id())
            except OverflowError:
                break
        self._durable.update(mids)
        self._storage.reserved.update(mids)
        self._storage.reserved_changed()
        return mids

    def park_mids(self, mids: list[int]) -> None:
        """Ids the relay chose but will not publish now, while a row may still carry them: out of the window,
        still taken until ``free_mids``."""
        self._storage.reserved.difference_update(mids)
        self._storage.reserved_changed()

    def free_mids(self, mids: list[int]) -> None:
        """The relay is done with these ids (row marked sent, or never published): gmqtt may reuse them."""
        client = self._client
        for mid in mids:
            self._durable.discard(mid)
            self._storage.reserved.discard(mid)
            if client is not None and mid not in self._storage._messages:
                client._package_handler.id_generator.free_id(mid)
        self._storage.reserved_changed()

    def publish_with_mid(self, mid: int, message: Message) -> asyncio.Future[None]:
        """Publish a QoS 2 message under an id from ``allocate_mids``; the future resolves on PUBCOMP.

        Stored like ``Client.publish`` stores, so gmqtt resends it on a reconnect with the session kept, and
        the store is cleared (the future fails) when the broker lost the session.
        """
        client = self._client
        if client is None:
            raise SpineError("not connected")
        packet = build_publish(message, mid)
        fut = self._storage.waiter(mid)
        self._storage.reserved.discard(mid)
        self._storage.push_message(mid, packet)
        if self.connected:
            client._connection.send_package(packet)
        # else: not reconnected yet; gmqtt replays the store right after the CONNACK
        return fut

    def _ssl(self) -> ssl_module.SSLContext | bool:
        if not self._settings.tls:
            return False
        ctx = ssl_module.create_default_context(cafile=self._settings.tls_ca_file or None)
        if self._settings.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl_module.CERT_NONE
        return ctx

    def _backoff(self) -> float:
        """Exponential with jitter, capped: about 0.5, 1, 2, 4 … seconds, each drawn from [ceiling/2, ceiling]."""
        self._attempt += 1
        ceiling = min(self._settings.reconnect_max_s, 0.5 * 2 ** min(self._attempt - 1, 10))
        delay = random.uniform(ceiling / 2, ceiling)
        if self._attempt > 1:
            log.info("MQTT reconnect back-off", attempt=self._attempt, delay_s=round(delay, 2))
        return delay

    async def start(self) -> None:
        """Begin connecting in the background; never raises because the broker is away."""
        self._stopping = False
        self._connect_task = asyncio.create_task(self._connect_loop(), name="kitt[mqtt].connect")

    async def _connect_loop(self) -> None:
        s = self._settings
        while not self._stopping:
            self._client = self._build_client()
            try:
                await self._client.connect(s.host, s.port, ssl=self._ssl(), keepalive=s.keepalive_s,
                                           version=MQTTv50)
                return
            except (TimeoutError, OSError) as exc:
                delay = self._backoff()
                log.warning("MQTT broker not reachable; retrying", broker=s.redacted_url(),
                            error=str(exc) or type(exc).__name__, retry_in_s=round(delay, 2))
            except Exception as exc:  # gmqtt raises its own MQTTConnectError for refusals
                delay = self._backoff()
                log.error("MQTT connection refused; retrying", broker=s.redacted_url(), error=str(exc),
                          retry_in_s=round(delay, 2))
            # A refused attempt may have left gmqtt's own retry scheduled: stop it before building a new client.
            self._client.stop_reconnect()
            await asyncio.sleep(delay)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[None]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT connect callback failed", error=repr(task.exception()))

    def _handle_connect(self, client: Client, session_present: int, rc: int, properties: dict[str, Any]) -> None:
        self._attempt = 0
        connection = client._connection
        if connection is not None and not isinstance(connection._transport, _CoalescingTransport):
            # Before anything else goes out on this connection (gmqtt replays in-flight packets after this).
            wrapped = _CoalescingTransport(connection._transport)
            connection._transport = wrapped
            connection._protocol._transport = wrapped
        # The broker's CONNACK value (gmqtt's ``properties`` merges our CONNECT values over it).
        recv_max = client._package_handler._connack_properties.get("receive_maximum") or [65535]
        ids = client._package_handler.id_generator
        ids._max = min(ids._max, MAX_PACKET_IDS)
        self.window.set_capacity(min(int(recv_max[0]), ids._max))
        if not session_present:
            # The broker has no handshake of ours. The relay's ids stay taken: those chosen but not yet
            # published, and those whose publish just failed, until the relay cleared them from their rows
            # (``free_mids``); a row must never share its id with another unsent row (docs/spine.md).
            ids._used_ids &= self._storage.reserved | self._durable
        elif not self._connected_before:
            self._finish_previous_session(client, ids._max)
        self._held = []
        self._connected_before = True
        self.window.changed(self._storage.count())
        self._connected.set()
        log.info("MQTT connected", broker=self._settings.redacted_url(), session_present=bool(session_present),
                 client_id=self._client_id, window=self.window.capacity)
        # The online status is QoS 0: it must never take a window slot the relay is waiting for, and the
        # retained copy is replaced on the next connect anyway.
        client.publish(self._status_topic, b"online", qos=0, retain=True)
        self._spawn(self._on_connected(bool(session_present)), "kitt[mqtt].on_connected")

    def _finish_previous_session(self, client: Client, id_limit: int) -> None:
        """First connect of this process to a kept session: finish the QoS 2 handshakes of the process before.

        The broker keeps, per session, the QoS 2 messages it received and acknowledged with PUBREC until the
        PUBREL comes, and Mosquitto delivers them only then. A process that died in between never sends it.
        - Outbox rows carry their packet id and whether their PUBREL may have left (``HeldPublish``): a
          released one gets its PUBREL again (the broker delivers if it still holds it, else answers PUBCOMP),
          an unreleased one its PUBLISH again with the same id and DUP (a broker holding it answers PUBREC
          without delivering; one that never got it takes it as new). Either way: one delivery.
        - Every other id gets a PUBREL: those handshakes are direct, non-durable publishes. Leaving them held
          would be worse than delivering them: a new PUBLISH reusing such an id would be taken by the broker
          as a resend of the *old* message, and the new one lost.
        Everything goes into gmqtt's store with its id taken, and gmqtt's replay (which runs right after this
        callback) sends it: no id is reused before its PUBCOMP, and a drop before then replays it again.
        """
        ids = client._package_handler.id_generator
        held = {item.mid: item for item in self._held}
        for mid in sorted(set(range(1, id_limit)) | set(held)):
            item = held.get(mid)
            if item is not None and not item.released:
                message = item.message
                message.dup = True
                packet = build_publish(message, mid)
            else:
                packet = CommandWithMidPacket.build_package(MQTTCommands.PUBREL | 2, mid, False, proto_ver=MQTTv50)
            ids._used_ids.add(mid)
            self._storage.push_message(mid, packet)
        log.info("finishing the QoS 2 handshakes of the previous process", outbox_rows=len(held),
                 other_ids=id_limit - 1 - len(held.keys() & set(range(1, id_limit))))

    def _handle_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(SpineError("disconnected before SUBACK"))
        self._subacks.clear()
        if was and not self._stopping:
            log.warning("MQTT disconnected; reconnecting with back-off")
        self._on_disconnected()

    def _handle_suback(self, client: Client, mid: int, granted: Any, properties: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(list(granted))

    async def _handle_message(self, client: Client, topic: str, payload: bytes, qos: int,
                              properties: dict[str, Any]) -> int:
        return await self._on_message(topic, payload, qos, properties)

    async def subscribe(self, filters: list[tuple[str, int]]) -> None:
        """One SUBSCRIBE for all filters; waits for the SUBACK and raises if any filter was refused."""
        if not filters:
            return
        client = self._client
        if client is None or not self.connected:
            raise SpineError("not connected")
        topics = {f for f, _ in filters}
        # gmqtt keeps every Subscription it ever sent; keep only the live ones (bounded across reconnects).
        client.subscriptions = [sub for sub in client.subscriptions if sub.topic not in topics]
        # Retain As Published: a message queued for us while we were away keeps its retain flag, so a
        # retained command is recognised as one (routes with accept_retained=False never run it).
        subs = [Subscription(f, qos=q, no_local=not f.startswith("$share/"), retain_as_published=True)
                for f, q in filters]
        deadline = asyncio.get_running_loop().time() + SUBACK_TIMEOUT_S
        while True:
            try:
                mid = client.subscribe(subs)
                break
            except OverflowError:
                # Every packet id is taken: right after a restart the previous process's handshakes hold them
                # all until their PUBCOMPs come back (milliseconds). gmqtt added the subscriptions before it
                # failed to get an id: drop them again before the retry.
                client.subscriptions = [sub for sub in client.subscriptions if sub.topic not in topics]
                if asyncio.get_running_loop().time() > deadline or not self.connected:
                    raise SpineError("no packet id free for SUBSCRIBE") from None
                await asyncio.sleep(0.01)
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = fut
        granted = await asyncio.wait_for(fut, SUBACK_TIMEOUT_S)
        refused = [f for (f, _), code in zip(filters, granted, strict=False) if code >= 0x80]
        if refused:
            raise SpineError(f"broker refused subscription(s): {', '.join(refused)}")

    async def unsubscribe(self, filters: list[str]) -> None:
        if self._client is not None and self.connected and filters:
            self._client.unsubscribe(filters)

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                       **properties: Any) -> asyncio.Future[None] | None:
        """Publish now; for QoS > 0 return a future resolved on PUBACK/PUBCOMP.

        Raises ``SpineError`` when not connected or when the outbound window is full (use ``send()`` to wait).
        """
        validate_publish_topic(topic)
        client = self._client
        if client is None or not self.connected:
            raise SpineError("not connected")
        if qos == 0:
            client.publish(Message(topic, payload, qos=0, retain=retain, **properties))
            return None
        if self.window.full():
            raise SpineError("outbound window full")
        self._storage.last_mid = None
        try:
            client.publish(Message(topic, payload, qos=qos, retain=retain, **properties))
        except OverflowError as exc:  # gmqtt's id pool ran out: the same condition as a full window
            raise SpineError("outbound window full") from exc
        mid = self._storage.last_mid
        if mid is None:
            raise SpineError("publish was not stored")
        return self._storage.waiter(mid)

    async def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                   **properties: Any) -> asyncio.Future[None] | None:
        """Publish once the window has room (back-pressure); returns the acknowledgement future."""
        while True:
            if not self.connected:
                raise SpineError("not connected")
            if qos == 0 or not self.window.full():
                return self.publish_nowait(topic, payload, qos=qos, retain=retain, **properties)
            await self.window.wait()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float = 10.0, **properties: Any) -> None:
        fut = await self.send(topic, payload, qos=qos, retain=retain, **properties)
        if fut is not None:
            await asyncio.wait_for(fut, timeout)

    async def stop(self) -> None:
        self._stopping = True
        if self._connect_task is not None:
            self._connect_task.cancel()
            await asyncio.gather(self._connect_task, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            client.stop_reconnect()
        if client is not None and self._connected.is_set():
            # A clean goodbye: mark offline ourselves (the LWT is not sent on a normal DISCONNECT).
            try:
                client.publish(self._status_topic, b"offline", qos=0, retain=True)
            except OverflowError as exc:
                log.warning("could not publish offline status", error=str(exc))
            await client.disconnect()
        elif client is not None:
            await client.disconnect()
        self._connected.clear()
        for task in list(self._callback_tasks):
            task.cancel()
        await asyncio.gather(*self._callback_tasks, return_exceptions=True)

    async def bounce(self) -> None:
        """Drop the connection so gmqtt reconnects with the session: the broker resends un-acked messages."""
        client = self._client
        if client is not None and self.connected:
            await client.reconnect(delay=False)
